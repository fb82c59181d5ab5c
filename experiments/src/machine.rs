//! The cluster a trace ran on: its node shapes (how many nodes, cores and memory each).
//!
//! Worked out from what the trace itself says, never from its file name:
//! 1. a machine file (`--machine-file`, or `<trace>.machines` beside the trace, Alea's format:
//!    `id name nodes cores-per-node ? memory-KiB-per-node` per line), which may describe
//!    several node shapes (MetaCentrum's zewura and zegox: 529,426,432 KiB = 505 GiB and
//!    94,035,968 KiB = 90 GiB, as the trace's documentation gives them);
//! 2. otherwise the SWF header's `MaxNodes` and `MaxProcs` (`MaxProcs / MaxNodes` cores a node);
//! 3. otherwise `--node-cores` with `--trace-nodes`.
//!
//! SWF headers never give memory: without a machine file or `--node-mem` a node gets
//! [`DEFAULT_MEM_PER_CORE_MIB`] per core, and the provenance says so. Flags override any field.

use std::path::{Path, PathBuf};

use crate::swf::SwfHeader;

/// Memory per core assumed when neither a machine file nor `--node-mem` gives it.
pub const DEFAULT_MEM_PER_CORE_MIB: u64 = 2048;

/// One kind of node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub name: String,
    pub nodes: u32,
    pub cores: u32,
    pub mem_mib: u64,
}

/// The trace's machine and where each figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Nodes over all shapes.
    pub nodes: u32,
    /// Cores of the largest shape (the only one for a homogeneous machine).
    pub cores: u32,
    /// Memory of the largest shape.
    pub mem_mib: u64,
    pub shapes: Vec<Shape>,
    /// Human-readable provenance, quoted in the report.
    pub source: String,
}

impl Machine {
    pub fn total_cores(&self) -> u64 {
        self.shapes
            .iter()
            .map(|s| u64::from(s.nodes) * u64::from(s.cores))
            .sum()
    }

    pub fn total_mem_mib(&self) -> u64 {
        self.shapes
            .iter()
            .map(|s| u64::from(s.nodes) * s.mem_mib)
            .sum()
    }

    pub fn homogeneous(&self) -> bool {
        self.shapes.len() == 1
    }
}

/// What the command line says about the machine (each overrides what the trace says).
#[derive(Debug, Clone, Default)]
pub struct MachineFlags {
    pub machine_file: Option<PathBuf>,
    pub node_cores: Option<u32>,
    pub node_mem_mib: Option<u64>,
    pub trace_nodes: Option<u32>,
}

/// A machine that cannot be worked out.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(
        "the trace's header has no MaxNodes/MaxProcs and there is no machine file: pass --machine-file, or --node-cores and --trace-nodes"
    )]
    Unknown,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("cannot read machine file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `id name nodes cores ? memory-KiB` (Alea's .machines format)")]
    Format { path: PathBuf, line: usize },
}

/// `<trace without .gz>.machines`, where Alea keeps a trace's machine description.
pub fn companion_machine_file(trace: &Path) -> PathBuf {
    let name = trace
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    trace.with_file_name(format!("{}.machines", name.trim_end_matches(".gz")))
}

/// Parses an Alea machine file.
pub fn read_machine_file(path: &Path) -> Result<Vec<Shape>, MachineError> {
    let text = std::fs::read_to_string(path).map_err(|source| MachineError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut shapes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() || f[0].starts_with(';') || f[0].starts_with('#') {
            continue;
        }
        let bad = || MachineError::Format {
            path: path.to_owned(),
            line: i + 1,
        };
        if f.len() < 6 {
            return Err(bad());
        }
        shapes.push(Shape {
            name: f[1].to_owned(),
            nodes: f[2].parse().map_err(|_| bad())?,
            cores: f[3].parse().map_err(|_| bad())?,
            mem_mib: f[5].parse::<u64>().map_err(|_| bad())? >> 10,
        });
    }
    Ok(shapes)
}

/// Works out the machine of `trace` (with `header`); flags win.
pub fn machine_for(
    trace: &Path,
    header: &SwfHeader,
    flags: &MachineFlags,
) -> Result<Machine, MachineError> {
    let file = flags
        .machine_file
        .clone()
        .or_else(|| Some(companion_machine_file(trace)).filter(|p| p.exists()));
    let (mut shapes, mut source) = if let Some(file) = file {
        let shapes = read_machine_file(&file)?;
        let desc = format!("machine file {}", file.display());
        (shapes, desc)
    } else if let (Some(nodes), Some(procs)) = (header.max_nodes, header.max_procs)
        && nodes > 0
    {
        let cores = (procs / nodes).max(1) as u32;
        let shape = Shape {
            name: "node".into(),
            nodes: nodes as u32,
            cores,
            mem_mib: u64::from(cores) * DEFAULT_MEM_PER_CORE_MIB,
        };
        let desc = format!(
            "SWF header: MaxNodes {nodes}, MaxProcs {procs} ({cores} cores/node); memory {}",
            if flags.node_mem_mib.is_some() {
                "from --node-mem".to_owned()
            } else {
                format!("assumed {DEFAULT_MEM_PER_CORE_MIB} MiB/core")
            }
        );
        (vec![shape], desc)
    } else if let (Some(cores), Some(nodes)) = (flags.node_cores, flags.trace_nodes) {
        let shape = Shape {
            name: "node".into(),
            nodes,
            cores,
            mem_mib: u64::from(cores) * DEFAULT_MEM_PER_CORE_MIB,
        };
        (vec![shape], "command line".to_owned())
    } else {
        return Err(MachineError::Unknown);
    };
    if shapes.is_empty() {
        return Err(MachineError::Unknown);
    }
    if let Some(c) = flags.node_cores {
        shapes.iter_mut().for_each(|s| s.cores = c);
        source.push_str(&format!("; --node-cores {c}"));
    }
    if let Some(m) = flags.node_mem_mib {
        shapes.iter_mut().for_each(|s| s.mem_mib = m);
        source.push_str(&format!("; --node-mem {m} MiB"));
    }
    if let Some(n) = flags.trace_nodes {
        shapes.truncate(1);
        shapes[0].nodes = n;
        source.push_str(&format!("; --trace-nodes {n}"));
    }
    for s in &shapes {
        if s.cores == 0 {
            return Err(MachineError::Zero("cores per node"));
        }
        if s.nodes == 0 {
            return Err(MachineError::Zero("trace nodes"));
        }
        if s.mem_mib == 0 {
            return Err(MachineError::Zero("memory per node"));
        }
    }
    let big = shapes.iter().max_by_key(|s| s.cores).expect("non-empty");
    Ok(Machine {
        nodes: shapes.iter().map(|s| s.nodes).sum(),
        cores: big.cores,
        mem_mib: big.mem_mib,
        source,
        shapes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(nodes: u64, procs: u64) -> SwfHeader {
        SwfHeader {
            max_nodes: Some(nodes),
            max_procs: Some(procs),
            ..Default::default()
        }
    }

    #[test]
    fn the_header_decides_not_the_file_name() {
        let flags = MachineFlags::default();
        let a = machine_for(Path::new("/x/RICC-2010-2.swf"), &header(10, 40), &flags).unwrap();
        let b = machine_for(Path::new("/x/renamed.swf"), &header(10, 40), &flags).unwrap();
        assert_eq!((a.nodes, a.cores, a.mem_mib), (10, 4, 4 * 2048));
        assert_eq!(a, b);
    }

    #[test]
    fn flags_override_and_missing_headers_are_named() {
        let flags = MachineFlags {
            node_mem_mib: Some(12 << 10),
            ..Default::default()
        };
        let m = machine_for(Path::new("t.swf"), &header(1024, 8192), &flags).unwrap();
        assert_eq!((m.cores, m.mem_mib), (8, 12 << 10));
        let e = machine_for(
            Path::new("t.swf"),
            &SwfHeader::default(),
            &MachineFlags::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--machine-file"), "{e}");
    }

    #[test]
    fn machine_files_give_several_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("t.swf.gz");
        std::fs::write(
            dir.path().join("t.swf.machines"),
            "0\tbig\t2\t80\t1\t529426432\n1\tsmall\t3\t12\t1\t94035968\n",
        )
        .unwrap();
        let m = machine_for(&trace, &SwfHeader::default(), &MachineFlags::default()).unwrap();
        assert_eq!(m.nodes, 5);
        assert_eq!(m.total_cores(), 2 * 80 + 3 * 12);
        // KiB: MetaCentrum's zewura has 505 GiB a node, zegox 90 GiB.
        assert_eq!(m.shapes[0].mem_mib, 517_018);
        assert_eq!(m.shapes[1].mem_mib, 91_832);
        assert!(!m.homogeneous());
    }
}
