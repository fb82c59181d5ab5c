//! Piz Daint's utilization snapshots (the co-location study's `sinfo` samples, March 2022), reduced
//! to the statistics the simulator also computes, for a side-by-side table.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::swf::open_maybe_gz;

/// The snapshot file inside `reference/`.
pub const DAINT_FILE: &str = "daint_utilization_combined.csv.gz";

/// The Daint file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DaintError {
    #[error("cannot read Daint reference {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {what}")]
    Format {
        path: PathBuf,
        line: usize,
        what: String,
    },
}

/// Means over all snapshots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DaintStats {
    pub snapshots: usize,
    pub total_nodes: f64,
    /// Idle CPUs on idle nodes / all CPUs.
    pub idle_cpus_on_idle_nodes: f64,
    /// Free memory on allocated nodes / memory (the study: "about 75% ... was free").
    pub free_mem_on_allocated_nodes: f64,
    /// Free memory on idle nodes / total memory.
    pub free_mem_on_idle_nodes: f64,
    pub allocated_node_fraction: f64,
    pub idle_node_fraction: f64,
    pub other_node_fraction: f64,
}

impl DaintStats {
    pub fn load(reference_dir: &Path) -> Result<Self, DaintError> {
        let path = reference_dir.join(DAINT_FILE);
        let reader = open_maybe_gz(&path).map_err(|source| DaintError::Io {
            path: path.clone(),
            source,
        })?;
        let mut s = Self::default();
        for (i, line) in BufReader::new(reader).lines().enumerate().skip(1) {
            let line = line.map_err(|source| DaintError::Io {
                path: path.clone(),
                source,
            })?;
            let f: Vec<&str> = line.split(',').collect();
            let num = |c: usize| -> Result<f64, DaintError> {
                f.get(c)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| DaintError::Format {
                        path: path.clone(),
                        line: i + 1,
                        what: format!("column {} is not a number", c + 1),
                    })
            };
            let total = num(8)?;
            if total <= 0.0 {
                continue;
            }
            s.snapshots += 1;
            s.total_nodes += total;
            s.idle_cpus_on_idle_nodes += num(1)?;
            s.free_mem_on_allocated_nodes += num(3)?;
            s.free_mem_on_idle_nodes += num(4)?;
            s.allocated_node_fraction += num(5)? / total;
            s.idle_node_fraction += num(6)? / total;
            s.other_node_fraction += num(7)? / total;
        }
        if s.snapshots == 0 {
            return Err(DaintError::Format {
                path,
                line: 1,
                what: "no snapshots".into(),
            });
        }
        let n = s.snapshots as f64;
        for v in [
            &mut s.total_nodes,
            &mut s.idle_cpus_on_idle_nodes,
            &mut s.free_mem_on_allocated_nodes,
            &mut s.free_mem_on_idle_nodes,
            &mut s.allocated_node_fraction,
            &mut s.idle_node_fraction,
            &mut s.other_node_fraction,
        ] {
            *v /= n;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn averages_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(dir.path().join(DAINT_FILE)).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(
            b"date,idle_cpus,partially_idle_cpus,partially_free_mem,free_mem,allocated_nodes,idle_nodes,other_nodes,total_nodes\n\
              d1,0.1,0.1,0.8,0.1,80,10,10,100\n\
              d2,0.2,0.2,0.6,0.2,60,30,10,100\n",
        )
        .unwrap();
        gz.finish().unwrap();
        let s = DaintStats::load(dir.path()).unwrap();
        assert_eq!(s.snapshots, 2);
        assert!((s.idle_cpus_on_idle_nodes - 0.15).abs() < 1e-12);
        assert!((s.free_mem_on_allocated_nodes - 0.7).abs() < 1e-12);
        assert!((s.allocated_node_fraction - 0.7).abs() < 1e-12);
        assert!((s.idle_node_fraction - 0.2).abs() < 1e-12);
    }
}
