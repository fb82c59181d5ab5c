//! CPU topology from hwloc, through the maintained `hwlocality` crate (system libhwloc 2.x).

use harvest_core::CpuSet;
use hwlocality::object::types::ObjectType;

use super::{DiscoverError, NumaNode, Topology};

/// Where the CPU topology comes from.
pub trait TopologySource {
    fn topology(&self) -> Result<Topology, DiscoverError>;
}

/// The real topology, from hwloc.
#[derive(Debug, Default, Clone, Copy)]
pub struct HwlocTopology;

impl TopologySource for HwlocTopology {
    fn topology(&self) -> Result<Topology, DiscoverError> {
        let topo = hwlocality::Topology::new().map_err(|e| DiscoverError::Hwloc(e.to_string()))?;
        let allowed = to_cpuset(&topo.allowed_cpuset(), "the allowed cpuset")?;
        let sets_of = |ty: ObjectType, what: &'static str| -> Result<Vec<CpuSet>, DiscoverError> {
            let mut sets = Vec::new();
            for obj in topo.objects_with_type(ty) {
                if let Some(set) = obj.cpuset() {
                    let set = to_cpuset(&set, what)?.intersection(&allowed);
                    if !set.is_empty() {
                        sets.push(set);
                    }
                }
            }
            sets.sort_by_key(|s| s.iter().next());
            Ok(sets)
        };
        let cores = sets_of(ObjectType::Core, "a core")?;
        let sockets = sets_of(ObjectType::Package, "a package")?;
        let mut numa_nodes = Vec::new();
        for obj in topo.objects_with_type(ObjectType::NUMANode) {
            let cpus = match obj.cpuset() {
                Some(set) => to_cpuset(&set, "a NUMA node")?.intersection(&allowed),
                None => CpuSet::new(),
            };
            let os_index = obj.os_index().unwrap_or(obj.logical_index());
            numa_nodes.push(NumaNode {
                os_index: u32::try_from(os_index).map_err(|_| DiscoverError::CpuId {
                    what: "a NUMA node index",
                    id: os_index,
                })?,
                cpus,
            });
        }
        // Some virtual machines report no Core objects: then each PU is its own core.
        let cores = if cores.is_empty() {
            allowed.iter().map(|c| [c].into_iter().collect()).collect()
        } else {
            cores
        };
        let sockets = if sockets.is_empty() {
            vec![allowed.clone()]
        } else {
            sockets
        };
        Ok(Topology {
            cpus: allowed,
            cores,
            sockets,
            numa_nodes,
        })
    }
}

fn to_cpuset(
    bitmap: &hwlocality::cpu::cpuset::CpuSet,
    what: &'static str,
) -> Result<CpuSet, DiscoverError> {
    let mut set = CpuSet::new();
    for idx in bitmap.iter_set() {
        let id = usize::from(idx);
        let cpu = u32::try_from(id)
            .ok()
            .filter(|&c| c <= harvest_core::cpuset::MAX_CPU_ID)
            .ok_or(DiscoverError::CpuId { what, id })?;
        set.insert(cpu);
    }
    Ok(set)
}
