//! The cluster a trace ran on: how many nodes, how many cores and how much memory each.
//!
//! SWF headers give `MaxNodes` and `MaxProcs` but not memory, and some count CPUs as nodes, so
//! the traces in `shared/data` have presets (from the archive's descriptions of the machines);
//! any other trace gets `MaxProcs / MaxNodes` cores per node and [`DEFAULT_MEM_PER_CORE_MIB`] per
//! core, and says so. `--node-cores` and `--node-mem` override either.

use crate::swf::SwfHeader;

/// Memory per core assumed for a machine the project has no description of.
pub const DEFAULT_MEM_PER_CORE_MIB: u64 = 2048;

/// A homogeneous node shape and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub nodes: u32,
    pub cores: u32,
    pub mem_mib: u64,
    /// Human-readable provenance, quoted in the report.
    pub source: String,
}

/// A trace whose machine cannot be worked out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    #[error(
        "the trace's header has no MaxNodes/MaxProcs and it is not a known trace: pass --node-cores and --trace-nodes"
    )]
    Unknown,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

/// `(file-name prefix, nodes, cores, memory MiB, description)`.
const PRESETS: &[(&str, u32, u32, u64, &str)] = &[
    (
        "LLNL-Thunder",
        1002,
        4,
        8 << 10,
        "LLNL Thunder: 1,002 nodes x 4 Itanium2 cores, 8 GiB",
    ),
    (
        "RICC",
        1024,
        8,
        12 << 10,
        "RIKEN RICC: 1,024 nodes x 8 cores, 12 GiB",
    ),
    (
        "HPC2N",
        120,
        2,
        2 << 10,
        "HPC2N Seth: 120 dual-CPU nodes, 2 GiB (memory assumed)",
    ),
    (
        "KTH-SP2",
        100,
        1,
        256,
        "KTH SP2: 100 single-CPU nodes, 256 MiB (memory assumed)",
    ),
    (
        "MetaCentrum",
        48,
        12,
        90 << 10,
        "MetaCentrum zegox: 48 nodes x 12 cores, 90 GiB (zewura's 20 fat nodes not modelled)",
    ),
];

/// Works out the machine for the trace at `file_name` with `header`; overrides win.
pub fn machine_for(
    file_name: &str,
    header: &SwfHeader,
    node_cores: Option<u32>,
    node_mem_mib: Option<u64>,
    trace_nodes: Option<u32>,
) -> Result<Machine, MachineError> {
    let preset = PRESETS.iter().find(|p| file_name.starts_with(p.0));
    let mut m = match (preset, header.max_nodes, header.max_procs) {
        (Some(&(_, nodes, cores, mem, desc)), _, _) => Machine {
            nodes,
            cores,
            mem_mib: mem,
            source: desc.to_owned(),
        },
        (None, Some(nodes), Some(procs)) if nodes > 0 => {
            let cores = (procs / nodes).max(1) as u32;
            Machine {
                nodes: nodes as u32,
                cores,
                mem_mib: u64::from(cores) * DEFAULT_MEM_PER_CORE_MIB,
                source: format!(
                    "from the SWF header: MaxNodes {nodes}, MaxProcs {procs} ({cores} cores/node); memory assumed {DEFAULT_MEM_PER_CORE_MIB} MiB/core"
                ),
            }
        }
        _ => match (node_cores, trace_nodes) {
            (Some(cores), Some(nodes)) => Machine {
                nodes,
                cores,
                mem_mib: u64::from(cores) * DEFAULT_MEM_PER_CORE_MIB,
                source: "from the command line".to_owned(),
            },
            _ => return Err(MachineError::Unknown),
        },
    };
    if let Some(c) = node_cores {
        m.cores = c;
        m.source.push_str(&format!("; --node-cores {c}"));
    }
    if let Some(mem) = node_mem_mib {
        m.mem_mib = mem;
        m.source.push_str(&format!("; --node-mem {mem} MiB"));
    }
    if let Some(n) = trace_nodes {
        m.nodes = n;
        m.source.push_str(&format!("; --trace-nodes {n}"));
    }
    if m.cores == 0 {
        return Err(MachineError::Zero("cores per node"));
    }
    if m.nodes == 0 {
        return Err(MachineError::Zero("trace nodes"));
    }
    if m.mem_mib == 0 {
        return Err(MachineError::Zero("memory per node"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_header_and_overrides() {
        let h = SwfHeader::default();
        let m = machine_for("RICC-2010-2.swf.gz", &h, None, None, None).unwrap();
        assert_eq!((m.nodes, m.cores, m.mem_mib), (1024, 8, 12288));
        let h = SwfHeader {
            max_nodes: Some(64),
            max_procs: Some(1024),
            ..SwfHeader::default()
        };
        let m = machine_for("new.swf", &h, None, None, None).unwrap();
        assert_eq!(
            (m.nodes, m.cores, m.mem_mib),
            (64, 16, 16 * DEFAULT_MEM_PER_CORE_MIB)
        );
        assert!(m.source.contains("assumed"));
        let m = machine_for("new.swf", &h, Some(32), Some(1000), Some(10)).unwrap();
        assert_eq!((m.nodes, m.cores, m.mem_mib), (10, 32, 1000));
        assert_eq!(
            machine_for("x.swf", &SwfHeader::default(), None, None, None),
            Err(MachineError::Unknown)
        );
        assert_eq!(
            machine_for("x.swf", &h, Some(0), None, None),
            Err(MachineError::Zero("cores per node"))
        );
    }
}
