//! Function leases on this node: what each one holds, and which CPUs a new one gets.
//!
//! A lease is ordered by the scheduler (`CreateExecutor`); the agent picks its CPUs from the
//! idle set ([`choose_cpus`]), its memory from idle memory and its GPUs from idle GPUs, records it
//! in the ledger (so the view's `function` columns show it and `idle` shrinks), and runs its
//! executor. The records here are plain data, persisted with the rest of the ledger.

use harvest_core::region::MemorySpec;
use harvest_core::{CpuSet, NodeView};
use serde::{Deserialize, Serialize};

use crate::discover::Topology;

/// The longest lease id accepted (it names a cgroup and a directory).
pub const MAX_LEASE_ID_LEN: usize = 128;

/// What the scheduler asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    pub cores: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    /// When the lease ends, in ms since the Unix epoch; 0: never (until destroyed).
    pub expires_unix_ms: i64,
    /// What a scheduler needs to rebuild the lease from this agent (kept, never used here).
    pub recovery: Recovery,
    /// A memory lease: no CPUs of its own (`cores` 0), a region served by its executor;
    /// `memory_mib` is what it holds (the region and the overhead).
    pub memory: Option<MemorySpec>,
}

/// What the agent keeps of a lease only so that a scheduler that restarts or takes over can
/// rebuild it exactly (its `Register` carries it): the owner's client keeps using the same lease
/// id and secret, and a retried acquisition finds it by its request id. The ledger that holds it
/// is root's alone (mode 0600).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<StoredSecret>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub idle_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A lease secret as the ledger keeps it (64 hex digits); its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoredSecret(String);

impl StoredSecret {
    pub fn new(secret: &harvest_core::invoke::auth::LeaseSecret) -> Self {
        Self(secret.to_hex())
    }

    /// The 32 bytes; `None` if the stored text is not a secret (a hand-edited ledger).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        harvest_core::invoke::auth::LeaseSecret::from_hex(&self.0)
            .ok()
            .map(|s| s.as_bytes().to_vec())
    }
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredSecret(<redacted>)")
    }
}

/// The running executor of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorProcess {
    pub pid: u32,
    /// The process's start time (`/proc/<pid>/stat` field 22): a reused pid has another one.
    pub start_time: u64,
    /// host:port it listens on, once ready.
    pub address: Option<String>,
}

/// One lease held on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    pub uid: u32,
    pub gid: u32,
    pub cpus: CpuSet,
    pub memory_mib: u64,
    pub gpus: Vec<u32>,
    pub expires_unix_ms: i64,
    pub created_ms: u64,
    /// `None` while the executor is being started.
    pub executor: Option<ExecutorProcess>,
    /// Absent in ledgers written before it existed.
    #[serde(default, skip_serializing_if = "is_default")]
    pub recovery: Recovery,
    /// A memory lease (absent: a function lease, and in ledgers written before they existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySpec>,
}

fn is_default(r: &Recovery) -> bool {
    *r == Recovery::default()
}

/// What an agent reports about a running executor (`ExecutorInfo` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorInfo {
    pub lease_id: String,
    pub uid: u32,
    pub cpus: CpuSet,
    pub memory_mib: u64,
    pub gpus: Vec<u32>,
    pub address: String,
    pub expires_unix_ms: i64,
    pub memory: Option<MemorySpec>,
}

impl LeaseRecord {
    /// The wire view of a lease whose executor is ready; `None` while it starts.
    pub fn info(&self, lease_id: &str) -> Option<ExecutorInfo> {
        let address = self.executor.as_ref()?.address.clone()?;
        Some(ExecutorInfo {
            lease_id: lease_id.to_owned(),
            uid: self.uid,
            cpus: self.cpus.clone(),
            memory_mib: self.memory_mib,
            gpus: self.gpus.clone(),
            address,
            expires_unix_ms: self.expires_unix_ms,
            memory: self.memory,
        })
    }
}

/// A lease the agent refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "lease id {0:?} is not usable as a name: use 1 to 128 of letters, digits, '-', '_', '.' (not starting with '.')"
    )]
    BadId(String),
    #[error("lease {0} already exists on this node")]
    Exists(String),
    #[error("lease {id}: {what} must be at least 1")]
    Zero { id: String, what: &'static str },
    #[error(
        "lease {id}: refusing to run an executor as root (uid 0); set allow_root_executors = true in harvestd's configuration to allow it"
    )]
    Root { id: String },
    #[error(
        "lease {id}: refusing to run an executor as uid {uid}, below this node's min_executor_uid = {min} (system accounts); acquire as a regular user, or lower min_executor_uid in harvestd's configuration"
    )]
    UidBelowMinimum { id: String, uid: u32, min: u32 },
    #[error(
        "lease {id}: uid {uid} is not a user on this node (not in its passwd database): acquire as a user who exists on the cluster's nodes"
    )]
    NoSuchUser { id: String, uid: u32 },
    #[error(
        "lease {id}: refusing to run an executor as {user} (uid {uid}): a system account (login shell {shell}); acquire as a regular user"
    )]
    SystemAccount {
        id: String,
        uid: u32,
        user: String,
        shell: String,
    },
    #[error(
        "lease {id}: gid {gid} is not the primary group of {user} (uid {uid}, primary gid {primary}): executors run with the user's primary group only; acquire without changing group (newgrp/sg)"
    )]
    NotPrimaryGroup {
        id: String,
        uid: u32,
        user: String,
        gid: u32,
        primary: u32,
    },
    #[error(
        "lease {id}: cannot tell whether uid {uid} may run executors ({error}); fix the node's account database (or harvestd's passwd_file) and try again"
    )]
    Accounts { id: String, uid: u32, error: String },
    #[error("lease {id}: {wanted} CPUs wanted, only {idle} idle ({idle_list})")]
    Cpus {
        id: String,
        wanted: u32,
        idle: usize,
        idle_list: String,
    },
    #[error("lease {id}: {wanted} MiB wanted, only {idle} MiB idle")]
    Memory { id: String, wanted: u64, idle: u64 },
    #[error("lease {id}: {wanted} GPUs wanted, only {idle} idle")]
    Gpus {
        id: String,
        wanted: u32,
        idle: usize,
    },
    #[error("lease {id}: a memory lease holds no cores or GPUs of its own, not {cores} and {gpus}")]
    MemoryLeaseShape { id: String, cores: u32, gpus: u32 },
    #[error(
        "lease {id}: {memory_mib} MiB cannot hold its region and the executor's overhead ({held_mib} MiB)"
    )]
    MemoryBelowRegion {
        id: String,
        memory_mib: u64,
        held_mib: u64,
    },
    #[error("no lease {0} on this node")]
    Unknown(String),
    #[error("harvestd is shutting down: no lease starts now; the scheduler places it elsewhere")]
    ShuttingDown,
}

/// Checks that a lease id can name a cgroup and a directory.
pub fn check_id(id: &str) -> Result<(), LeaseError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_LEASE_ID_LEN
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(LeaseError::BadId(id.to_owned()))
    }
}

/// What a new lease gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub cpus: CpuSet,
    pub memory_mib: u64,
    pub gpus: Vec<u32>,
}

/// Places `req` on the idle resources of `view`, or says what is short.
pub fn place(
    topology: &Topology,
    view: &NodeView,
    req: &LeaseRequest,
) -> Result<Placement, LeaseError> {
    let id = || req.id.clone();
    if let Some(spec) = req.memory {
        return place_memory(view, req, spec);
    }
    if req.cores == 0 {
        return Err(LeaseError::Zero {
            id: id(),
            what: "cores",
        });
    }
    if req.memory_mib == 0 {
        return Err(LeaseError::Zero {
            id: id(),
            what: "memory_mib",
        });
    }
    let cpus =
        choose_cpus(topology, &view.cpus.idle, req.cores).ok_or_else(|| LeaseError::Cpus {
            id: id(),
            wanted: req.cores,
            idle: view.cpus.idle.len(),
            idle_list: view.cpus.idle.to_list(),
        })?;
    if req.memory_mib > view.memory_mib.idle {
        return Err(LeaseError::Memory {
            id: id(),
            wanted: req.memory_mib,
            idle: view.memory_mib.idle,
        });
    }
    if req.gpus as usize > view.gpus.idle.len() {
        return Err(LeaseError::Gpus {
            id: id(),
            wanted: req.gpus,
            idle: view.gpus.idle.len(),
        });
    }
    Ok(Placement {
        cpus,
        memory_mib: req.memory_mib,
        gpus: view
            .gpus
            .idle
            .iter()
            .copied()
            .take(req.gpus as usize)
            .collect(),
    })
}

/// A memory lease: no CPU or GPU of its own (its executor shares the node's CPUs at the lowest
/// weight under a cap), `memory_mib` (the region and the overhead) from idle memory.
fn place_memory(
    view: &NodeView,
    req: &LeaseRequest,
    spec: MemorySpec,
) -> Result<Placement, LeaseError> {
    let id = || req.id.clone();
    if req.cores != 0 || req.gpus != 0 {
        return Err(LeaseError::MemoryLeaseShape {
            id: id(),
            cores: req.cores,
            gpus: req.gpus,
        });
    }
    if req.memory_mib < spec.held_mib() {
        return Err(LeaseError::MemoryBelowRegion {
            id: id(),
            memory_mib: req.memory_mib,
            held_mib: spec.held_mib(),
        });
    }
    if req.memory_mib > view.memory_mib.idle {
        return Err(LeaseError::Memory {
            id: id(),
            wanted: req.memory_mib,
            idle: view.memory_mib.idle,
        });
    }
    Ok(Placement {
        cpus: CpuSet::new(),
        memory_mib: req.memory_mib,
        gpus: Vec::new(),
    })
}

/// Picks `n` CPUs from `idle`, keeping a lease together where that is cheap: inside one NUMA
/// node when one has enough idle CPUs (the one with the fewest that still fits, so large holes
/// stay for large leases), and whole idle cores before the free threads of half-busy cores.
/// `None` when fewer than `n` CPUs are idle.
pub fn choose_cpus(topology: &Topology, idle: &CpuSet, n: u32) -> Option<CpuSet> {
    let n = n as usize;
    if idle.len() < n {
        return None;
    }
    let domain = topology
        .numa_nodes
        .iter()
        .map(|numa| numa.cpus.intersection(idle))
        .filter(|free| free.len() >= n)
        .min_by_key(CpuSet::len)
        .unwrap_or_else(|| idle.clone());
    // Cores with their idle PUs, whole idle cores first, then by their lowest PU.
    let mut cores: Vec<(bool, CpuSet)> = topology
        .cores
        .iter()
        .map(|core| (core.is_subset(&domain), core.intersection(&domain)))
        .filter(|(_, free)| !free.is_empty())
        .collect();
    cores.sort_by_key(|(whole, free)| (!whole, free.iter().next()));
    let mut chosen = CpuSet::new();
    for cpu in cores.iter().flat_map(|(_, free)| free.iter()) {
        if chosen.len() == n {
            break;
        }
        chosen.insert(cpu);
    }
    // PUs that no core lists (a topology without Core objects) still count.
    for cpu in domain.iter() {
        if chosen.len() == n {
            break;
        }
        chosen.insert(cpu);
    }
    (chosen.len() == n).then_some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{FakeTopology, TopologySource};

    fn set(list: &str) -> CpuSet {
        CpuSet::parse_list(list).unwrap()
    }

    #[test]
    fn whole_idle_cores_come_before_half_busy_ones() {
        // 1 socket, 4 cores, 2 threads: core c = {c, c+4}.
        let topo = FakeTopology::uniform(1, 4, 2).topology().unwrap();
        // Core 0 is half busy (PU 4 is a batch job's), cores 1..3 are idle.
        let idle = set("0-3,5-7");
        assert_eq!(choose_cpus(&topo, &idle, 2).unwrap(), set("1,5"));
        assert_eq!(choose_cpus(&topo, &idle, 4).unwrap(), set("1-2,5-6"));
        // The half-busy core's free thread is used last.
        assert_eq!(choose_cpus(&topo, &idle, 7).unwrap(), idle);
        assert_eq!(choose_cpus(&topo, &idle, 8), None);
    }

    #[test]
    fn a_lease_stays_in_the_numa_node_that_fits_it_most_tightly() {
        // 2 sockets (NUMA nodes) of 4 single-thread cores: 0-3 and 4-7.
        let topo = FakeTopology::uniform(2, 4, 1).topology().unwrap();
        // Node 0 has 3 idle CPUs, node 1 has 2: a 2-CPU lease goes to node 1.
        let idle = set("0-2,6-7");
        assert_eq!(choose_cpus(&topo, &idle, 2).unwrap(), set("6-7"));
        assert_eq!(choose_cpus(&topo, &idle, 3).unwrap(), set("0-2"));
        // No node fits 4: spread over both.
        assert_eq!(choose_cpus(&topo, &idle, 4).unwrap().len(), 4);
    }

    #[test]
    fn never_a_cpu_outside_the_idle_set() {
        let topo = FakeTopology::uniform(2, 4, 2).topology().unwrap();
        let idle = set("1,3,9,12,15");
        for n in 1..=5 {
            let got = choose_cpus(&topo, &idle, n).unwrap();
            assert_eq!(got.len(), n as usize);
            assert!(got.is_subset(&idle), "{got} not within {idle}");
        }
    }

    fn view(idle_cpus: &str, idle_mib: u64, idle_gpus: Vec<u32>) -> NodeView {
        let mut v = NodeView {
            name: "n1".into(),
            ..NodeView::default()
        };
        v.cpus.idle = set(idle_cpus);
        v.memory_mib.idle = idle_mib;
        v.gpus.idle = idle_gpus;
        v
    }

    fn req(cores: u32, memory_mib: u64, gpus: u32) -> LeaseRequest {
        LeaseRequest {
            id: "L1".into(),
            uid: 1000,
            gid: 1000,
            cores,
            memory_mib,
            gpus,
            expires_unix_ms: 0,
            recovery: Default::default(),
            memory: None,
        }
    }

    #[test]
    fn placement_says_what_is_short() {
        let topo = FakeTopology::uniform(1, 4, 1).topology().unwrap();
        let v = view("2-3", 500, vec![1]);
        let p = place(&topo, &v, &req(2, 500, 1)).unwrap();
        assert_eq!((p.cpus, p.memory_mib, p.gpus), (set("2-3"), 500, vec![1]));
        let e = place(&topo, &v, &req(3, 100, 0)).unwrap_err();
        assert_eq!(e.to_string(), "lease L1: 3 CPUs wanted, only 2 idle (2-3)");
        let e = place(&topo, &v, &req(1, 501, 0)).unwrap_err();
        assert!(
            matches!(
                e,
                LeaseError::Memory {
                    wanted: 501,
                    idle: 500,
                    ..
                }
            ),
            "{e}"
        );
        let e = place(&topo, &v, &req(1, 1, 2)).unwrap_err();
        assert!(
            matches!(
                e,
                LeaseError::Gpus {
                    wanted: 2,
                    idle: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            place(&topo, &v, &req(0, 1, 0)),
            Err(LeaseError::Zero { what: "cores", .. })
        ));
        assert!(matches!(
            place(&topo, &v, &req(1, 0, 0)),
            Err(LeaseError::Zero {
                what: "memory_mib",
                ..
            })
        ));
    }

    #[test]
    fn a_memory_lease_takes_idle_memory_and_no_cpu() {
        let topo = FakeTopology::uniform(1, 4, 1).topology().unwrap();
        // No idle CPU at all: a memory lease still fits (it holds none).
        let v = view("", 2000, vec![]);
        let spec = MemorySpec::new(1024, 0).unwrap();
        let memory = |cores, memory_mib, gpus| LeaseRequest {
            memory: Some(spec),
            ..req(cores, memory_mib, gpus)
        };
        let p = place(&topo, &v, &memory(0, spec.held_mib(), 0)).unwrap();
        assert_eq!(
            (p.cpus, p.memory_mib, p.gpus),
            (
                CpuSet::new(),
                1024 + harvest_core::region::OVERHEAD_MIB,
                vec![]
            )
        );
        let e = place(
            &topo,
            &view("", 1000, vec![]),
            &memory(0, spec.held_mib(), 0),
        );
        assert!(
            matches!(e, Err(LeaseError::Memory { idle: 1000, .. })),
            "{e:?}"
        );
        assert!(matches!(
            place(&topo, &v, &memory(1, spec.held_mib(), 0)),
            Err(LeaseError::MemoryLeaseShape { cores: 1, .. })
        ));
        assert!(matches!(
            place(&topo, &v, &memory(0, spec.held_mib(), 1)),
            Err(LeaseError::MemoryLeaseShape { gpus: 1, .. })
        ));
        // The order must cover the region and the overhead.
        assert!(matches!(
            place(&topo, &v, &memory(0, 1024, 0)),
            Err(LeaseError::MemoryBelowRegion { .. })
        ));
    }

    #[test]
    fn lease_ids_must_be_plain_names() {
        for good in ["L1", "lease-7", "a.b_c", &"x".repeat(MAX_LEASE_ID_LEN)] {
            check_id(good).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "../x",
            "a/b",
            "a b",
            &"x".repeat(MAX_LEASE_ID_LEN + 1),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
