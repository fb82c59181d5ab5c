//! The Azure Functions 2019 trace (500-function sample): per-minute invocation counts, duration
//! percentiles per function, memory percentiles per app.
//!
//! Each invocation becomes a one-core lease whose memory is the app's average allocated memory
//! and whose duration is drawn from the function's duration percentiles (piecewise-linear
//! between the published percentiles).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::rng::Rng;
use crate::swf::open_maybe_gz;

/// File names inside the trace directory.
pub const INVOCATIONS: &str = "azure2019-invitro-500fn-invocations.csv.gz";
pub const DURATIONS: &str = "azure2019-invitro-500fn-durations.csv.gz";
pub const MEMORY: &str = "azure2019-invitro-500fn-memory.csv.gz";

/// Memory assumed for a function whose app has no memory record.
pub const DEFAULT_FUNCTION_MEM_MIB: u64 = 128;

/// The Azure trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    #[error("cannot read Azure trace file {path}: {source}")]
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

/// One function of the sample.
#[derive(Debug, Clone)]
pub struct AzureFunction {
    /// Invocations in each minute of the window.
    pub per_minute: Vec<u32>,
    /// `(percentile, milliseconds)`, ascending.
    pub duration_pcts: Vec<(f64, f64)>,
    pub mem_mib: u64,
}

impl AzureFunction {
    /// A duration in milliseconds, drawn from the percentiles (at least 1 ms).
    pub fn sample_duration_ms(&self, rng: &mut Rng) -> u64 {
        let p = rng.unit() * 100.0;
        let pts = &self.duration_pcts;
        let ms = match pts.iter().position(|&(q, _)| q >= p) {
            None => pts.last().map_or(1.0, |x| x.1),
            Some(0) => pts[0].1,
            Some(i) => {
                let (q0, v0) = pts[i - 1];
                let (q1, v1) = pts[i];
                v0 + (v1 - v0) * (p - q0) / (q1 - q0).max(1e-9)
            }
        };
        (ms.round() as u64).max(1)
    }
}

/// The whole sample.
#[derive(Debug, Clone)]
pub struct AzureTrace {
    pub functions: Vec<AzureFunction>,
    pub minutes: usize,
}

fn lines(path: &Path) -> Result<impl Iterator<Item = (usize, String)>, AzureError> {
    let r = open_maybe_gz(path).map_err(|source| AzureError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(BufReader::new(r)
        .lines()
        .map_while(Result::ok)
        .enumerate()
        .map(|(i, l)| (i + 1, l)))
}

impl AzureTrace {
    /// Loads the three files from `dir`.
    pub fn load(dir: &Path) -> Result<Self, AzureError> {
        let fmt = |path: &Path, line, what: String| AzureError::Format {
            path: path.to_owned(),
            line,
            what,
        };
        let mem_path = dir.join(MEMORY);
        let mut app_mem: HashMap<String, u64> = HashMap::new();
        for (n, l) in lines(&mem_path)?.skip(1) {
            let f: Vec<&str> = l.split(',').collect();
            let mb: f64 = f.get(4).and_then(|v| v.parse().ok()).ok_or_else(|| {
                fmt(
                    &mem_path,
                    n,
                    "column 5 (AverageAllocatedMb) is not a number".into(),
                )
            })?;
            app_mem.insert(f[2].to_owned(), (mb.ceil() as u64).max(1));
        }
        let dur_path = dir.join(DURATIONS);
        let mut durations: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        const PCTS: [f64; 7] = [0.0, 1.0, 25.0, 50.0, 75.0, 99.0, 100.0];
        for (n, l) in lines(&dur_path)?.skip(1) {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() < 14 {
                return Err(fmt(
                    &dur_path,
                    n,
                    format!("{} columns, expected 14", f.len()),
                ));
            }
            let mut pts = Vec::with_capacity(7);
            for (i, q) in PCTS.iter().enumerate() {
                let v: f64 = f[7 + i]
                    .parse()
                    .map_err(|_| fmt(&dur_path, n, format!("column {} is not a number", 8 + i)))?;
                pts.push((*q, v));
            }
            durations.insert(f[2].to_owned(), pts);
        }
        let inv_path = dir.join(INVOCATIONS);
        let mut functions = Vec::new();
        let mut minutes = 0;
        for (n, l) in lines(&inv_path)?.skip(1) {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() < 5 {
                return Err(fmt(&inv_path, n, "no per-minute columns".into()));
            }
            let per_minute = f[4..]
                .iter()
                .map(|v| v.parse::<u32>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    fmt(
                        &inv_path,
                        n,
                        "a per-minute count is not a whole number".into(),
                    )
                })?;
            minutes = minutes.max(per_minute.len());
            functions.push(AzureFunction {
                per_minute,
                duration_pcts: durations
                    .get(f[2])
                    .cloned()
                    .unwrap_or_else(|| vec![(0.0, 1.0), (100.0, 1000.0)]),
                mem_mib: app_mem
                    .get(f[1])
                    .copied()
                    .unwrap_or(DEFAULT_FUNCTION_MEM_MIB),
            });
        }
        if functions.is_empty() || minutes == 0 {
            return Err(fmt(
                &inv_path,
                1,
                "no functions in the invocation file".into(),
            ));
        }
        Ok(Self { functions, minutes })
    }

    /// Invocations per window (one copy of the sample).
    pub fn invocations(&self) -> u64 {
        self.functions
            .iter()
            .flat_map(|f| &f.per_minute)
            .map(|&c| u64::from(c))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_the_percentiles() {
        let f = AzureFunction {
            per_minute: vec![],
            duration_pcts: vec![(0.0, 10.0), (50.0, 20.0), (100.0, 30.0)],
            mem_mib: 1,
        };
        let mut rng = Rng::new(1);
        let draws: Vec<u64> = (0..10_000)
            .map(|_| f.sample_duration_ms(&mut rng))
            .collect();
        assert!(draws.iter().all(|&d| (10..=30).contains(&d)));
        let below_20 = draws.iter().filter(|&&d| d < 20).count();
        assert!((4_500..5_500).contains(&below_20), "{below_20}");
    }
}
