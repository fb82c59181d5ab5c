//! Tables the CLI prints for people (`--json` prints the structures instead).

use std::fmt::Write;

use harvest_core::CpuSet;
use harvest_proto::views::level_name;

use crate::lease::{Lease, Node};

fn cpus(ids: &[u32]) -> String {
    let set: CpuSet = ids.iter().copied().collect();
    if set.is_empty() {
        "-".to_owned()
    } else {
        set.to_string()
    }
}

fn set(s: &CpuSet) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_string()
    }
}

/// One line per node: its state and each resource as idle/total with the batch and function
/// shares.
pub fn nodes(nodes: &[Node]) -> String {
    let mut out = format!(
        "{:<10} {:<8} {:<12} {:<12} {:<12} {:<20} {:<9} {:<8} {}\n",
        "NODE",
        "STATE",
        "CPUS-IDLE",
        "CPUS-BATCH",
        "CPUS-FUNC",
        "MEM-MiB idle/total",
        "GPUS i/t",
        "RECLAIMS",
        "INTERFERENCE"
    );
    for n in nodes {
        let v = &n.view;
        let interference = n.interference.as_ref().map_or("-", |i| level_name(i.level));
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:<12} {:<12} {:<12} {:<20} {:<9} {:<8} {}",
            v.name,
            n.state,
            set(&v.cpus.idle),
            set(&v.cpus.batch),
            set(&v.cpus.function),
            format!("{}/{}", v.memory_mib.idle, v.memory_mib.total),
            format!("{}/{}", v.gpus.idle.len(), v.gpus.total.len()),
            n.reclaims,
            interference
        );
    }
    out
}

/// One line per lease.
pub fn leases(leases: &[Lease]) -> String {
    let mut out = format!(
        "{:<18} {:<8} {:<14} {:<8} {:<8} {:<9} {:<22} {}\n",
        "ID", "NODE", "USER", "CPUS", "MEM-MiB", "STATE", "EXECUTOR", "REASON"
    );
    for l in leases {
        let user = if l.user.is_empty() {
            l.uid.to_string()
        } else {
            l.user.clone()
        };
        let _ = writeln!(
            out,
            "{:<18} {:<8} {:<14} {:<8} {:<8} {:<9} {:<22} {}",
            l.id,
            l.node,
            user,
            cpus(&l.cpus),
            l.memory_mib,
            l.state,
            if l.executor_address.is_empty() {
                "-"
            } else {
                &l.executor_address
            },
            l.end_reason
        );
    }
    out
}

/// What other users' live leases hold together (`harvest leases` shows them below yours).
pub fn others(t: &harvest_proto::v1::LeaseTotals) -> String {
    format!(
        "other users: {} live lease(s) of {} user(s), {} core(s), {} MiB\n",
        t.leases, t.users, t.cores, t.memory_mib
    )
}

/// A lease in a few lines.
pub fn lease(l: &Lease) -> String {
    match &l.memory {
        Some(m) => format!(
            "memory lease {} on {}: region {} MiB (holds {} MiB), CPU cap {} thousandths of a CPU, {}\nexecutor {}\n",
            l.id, l.node, m.region_mib, l.memory_mib, m.cpu_millis, l.state, l.executor_address
        ),
        None => format!(
            "lease {} on {}: cpus {}, {} MiB, {} GPU(s), {}\nexecutor {}\n",
            l.id,
            l.node,
            cpus(&l.cpus),
            l.memory_mib,
            l.gpus.len(),
            l.state,
            l.executor_address
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_each_lease_and_node() {
        let l = Lease {
            id: "abc-1".into(),
            node: "n1".into(),
            uid: 1000,
            user: String::new(),
            cpus: vec![2, 3],
            memory_mib: 512,
            gpus: vec![],
            state: "active".into(),
            executor_address: "127.0.0.1:5".into(),
            created_unix_ms: 0,
            expires_unix_ms: 0,
            end_reason: String::new(),
            end_cause: String::new(),
            idle_timeout_ms: 0,
            last_active_unix_ms: 0,
            memory: None,
            secret: None,
        };
        let t = leases(std::slice::from_ref(&l));
        let row = t.lines().nth(1).unwrap();
        for field in ["abc-1", "n1", "1000", "2-3", "512", "active", "127.0.0.1:5"] {
            assert!(row.contains(field), "{field} missing from {row}");
        }
        let mut n = Node::from(harvest_proto::v1::NodeStatus {
            state: "down".into(),
            ..Default::default()
        });
        n.reclaims = 4;
        n.view.name = "n2".into();
        n.view.cpus.idle = [1].into_iter().collect();
        let t = nodes(&[n]);
        let row = t.lines().nth(1).unwrap();
        assert!(row.starts_with("n2") && row.contains("down"), "{row}");
        assert!(row.contains(" 4 "), "reclaims shown: {row}");
        let m = Lease {
            cpus: vec![],
            memory_mib: 1024 + harvest_core::region::OVERHEAD_MIB,
            memory: Some(harvest_core::region::MemorySpec {
                region_mib: 1024,
                cpu_millis: 100,
            }),
            ..l
        };
        let text = lease(&m);
        assert!(
            text.starts_with("memory lease abc-1 on n1: region 1024 MiB")
                && text.contains("CPU cap 100"),
            "{text}"
        );
    }
}
