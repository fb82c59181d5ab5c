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
        devices.push(GpuInfo {
            index: dev.index().unwrap_or(i),
            uuid: dev.uuid()?,
            name: dev.name()?,
            memory_total_mib: dev.memory_info()?.total / (1 << 20),
            pci_bus_id: dev.pci_info().ok().map(|p| p.bus_id),
            mig,
        });
    }
    Ok(GpuReport::Available {
        driver_version,
        devices,
    })
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
                })
                .collect(),
        })
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
    fn report_serializes_with_a_status_tag() {
        let v = serde_json::to_value(FakeGpus::count(1).0).unwrap();
        assert_eq!(v["status"], "available");
        assert_eq!(v["devices"][0]["uuid"], "GPU-fake-0");
        let v = serde_json::to_value(FakeGpus::none().0).unwrap();
        assert_eq!(v["status"], "unavailable");
    }
}
