//! GPUs from NVML, through `nvml-wrapper`.
//!
//! `nvml-wrapper` loads `libnvidia-ml.so.1` at run time, so `harvestd` links and runs on nodes
//! without NVIDIA's driver: there NVML fails to initialise and the node simply has no GPUs to
//! lend. That is logged once per process, never a panic and never an error that stops the agent.

use std::sync::Once;

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use serde::Serialize;

/// One GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    /// NVML's index (the order `CUDA_VISIBLE_DEVICES` and Slurm's GRES use by default).
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_mib: u64,
    /// PCI bus id (`00000000:17:00.0`), when NVML reports it.
    pub pci_bus_id: Option<String>,
    /// MIG mode, when the GPU supports MIG.
    pub mig: Option<MigMode>,
    /// The GPU's MIG instances (MIG mode on): each is lent on its own, the GPU never whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig_instances: Vec<MigInstance>,
}

/// One MIG instance (a MIG device in NVML's words: a compute instance inside a GPU instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigInstance {
    /// `MIG-<uuid>`: what `CUDA_VISIBLE_DEVICES` names it by.
    pub uuid: String,
    pub memory_total_mib: u64,
    /// The GPU instance id and compute instance id: they name the instance's access files in
    /// `/proc/driver/nvidia-caps/mig-minors` (`gpu<N>/gi<G>/access`, `.../ci<C>/access`).
    /// `None` where NVML did not say; such an instance cannot be confined by device nodes.
    pub gpu_instance_id: Option<u32>,
    pub compute_instance_id: Option<u32>,
}

/// What a lease is lent: a whole GPU, or one MIG instance of a GPU in MIG mode.
///
/// Units carry the ids the ledger, the plan, placement and metrics count in. On a node without
/// MIG instances a unit's id is its GPU's index (so it is the number Slurm's GRES and the
/// devices cgroup use); on a node with MIG instances units are numbered in order, each GPU in
/// index order and each MIG GPU's instances in NVML's order, which is how Slurm's `AutoDetect=nvml`
/// numbers MIG devices as GRES.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuUnit {
    pub id: u32,
    /// The physical GPU's index (`/dev/nvidia<gpu>`).
    pub gpu: u32,
    /// The GPU's UUID, or the MIG instance's `MIG-...` UUID; empty when unknown (device files).
    pub uuid: String,
    pub memory_total_mib: u64,
    /// The MIG instance, for a unit that is one.
    pub mig: Option<MigRef>,
}

/// A MIG instance's ids inside its GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MigRef {
    pub gpu_instance_id: Option<u32>,
    pub compute_instance_id: Option<u32>,
}

/// A GPU's MIG mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MigMode {
    pub enabled: bool,
    /// The mode after the next GPU reset.
    pub pending_enabled: bool,
}

/// What the GPU probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GpuReport {
    Available {
        driver_version: Option<String>,
        devices: Vec<GpuInfo>,
    },
    /// No NVML (no driver, no GPU) or NVML failed: the node lends no GPUs.
    Unavailable { reason: String },
}

impl GpuReport {
    pub fn devices(&self) -> &[GpuInfo] {
        match self {
            Self::Available { devices, .. } => devices,
            Self::Unavailable { .. } => &[],
        }
    }

    /// What can be lent: each GPU without MIG instances whole, each MIG instance on its own
    /// ([`GpuUnit`] says how they are numbered). A GPU in MIG mode without instances lends
    /// nothing: a CUDA process cannot use it.
    pub fn units(&self) -> Vec<GpuUnit> {
        let devices = self.devices();
        let by_position = devices.iter().any(|d| !d.mig_instances.is_empty());
        let mut units = Vec::new();
        for d in devices {
            let in_mig_mode = d.mig.is_some_and(|m| m.enabled);
            if d.mig_instances.is_empty() && !in_mig_mode {
                units.push(GpuUnit {
                    id: if by_position {
                        units.len() as u32
                    } else {
                        d.index
                    },
                    gpu: d.index,
                    uuid: d.uuid.clone(),
                    memory_total_mib: d.memory_total_mib,
                    mig: None,
                });
            }
            for m in &d.mig_instances {
                units.push(GpuUnit {
                    id: units.len() as u32,
                    gpu: d.index,
                    uuid: m.uuid.clone(),
                    memory_total_mib: m.memory_total_mib,
                    mig: Some(MigRef {
                        gpu_instance_id: m.gpu_instance_id,
                        compute_instance_id: m.compute_instance_id,
                    }),
                });
            }
        }
        units
    }
}

/// Where GPU information comes from. Never fails: a broken probe reports
/// [`GpuReport::Unavailable`].
pub trait GpuSource {
    fn gpus(&self) -> GpuReport;
}

/// The real GPUs, from NVML.
#[derive(Debug, Default, Clone, Copy)]
pub struct NvmlGpus;

static UNAVAILABLE_LOGGED: Once = Once::new();

impl GpuSource for NvmlGpus {
    fn gpus(&self) -> GpuReport {
        match probe() {
            Ok(report) => report,
            Err(e) => {
                let reason = format!("NVML unavailable: {e}");
                UNAVAILABLE_LOGGED.call_once(|| {
                    tracing::info!(%reason, "no GPUs will be lent on this node");
                });
                GpuReport::Unavailable { reason }
            }
        }
    }
}

fn probe() -> Result<GpuReport, NvmlError> {
    let nvml = Nvml::init()?;
    let driver_version = nvml.sys_driver_version().ok();
    let count = nvml.device_count()?;
    let mut devices = Vec::new();
    for i in 0..count {
        let dev = nvml.device_by_index(i)?;
        let mig = match dev.mig_mode() {
            Ok(m) => Some(MigMode {
                enabled: m.current == 1,
                pending_enabled: m.pending == 1,
            }),
            // GPUs without MIG answer NotSupported; anything else is worth a word.
            Err(NvmlError::NotSupported) => None,
            Err(e) => {
                tracing::warn!(index = i, error = %e, "could not read the GPU's MIG mode");
                None
            }
        };
        let mig_instances = if mig.is_some_and(|m| m.enabled) {
            mig_instances(&nvml, &dev, i)
        } else {
            Vec::new()
        };
        devices.push(GpuInfo {
            index: dev.index().unwrap_or(i),
            uuid: dev.uuid()?,
            name: dev.name()?,
            memory_total_mib: dev.memory_info()?.total / (1 << 20),
            pci_bus_id: dev.pci_info().ok().map(|p| p.bus_id),
            mig,
            mig_instances,
        });
    }
    Ok(GpuReport::Available {
        driver_version,
        devices,
    })
}

/// The MIG instances of GPU `index` (in MIG mode). Slots NVML leaves empty answer `NotFound`;
/// an instance that cannot be read is left out (logged): it is not lent.
fn mig_instances(nvml: &Nvml, dev: &nvml_wrapper::Device<'_>, index: u32) -> Vec<MigInstance> {
    let slots = match dev.mig_device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(index, error = %e, "could not count the GPU's MIG devices; none lent");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for slot in 0..slots {
        let mig = match dev.mig_device_by_index(slot) {
            Ok(m) => m,
            Err(NvmlError::NotFound) => continue,
            Err(e) => {
                tracing::warn!(index, slot, error = %e, "could not open a MIG device; not lent");
                continue;
            }
        };
        let read = || -> Result<MigInstance, NvmlError> {
            let (gi, ci) = super::nvml_ids::instance_ids(nvml, &mig);
            Ok(MigInstance {
                uuid: mig.uuid()?,
                memory_total_mib: mig.memory_info()?.total / (1 << 20),
                gpu_instance_id: gi,
                compute_instance_id: ci,
            })
        };
        match read() {
            Ok(m) => out.push(m),
            Err(e) => {
                tracing::warn!(index, slot, error = %e, "could not read a MIG device; not lent")
            }
        }
    }
    out
}

/// GPUs as the `nvidia<N>` character devices under a directory (`gpu_source = "device-files"`):
/// for nodes whose GPUs NVML does not see and for the local cluster's fake GPUs (device nodes
/// made with mknod that no driver answers). Each has index N, no UUID (so executors are given
/// `CUDA_VISIBLE_DEVICES` by index) and no memory figure.
#[derive(Debug, Clone)]
pub struct DeviceFileGpus {
    pub dev_root: std::path::PathBuf,
}

/// NVIDIA's character device major number.
pub const NVIDIA_MAJOR: u64 = 195;
/// The highest GPU minor number; above are nvidiactl (255) and the like.
pub const MAX_GPU_MINOR: u32 = 253;

impl GpuSource for DeviceFileGpus {
    fn gpus(&self) -> GpuReport {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let entries = match std::fs::read_dir(&self.dev_root) {
            Ok(e) => e,
            Err(e) => {
                return GpuReport::Unavailable {
                    reason: format!("cannot read {}: {e}", self.dev_root.display()),
                };
            }
        };
        let mut devices: Vec<GpuInfo> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let digits = name.strip_prefix("nvidia")?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let index: u32 = digits.parse().ok().filter(|n| *n <= MAX_GPU_MINOR)?;
                // Not followed: a symlink is not a device node of this node's.
                let meta = std::fs::symlink_metadata(entry.path()).ok()?;
                let rdev = meta.rdev();
                let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
                (meta.file_type().is_char_device()
                    && u64::from(major) == NVIDIA_MAJOR
                    && minor == index)
                    .then(|| GpuInfo {
                        index,
                        uuid: String::new(),
                        name: format!("device file {}", entry.path().display()),
                        memory_total_mib: 0,
                        pci_bus_id: None,
                        mig: None,
                        mig_instances: Vec::new(),
                    })
            })
            .collect();
        devices.sort_by_key(|d| d.index);
        if devices.is_empty() {
            return GpuReport::Unavailable {
                reason: format!(
                    "no nvidia<N> character devices (major {NVIDIA_MAJOR}) in {}",
                    self.dev_root.display()
                ),
            };
        }
        GpuReport::Available {
            driver_version: None,
            devices,
        }
    }
}

/// Fixed GPUs, for tests.
#[derive(Debug, Clone)]
pub struct FakeGpus(pub GpuReport);

impl FakeGpus {
    pub fn none() -> Self {
        Self(GpuReport::Unavailable {
            reason: "fake: no GPUs".into(),
        })
    }

    /// `n` identical GPUs with indices `0..n`.
    pub fn count(n: u32) -> Self {
        Self(GpuReport::Available {
            driver_version: Some("fake".into()),
            devices: (0..n)
                .map(|index| GpuInfo {
                    index,
                    uuid: format!("GPU-fake-{index}"),
                    name: "Fake GPU".into(),
                    memory_total_mib: 80 * 1024,
                    pci_bus_id: None,
                    mig: None,
                    mig_instances: Vec::new(),
                })
                .collect(),
        })
    }

    /// `whole` GPUs without MIG, then one GPU in MIG mode with `instances` instances (GPU
    /// instance ids 1, 2, ..., each with compute instance 0), as NVML reports them.
    pub fn with_mig(whole: u32, instances: u32) -> Self {
        let mut report = Self::count(whole + 1).0;
        if let GpuReport::Available { devices, .. } = &mut report {
            let mig_gpu = devices.last_mut().expect("at least one GPU");
            mig_gpu.mig = Some(MigMode {
                enabled: true,
                pending_enabled: true,
            });
            mig_gpu.mig_instances = (0..instances)
                .map(|i| MigInstance {
                    uuid: format!("MIG-fake-{whole}-{i}"),
                    memory_total_mib: 10 * 1024,
                    gpu_instance_id: Some(i + 1),
                    compute_instance_id: Some(0),
                })
                .collect();
        }
        Self(report)
    }
}

impl GpuSource for FakeGpus {
    fn gpus(&self) -> GpuReport {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without libnvidia-ml (this machine), the real probe reports unavailable, every time.
    /// On a GPU machine it lists each device with a distinct index and uuid.
    #[test]
    fn real_probe_never_panics_and_is_consistent() {
        let first = NvmlGpus.gpus();
        let second = NvmlGpus.gpus();
        match (&first, &second) {
            (GpuReport::Unavailable { reason }, GpuReport::Unavailable { .. }) => {
                assert!(reason.starts_with("NVML unavailable"), "{reason}");
            }
            (GpuReport::Available { devices, .. }, GpuReport::Available { devices: d2, .. }) => {
                assert_eq!(devices, d2);
                let mut uuids: Vec<_> = devices.iter().map(|d| &d.uuid).collect();
                uuids.dedup();
                assert_eq!(uuids.len(), devices.len());
                assert!(devices.iter().all(|d| d.memory_total_mib > 0));
            }
            _ => panic!("the probe changed its mind: {first:?} then {second:?}"),
        }
    }

    #[test]
    fn device_files_are_gpus_only_when_they_are_nvidia_character_devices() {
        let dir = tempfile::tempdir().unwrap();
        let none = DeviceFileGpus {
            dev_root: dir.path().to_path_buf(),
        }
        .gpus();
        assert!(matches!(&none, GpuReport::Unavailable { reason } if reason.contains("no nvidia")));
        // Regular files and a symlink named like devices are not GPUs.
        std::fs::write(dir.path().join("nvidia0"), "").unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("nvidia1")).unwrap();
        std::fs::write(dir.path().join("nvidiactl"), "").unwrap();
        let report = DeviceFileGpus {
            dev_root: dir.path().to_path_buf(),
        }
        .gpus();
        assert!(report.devices().is_empty(), "{report:?}");
        // Real character devices need root (mknod); the local cluster's tests cover them.
        if rustix::process::geteuid().is_root() {
            let dir = tempfile::tempdir().unwrap();
            for (name, minor) in [("nvidia2", 2), ("nvidia0", 0), ("nvidia5", 4)] {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    dir.path().join(name),
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::from_raw_mode(0o666),
                    rustix::fs::makedev(195, minor),
                )
                .unwrap();
            }
            let report = DeviceFileGpus {
                dev_root: dir.path().to_path_buf(),
            }
            .gpus();
            let found: Vec<u32> = report.devices().iter().map(|d| d.index).collect();
            // nvidia5 has minor 4: not what its name says, not a GPU of ours.
            assert_eq!(found, [0, 2]);
        }
    }

    #[test]
    fn a_mig_gpu_lends_its_instances_and_never_itself() {
        let units = FakeGpus::with_mig(1, 3).0.units();
        let ids: Vec<(u32, u32, &str)> = units
            .iter()
            .map(|u| (u.id, u.gpu, u.uuid.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                (0, 0, "GPU-fake-0"),
                (1, 1, "MIG-fake-1-0"),
                (2, 1, "MIG-fake-1-1"),
                (3, 1, "MIG-fake-1-2"),
            ]
        );
        assert_eq!(units[0].mig, None);
        assert_eq!(
            units[2].mig,
            Some(MigRef {
                gpu_instance_id: Some(2),
                compute_instance_id: Some(0)
            })
        );
        assert_eq!(units[3].memory_total_mib, 10 * 1024);
        // In MIG mode with no instance made, the GPU has nothing a CUDA process can use.
        assert_eq!(FakeGpus::with_mig(2, 0).0.units().len(), 2);
    }

    #[test]
    fn without_mig_units_are_the_gpus_by_index() {
        let mut report = FakeGpus::count(3).0;
        if let GpuReport::Available { devices, .. } = &mut report {
            devices.remove(1);
        }
        let ids: Vec<(u32, u32)> = report.units().iter().map(|u| (u.id, u.gpu)).collect();
        // Ids follow the indices, gaps included: Slurm and the devices cgroup number them so.
        assert_eq!(ids, [(0, 0), (2, 2)]);
    }

    #[test]
    fn report_serializes_with_a_status_tag() {
        let v = serde_json::to_value(FakeGpus::count(1).0).unwrap();
        assert_eq!(v["status"], "available");
        assert_eq!(v["devices"][0]["uuid"], "GPU-fake-0");
        let v = serde_json::to_value(FakeGpus::none().0).unwrap();
        assert_eq!(v["status"], "unavailable");
    }
}
