//! The interference cost model: how much a co-located function slows the batch job next to it,
//! calibrated from the co-location study's measurements.
//!
//! `colocation_runtimes_summary.csv` holds median runtimes of LULESH and MILC alone (`baseline`)
//! and next to NAS (CPU), Rodinia (GPU) and remote-memory functions. A co-located row is matched
//! to the baselines of the same application, problem size, machine and run configuration
//! (`<machine>/<run>/...` in `config_dir`); the baseline is the median of their medians.
//! Rows without a machine component are the GPU runs (Daint GPU nodes) and the remote-memory
//! runs (Ault); their run is their first component when a baseline has it (`lulesh_125`),
//! otherwise the configuration every machine has (`lulesh_27`, `milc_32`). Slowdown = co-located
//! median / baseline. Each class's model value is the median slowdown, floored at 1 (a measured
//! speed-up is noise, not a benefit of co-location).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::swf::open_maybe_gz;

/// The summary file inside `reference/`.
pub const SUMMARY_FILE: &str = "colocation_runtimes_summary.csv.gz";

/// Machines named by the first component of `config_dir`.
const MACHINES: &[&str] = &["ault", "daint_mc", "daint_gpu"];
/// Where the GPU co-location runs (no machine component) ran: Daint's P100 nodes.
const GPU_MACHINE: &str = "daint_gpu";
/// Where the remote-memory runs (no machine component) ran: Ault (their MILC runtimes match
/// Ault's baseline within 0.3%, and their `lulesh_125` configuration exists only there).
const RMA_MACHINE: &str = "ault";
/// The run configuration of rows that name none: the one every machine has a baseline for.
const DEFAULT_RUNS: &[(&str, &str)] = &[("lulesh", "lulesh_27"), ("milc", "milc_32")];

/// The kind of function next to the batch job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionClass {
    Cpu,
    Gpu,
    Memory,
}

/// The calibration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("cannot read co-location reference {path}: {source}")]
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
    #[error("{path}: no co-located run of class {class:?} could be matched to a baseline")]
    Empty { path: PathBuf, class: FunctionClass },
}

/// One class's measured slowdowns.
#[derive(Debug, Clone, Serialize)]
pub struct ClassCalibration {
    pub runs: usize,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
    /// What the model applies: `max(1, median)`.
    pub model: f64,
    /// Every matched run's slowdown, ascending (what [`CostModel::draw`] samples from).
    #[serde(skip)]
    pub samples: Vec<f64>,
}

/// Slowdown per class.
#[derive(Debug, Clone, Serialize)]
pub struct CostModel {
    pub cpu: ClassCalibration,
    pub gpu: ClassCalibration,
    pub memory: ClassCalibration,
}

struct Row {
    experiment: String,
    config: String,
    kind: String,
    size: u32,
    median: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl CostModel {
    /// Calibrates from `reference_dir/colocation_runtimes_summary.csv.gz`.
    pub fn calibrate(reference_dir: &Path) -> Result<Self, CostError> {
        let path = reference_dir.join(SUMMARY_FILE);
        let reader = open_maybe_gz(&path).map_err(|source| CostError::Io {
            path: path.clone(),
            source,
        })?;
        let mut rows = Vec::new();
        for (i, line) in BufReader::new(reader).lines().enumerate().skip(1) {
            let line = line.map_err(|source| CostError::Io {
                path: path.clone(),
                source,
            })?;
            let f: Vec<&str> = line.split(',').collect();
            let bad = |what: &str| CostError::Format {
                path: path.clone(),
                line: i + 1,
                what: what.to_owned(),
            };
            if f.len() < 6 {
                return Err(bad("fewer than 6 columns"));
            }
            rows.push(Row {
                experiment: f[0].to_owned(),
                config: f[1].to_owned(),
                kind: f[2].to_owned(),
                size: f[3]
                    .parse()
                    .map_err(|_| bad("size is not a whole number"))?,
                median: f[5].parse().map_err(|_| bad("median is not a number"))?,
            });
        }
        let mut by_class: HashMap<FunctionClass, Vec<f64>> = HashMap::new();
        for r in rows
            .iter()
            .filter(|r| r.experiment != "baseline" && r.kind.starts_with("batch_"))
        {
            let class = match r.experiment.as_str() {
                "colocation_cpu" => FunctionClass::Cpu,
                "colocation_gpu" => FunctionClass::Gpu,
                "colocation_rma" => FunctionClass::Memory,
                _ => continue,
            };
            let mut parts = r.config.split('/');
            let first = parts.next().unwrap_or("");
            let (machine, run) = if MACHINES.contains(&first) {
                (first, parts.next().unwrap_or(""))
            } else {
                let machine = match class {
                    FunctionClass::Gpu => GPU_MACHINE,
                    _ => RMA_MACHINE,
                };
                let app = r.kind.trim_start_matches("batch_");
                let known_run = rows.iter().any(|b| {
                    b.experiment == "baseline" && b.config.split('/').nth(1) == Some(first)
                });
                let run = if known_run {
                    first
                } else {
                    DEFAULT_RUNS
                        .iter()
                        .find(|(a, _)| *a == app)
                        .map_or("", |(_, run)| *run)
                };
                (machine, run)
            };
            let base: Vec<f64> = rows
                .iter()
                .filter(|b| {
                    let mut p = b.config.split('/');
                    b.experiment == "baseline"
                        && b.kind == r.kind
                        && b.size == r.size
                        && p.next() == Some(machine)
                        && p.next() == Some(run)
                })
                .map(|b| b.median)
                .collect();
            if base.is_empty() {
                continue;
            }
            by_class
                .entry(class)
                .or_default()
                .push(r.median / median_of(base));
        }
        let calib = |class| -> Result<ClassCalibration, CostError> {
            let mut v = by_class.get(&class).cloned().unwrap_or_default();
            if v.is_empty() {
                return Err(CostError::Empty {
                    path: path.clone(),
                    class,
                });
            }
            v.sort_by(f64::total_cmp);
            let median = median_of(v.clone());
            Ok(ClassCalibration {
                runs: v.len(),
                median,
                p90: quantile(&v, 0.9),
                max: *v.last().expect("non-empty"),
                model: median.max(1.0),
                samples: v,
            })
        };
        Ok(Self {
            cpu: calib(FunctionClass::Cpu)?,
            gpu: calib(FunctionClass::Gpu)?,
            memory: calib(FunctionClass::Memory)?,
        })
    }

    fn class(&self, class: FunctionClass) -> &ClassCalibration {
        match class {
            FunctionClass::Cpu => &self.cpu,
            FunctionClass::Gpu => &self.gpu,
            FunctionClass::Memory => &self.memory,
        }
    }

    /// The slowdown factor (>= 1) the model applies while a function of `class` shares a node.
    pub fn slowdown(&self, class: FunctionClass) -> f64 {
        self.class(class).model
    }

    /// One job's slowdown beside a function of `class`: a measured run drawn uniformly from the
    /// class's calibration runs, floored at 1 (a measured speed-up is noise).
    pub fn draw(&self, class: FunctionClass, rng: &mut crate::rng::Rng) -> f64 {
        let v = &self.class(class).samples;
        if v.is_empty() {
            return self.slowdown(class);
        }
        v[rng.below(v.len() as u64) as usize].max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn matches_baselines_by_machine_run_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let text = "experiment,config_dir,record_kind,size,count,median,mean,std,min,max\n\
            baseline,daint_mc/lulesh_64/lulesh_8,batch_lulesh,15,1,40,0,0,0,0\n\
            baseline,daint_mc/lulesh_64/lulesh_16,batch_lulesh,15,1,44,0,0,0,0\n\
            baseline,daint_mc/lulesh_27/lulesh_8,batch_lulesh,15,1,1000,0,0,0,0\n\
            baseline,daint_gpu/lulesh_27/lulesh_9,batch_lulesh,15,1,20,0,0,0,0\n\
            baseline,daint_gpu/lulesh_8,batch_lulesh,15,1,5,0,0,0,0\n\
            baseline,ault/lulesh_27,batch_lulesh,15,1,30,0,0,0,0\n\
            baseline,ault/lulesh_125,batch_lulesh,15,1,50,0,0,0,0\n\
            colocation_cpu,daint_mc/lulesh_64/nas_a,batch_lulesh,15,1,46.2,0,0,0,0\n\
            colocation_cpu,daint_mc/lulesh_64/nas_a,function_nas,15,1,999,0,0,0,0\n\
            colocation_gpu,lulesh/rodinia,batch_lulesh,15,1,21,0,0,0,0\n\
            colocation_rma,lulesh/read,batch_lulesh,15,1,28.5,0,0,0,0\n\
            colocation_rma,lulesh_125/read,batch_lulesh,15,1,45,0,0,0,0\n";
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(dir.path().join(SUMMARY_FILE)).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap();
        let m = CostModel::calibrate(dir.path()).unwrap();
        assert!((m.cpu.median - 46.2 / 42.0).abs() < 1e-9, "{:?}", m.cpu);
        assert!((m.gpu.median - 1.05).abs() < 1e-9);
        // ault/lulesh_27: 28.5 / 30 = 0.95; ault/lulesh_125: 45 / 50 = 0.9.
        assert_eq!(m.memory.runs, 2);
        assert!((m.memory.median - 0.925).abs() < 1e-9, "{:?}", m.memory);
        assert!((m.memory.max - 0.95).abs() < 1e-9);
        assert_eq!(
            m.slowdown(FunctionClass::Memory),
            1.0,
            "speed-ups are floored at 1"
        );
        assert_eq!(m.cpu.runs, 1);
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = CostModel::calibrate(Path::new("/nonexistent")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/colocation_runtimes_summary.csv.gz")
        );
    }
}
