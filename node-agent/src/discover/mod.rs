//! What the node has: CPUs (hwloc), memory (sysinfo) and GPUs (NVML).
//!
//! Each source sits behind a small trait with a real implementation and a fake
//! ([`FakeTopology`], [`FakeMemory`], [`FakeGpus`]), so the ledger and the server are tested
//! without touching the machine. [`discover`] combines them into [`Hardware`], which
//! `harvestd discover` prints and the agent computes idle slots from.
//!
//! - [`topology`]: hwloc through `hwlocality`.
//! - [`gpu`]: NVML through `nvml-wrapper`, loaded at run time (no link-time dependency).

pub mod gpu;
mod nvml_ids;
pub mod topology;

use std::collections::BTreeSet;

use harvest_core::CpuSet;
use serde::Serialize;

pub use gpu::{
    DeviceFileGpus, FakeGpus, GpuInfo, GpuReport, GpuSource, GpuUnit, MigInstance, MigRef, NvmlGpus,
};
pub use topology::{HwlocTopology, TopologySource};

/// A hardware probe that failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("hwloc could not build the topology: {0}")]
    Hwloc(String),
    #[error("hwloc reported {what} with a CPU id {id} above the supported maximum")]
    CpuId { what: &'static str, id: usize },
    #[error("the topology has no usable CPUs (the allowed cpuset is empty)")]
    NoCpus,
    #[error("the memory probe failed: {0}")]
    Memory(String),
    #[error("the memory probe reported 0 bytes of memory")]
    NoMemory,
}

/// The node's CPU topology, as OS CPU ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// The PUs (hardware threads) this process may use: hwloc's allowed cpuset.
    pub cpus: CpuSet,
    /// Each core's PUs, ordered by the core's lowest PU.
    pub cores: Vec<CpuSet>,
    /// Each socket's (package's) PUs.
    pub sockets: Vec<CpuSet>,
    /// Each NUMA node's PUs.
    pub numa_nodes: Vec<NumaNode>,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumaNode {
    pub os_index: u32,
    pub cpus: CpuSet,
}

/// Everything discovered about the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hardware {
    #[serde(flatten)]
    pub topology: Topology,
    pub memory_mib: u64,
    pub gpus: GpuReport,
}

impl Hardware {
    /// The ids of what can be lent: whole GPUs and MIG instances ([`GpuUnit`]); empty when
    /// NVML is unavailable.
    pub fn gpu_indices(&self) -> Vec<u32> {
        self.gpus.units().iter().map(|u| u.id).collect()
    }

    /// The PUs of the `n` lowest cores (by lowest PU), for the OS reserve. Fewer cores than `n`
    /// gives all of them.
    pub fn lowest_cores(&self, n: u32) -> CpuSet {
        let mut cores = self.topology.cores.clone();
        cores.sort_by_key(|c| c.iter().next());
        cores
            .iter()
            .take(n as usize)
            .fold(CpuSet::new(), |acc, c| acc.union(c))
            .intersection(&self.topology.cpus)
    }
}

/// The lendable units a step holds when Slurm's devices cgroup gave it the GPUs at these
/// indices (`/dev/nvidia<N>`): every unit of each, since a step with a MIG GPU's node may use
/// any of its instances whose access files it also has, which that list does not say.
pub fn units_of_gpus(units: &[GpuUnit], gpus: impl IntoIterator<Item = u32>) -> BTreeSet<u32> {
    gpus.into_iter()
        .flat_map(|g| {
            let of: Vec<u32> = units.iter().filter(|u| u.gpu == g).map(|u| u.id).collect();
            // A GPU the node does not know stays as it was reported (it is ignored later).
            if of.is_empty() { vec![g] } else { of }
        })
        .collect()
}

/// Total memory.
pub trait MemorySource {
    fn total_mib(&self) -> Result<u64, DiscoverError>;
}

/// Memory from `sysinfo` (the kernel's MemTotal).
#[derive(Debug, Default)]
pub struct SysinfoMemory;

impl MemorySource for SysinfoMemory {
    fn total_mib(&self) -> Result<u64, DiscoverError> {
        let mut sys = sysinfo::System::new().map_err(|e| DiscoverError::Memory(e.to_string()))?;
        sys.refresh_memory();
        match sys.total_memory() / (1 << 20) {
            0 => Err(DiscoverError::NoMemory),
            mib => Ok(mib),
        }
    }
}

/// A fixed memory size, for tests.
#[derive(Debug, Clone, Copy)]
pub struct FakeMemory(pub u64);

impl MemorySource for FakeMemory {
    fn total_mib(&self) -> Result<u64, DiscoverError> {
        Ok(self.0)
    }
}

/// A fixed topology, for tests.
#[derive(Debug, Clone)]
pub struct FakeTopology(pub Topology);

impl FakeTopology {
    /// `sockets` x `cores_per_socket` x `threads` PUs numbered like Linux does without SMT
    /// interleaving: core c's threads are `c`, `c + ncores`, ...
    pub fn uniform(sockets: u32, cores_per_socket: u32, threads: u32) -> Self {
        let ncores = sockets * cores_per_socket;
        let core = |c: u32| -> CpuSet { (0..threads).map(|t| c + t * ncores).collect() };
        let cores: Vec<CpuSet> = (0..ncores).map(core).collect();
        let sockets: Vec<CpuSet> = (0..sockets)
            .map(|s| {
                (s * cores_per_socket..(s + 1) * cores_per_socket)
                    .fold(CpuSet::new(), |acc, c| acc.union(&core(c)))
            })
            .collect();
        let cpus = sockets.iter().fold(CpuSet::new(), |acc, s| acc.union(s));
        let numa_nodes = sockets
            .iter()
            .zip(0..)
            .map(|(s, i)| NumaNode {
                os_index: i,
                cpus: s.clone(),
            })
            .collect();
        Self(Topology {
            cpus,
            cores,
            sockets,
            numa_nodes,
        })
    }
}

impl TopologySource for FakeTopology {
    fn topology(&self) -> Result<Topology, DiscoverError> {
        Ok(self.0.clone())
    }
}

/// Probes everything once.
pub fn discover(
    topology: &dyn TopologySource,
    memory: &dyn MemorySource,
    gpus: &dyn GpuSource,
) -> Result<Hardware, DiscoverError> {
    let topology = topology.topology()?;
    if topology.cpus.is_empty() {
        return Err(DiscoverError::NoCpus);
    }
    Ok(Hardware {
        topology,
        memory_mib: memory.total_mib()?,
        gpus: gpus.gpus(),
    })
}

/// The real probes, with GPUs from NVML.
pub fn discover_real() -> Result<Hardware, DiscoverError> {
    discover(&HwlocTopology, &SysinfoMemory, &NvmlGpus)
}

/// The real probes, with GPUs from `gpus`.
pub fn discover_with(gpus: &dyn GpuSource) -> Result<Hardware, DiscoverError> {
    discover(&HwlocTopology, &SysinfoMemory, gpus)
}

/// A few lines for people: what `harvestd discover` prints without `--json`.
pub fn summary(hw: &Hardware) -> String {
    let t = &hw.topology;
    let mut out = format!(
        "cpus        {} ({} PUs, {} cores, {} sockets, {} NUMA nodes)\nmemory      {} MiB\n",
        t.cpus,
        t.cpus.len(),
        t.cores.len(),
        t.sockets.len(),
        t.numa_nodes.len(),
        hw.memory_mib
    );
    match &hw.gpus {
        GpuReport::Unavailable { reason } => {
            out.push_str(&format!("gpus        none ({reason})\n"))
        }
        GpuReport::Available {
            driver_version,
            devices,
        } => {
            out.push_str(&format!(
                "gpus        {} (driver {})\n",
                devices.len(),
                driver_version.as_deref().unwrap_or("unknown")
            ));
            for g in devices {
                let mig = match g.mig {
                    Some(m) if m.enabled => "MIG on",
                    Some(_) => "MIG off",
                    None => "no MIG",
                };
                out.push_str(&format!(
                    "  gpu {}    {} {} MiB {} {}\n",
                    g.index, g.name, g.memory_total_mib, g.uuid, mig
                ));
                for m in &g.mig_instances {
                    let id = |v: Option<u32>| v.map_or("?".to_owned(), |v| v.to_string());
                    out.push_str(&format!(
                        "    mig gi {} ci {} {} MiB {}\n",
                        id(m.gpu_instance_id),
                        id(m.compute_instance_id),
                        m.memory_total_mib,
                        m.uuid
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_fake_numbers_smt_siblings_like_linux() {
        let t = FakeTopology::uniform(2, 2, 2).0;
        assert_eq!(t.cpus, CpuSet::first_n(8));
        assert_eq!(t.cores[0].to_list(), "0,4");
        assert_eq!(t.sockets[1].to_list(), "2-3,6-7");
        assert_eq!(t.numa_nodes.len(), 2);
    }

    #[test]
    fn lowest_cores_take_whole_cores() {
        let hw = discover(
            &FakeTopology::uniform(1, 4, 2),
            &FakeMemory(1024),
            &FakeGpus::none(),
        )
        .unwrap();
        assert_eq!(hw.lowest_cores(0), CpuSet::new());
        assert_eq!(hw.lowest_cores(2).to_list(), "0-1,4-5");
        assert_eq!(hw.lowest_cores(99), hw.topology.cpus);
    }

    #[test]
    fn real_memory_and_topology_probes_work_here() {
        let mem = SysinfoMemory.total_mib().unwrap();
        assert!(mem > 0);
        let topo = HwlocTopology.topology().unwrap();
        assert!(!topo.cpus.is_empty());
        let in_cores = topo.cores.iter().fold(CpuSet::new(), |a, c| a.union(c));
        assert!(topo.cpus.is_subset(&in_cores), "{topo:?}");
        assert!(!topo.sockets.is_empty());
        // Every CPU this process may run on is in hwloc's allowed set.
        let usable = std::thread::available_parallelism().unwrap().get();
        assert!(
            topo.cpus.len() >= usable,
            "{topo:?} vs {usable} usable CPUs"
        );
    }

    #[test]
    fn summary_names_counts_and_each_gpu() {
        let hw = discover(
            &FakeTopology::uniform(2, 2, 1),
            &FakeMemory(4096),
            &FakeGpus::count(2),
        )
        .unwrap();
        let s = summary(&hw);
        assert!(
            s.contains("0-3 (4 PUs, 4 cores, 2 sockets, 2 NUMA nodes)"),
            "{s}"
        );
        assert!(s.contains("4096 MiB"), "{s}");
        assert!(s.contains("gpu 1") && s.contains("GPU-fake-1"), "{s}");
        let mig = discover(
            &FakeTopology::uniform(1, 1, 1),
            &FakeMemory(1),
            &FakeGpus::with_mig(0, 2),
        )
        .unwrap();
        let s = summary(&mig);
        assert!(s.contains("MIG on"), "{s}");
        assert!(
            s.contains("mig gi 1 ci 0 10240 MiB MIG-fake-0-0")
                && s.contains("mig gi 2 ci 0 10240 MiB MIG-fake-0-1"),
            "{s}"
        );
        assert_eq!(mig.gpu_indices(), [0, 1], "one unit per instance");
        let none = discover(
            &FakeTopology::uniform(1, 1, 1),
            &FakeMemory(1),
            &FakeGpus::none(),
        )
        .unwrap();
        assert!(summary(&none).contains("none (fake: no GPUs)"));
    }

    #[test]
    fn empty_topology_is_an_error() {
        let err = discover(
            &FakeTopology(Topology::default()),
            &FakeMemory(1),
            &FakeGpus::none(),
        )
        .unwrap_err();
        assert!(matches!(err, DiscoverError::NoCpus));
    }
}
