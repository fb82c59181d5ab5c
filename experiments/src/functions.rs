//! Function workloads: the `--functions` spec and the arrival stream it describes.
//!
//! A spec is one or more streams joined by `+`:
//! - `azure[:scale=K]`: the Azure Functions sample, `K` independent copies (default 1), tiled over
//!   the simulated window (the sample covers 8 hours);
//! - `poisson:rate=R,cores=C,mem=M,duration=D[,gpus=G][,clients=N]`: Poisson arrivals at `R` per
//!   second of leases of `C` cores and `M` memory (Slurm notation), exponentially distributed
//!   durations with mean `D` (`30s`, `10m`), from `N` clients (default 100);
//! - `none`: no functions (batch only).
//!
//! Arrivals come out in time order, generated lazily, so a window of any length costs memory
//! proportional to one minute of arrivals.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;

use harvest_core::{parse_duration, parse_memory_mib};
use harvest_policies::Resources;

use crate::azure::{AzureError, AzureTrace};
use crate::rng::Rng;

/// Clients per Poisson stream unless configured.
pub const DEFAULT_CLIENTS: u32 = 100;

/// A `--functions` spec that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "function stream {0:?}: unknown kind; use azure[:scale=K], poisson:rate=..,cores=..,mem=..,duration=.. or none"
    )]
    Kind(String),
    #[error("function stream {stream:?}: {key}={value:?} is invalid: {why}")]
    Value {
        stream: String,
        key: String,
        value: String,
        why: String,
    },
    #[error("function stream {stream:?}: unknown key {key:?}; {allowed}")]
    Key {
        stream: String,
        key: String,
        allowed: &'static str,
    },
    #[error("function stream {stream:?}: missing {key}=")]
    Missing { stream: String, key: &'static str },
}

/// One stream of a spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Stream {
    Azure {
        scale: u32,
    },
    Poisson {
        rate_per_s: f64,
        res: Resources,
        mean_duration_ms: u64,
        clients: u32,
    },
}

/// A parsed `--functions` spec.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FunctionSpec {
    pub streams: Vec<Stream>,
}

impl FunctionSpec {
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let mut streams = Vec::new();
        for raw in text.split('+').map(str::trim).filter(|s| !s.is_empty()) {
            let (kind, args) = raw.split_once(':').unwrap_or((raw, ""));
            let pairs = args
                .split(',')
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.split_once('=').ok_or_else(|| SpecError::Value {
                        stream: raw.to_owned(),
                        key: a.to_owned(),
                        value: String::new(),
                        why: "write key=value".to_owned(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let bad = |key: &str, value: &str, why: String| SpecError::Value {
                stream: raw.to_owned(),
                key: key.to_owned(),
                value: value.to_owned(),
                why,
            };
            match kind {
                "none" => {}
                "azure" => {
                    let mut scale = 1;
                    for (k, v) in pairs {
                        match k {
                            "scale" => {
                                scale = v.parse().ok().filter(|&s| s > 0).ok_or_else(|| {
                                    bad(k, v, "a whole number of copies, at least 1".into())
                                })?
                            }
                            _ => {
                                return Err(SpecError::Key {
                                    stream: raw.to_owned(),
                                    key: k.to_owned(),
                                    allowed: "azure takes scale=",
                                });
                            }
                        }
                    }
                    streams.push(Stream::Azure { scale });
                }
                "poisson" => {
                    let (mut rate, mut cores, mut mem, mut dur, mut gpus, mut clients) =
                        (None, None, None, None, 0, DEFAULT_CLIENTS);
                    for (k, v) in pairs {
                        match k {
                            "rate" => {
                                rate = Some(
                                    v.trim_end_matches("/s")
                                        .parse::<f64>()
                                        .ok()
                                        .filter(|r| *r > 0.0 && r.is_finite())
                                        .ok_or_else(|| {
                                            bad(k, v, "arrivals per second, above 0".into())
                                        })?,
                                )
                            }
                            "cores" => {
                                cores = Some(
                                    v.parse().map_err(|_| bad(k, v, "a whole number".into()))?,
                                )
                            }
                            "gpus" => {
                                gpus = v.parse().map_err(|_| bad(k, v, "a whole number".into()))?
                            }
                            "clients" => {
                                clients =
                                    v.parse().ok().filter(|&c| c > 0).ok_or_else(|| {
                                        bad(k, v, "a whole number, at least 1".into())
                                    })?
                            }
                            "mem" => {
                                mem = Some(
                                    parse_memory_mib(v).map_err(|e| bad(k, v, e.to_string()))?,
                                )
                            }
                            "duration" => {
                                let d = parse_duration(v).map_err(|e| bad(k, v, e.to_string()))?;
                                dur = Some((d.as_millis() as u64).max(1));
                            }
                            _ => {
                                return Err(SpecError::Key {
                                    stream: raw.to_owned(),
                                    key: k.to_owned(),
                                    allowed: "poisson takes rate=, cores=, mem=, duration=, gpus=, clients=",
                                });
                            }
                        }
                    }
                    let missing = |key| SpecError::Missing {
                        stream: raw.to_owned(),
                        key,
                    };
                    streams.push(Stream::Poisson {
                        rate_per_s: rate.ok_or_else(|| missing("rate"))?,
                        res: Resources::new(
                            cores.ok_or_else(|| missing("cores"))?,
                            mem.ok_or_else(|| missing("mem"))?,
                            gpus,
                        ),
                        mean_duration_ms: dur.ok_or_else(|| missing("duration"))?,
                        clients,
                    });
                }
                _ => return Err(SpecError::Kind(raw.to_owned())),
            }
        }
        Ok(Self { streams })
    }

    pub fn needs_azure(&self) -> bool {
        self.streams
            .iter()
            .any(|s| matches!(s, Stream::Azure { .. }))
    }
}

/// One function invocation (a lease) arriving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub time_ms: u64,
    pub client: u64,
    pub res: Resources,
    pub duration_ms: u64,
}

/// Merges the spec's streams into one time-ordered sequence of arrivals in `[start, end)`.
#[derive(Debug)]
pub struct Arrivals {
    azure: Option<(AzureTrace, u32)>,
    /// The current minute's Azure arrivals, sorted descending (popped from the back).
    minute_buf: Vec<Arrival>,
    next_minute: u64,
    poisson: Vec<(Stream, Rng, u64)>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    start_ms: u64,
    end_ms: u64,
    rng: Rng,
}

impl Arrivals {
    /// Loads what the spec needs (the Azure trace from `azure_dir`).
    pub fn new(
        spec: &FunctionSpec,
        azure_dir: &Path,
        start_ms: u64,
        end_ms: u64,
        seed: u64,
    ) -> Result<Self, AzureError> {
        let rng = Rng::new(seed).fork(0xa2);
        let mut azure = None;
        let mut poisson = Vec::new();
        let mut heap = BinaryHeap::new();
        let mut azure_scale = 0;
        for (i, s) in spec.streams.iter().enumerate() {
            match s {
                Stream::Azure { scale } => azure_scale += scale,
                Stream::Poisson { rate_per_s, .. } => {
                    let mut r = rng.fork(i as u64 + 1);
                    let first = start_ms + r.exp(1000.0 / rate_per_s) as u64;
                    heap.push(Reverse((first, poisson.len())));
                    poisson.push((s.clone(), r, i as u64));
                }
            }
        }
        if azure_scale > 0 {
            azure = Some((AzureTrace::load(azure_dir)?, azure_scale));
        }
        Ok(Self {
            azure,
            minute_buf: Vec::new(),
            next_minute: start_ms / 60_000,
            poisson,
            heap,
            start_ms,
            end_ms,
            rng,
        })
    }

    /// Fills `minute_buf` with the next minute that has Azure arrivals.
    fn refill_azure(&mut self) {
        let Some((trace, scale)) = &self.azure else {
            return;
        };
        while self.minute_buf.is_empty() && self.next_minute * 60_000 < self.end_ms {
            let m = self.next_minute;
            self.next_minute += 1;
            let slot = (m as usize) % trace.minutes;
            for (fi, f) in trace.functions.iter().enumerate() {
                let count = f.per_minute.get(slot).copied().unwrap_or(0);
                for copy in 0..*scale {
                    for _ in 0..count {
                        let t = m * 60_000 + self.rng.below(60_000);
                        if t < self.start_ms || t >= self.end_ms {
                            continue;
                        }
                        self.minute_buf.push(Arrival {
                            time_ms: t,
                            client: (u64::from(copy) << 32) | fi as u64,
                            res: Resources::new(1, f.mem_mib, 0),
                            duration_ms: f.sample_duration_ms(&mut self.rng),
                        });
                    }
                }
            }
            self.minute_buf
                .sort_unstable_by_key(|a| std::cmp::Reverse(a.time_ms));
        }
    }

    /// The next Poisson arrival, if it comes before `limit`.
    fn pop_poisson_before(&mut self, limit: u64) -> Option<Arrival> {
        let &Reverse((t, i)) = self.heap.peek()?;
        if t >= limit || t >= self.end_ms {
            return None;
        }
        self.heap.pop();
        let (stream, rng, id) = &mut self.poisson[i];
        let Stream::Poisson {
            rate_per_s,
            res,
            mean_duration_ms,
            clients,
        } = stream
        else {
            unreachable!("only Poisson streams are in the heap")
        };
        let arrival = Arrival {
            time_ms: t,
            client: (*id << 48) | rng.below(u64::from(*clients)),
            res: *res,
            duration_ms: (rng.exp(*mean_duration_ms as f64) as u64).max(1),
        };
        let next = t + rng.exp(1000.0 / *rate_per_s) as u64;
        self.heap.push(Reverse((next, i)));
        Some(arrival)
    }
}

impl Iterator for Arrivals {
    type Item = Arrival;

    fn next(&mut self) -> Option<Arrival> {
        self.refill_azure();
        let azure_next = self.minute_buf.last().map_or(u64::MAX, |a| a.time_ms);
        if let Some(p) = self.pop_poisson_before(azure_next) {
            return Some(p);
        }
        self.minute_buf.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_streams_and_names_bad_input() {
        let s = FunctionSpec::parse("azure:scale=3+poisson:rate=2.5,cores=4,mem=2G,duration=30s")
            .unwrap();
        assert_eq!(s.streams[0], Stream::Azure { scale: 3 });
        assert_eq!(
            s.streams[1],
            Stream::Poisson {
                rate_per_s: 2.5,
                res: Resources::new(4, 2048, 0),
                mean_duration_ms: 30_000,
                clients: DEFAULT_CLIENTS,
            }
        );
        assert!(FunctionSpec::parse("none").unwrap().streams.is_empty());
        let e = FunctionSpec::parse("lambda").unwrap_err();
        assert!(matches!(e, SpecError::Kind(_)));
        let e = FunctionSpec::parse("poisson:rate=1,cores=1,mem=1G").unwrap_err();
        assert!(e.to_string().contains("missing duration="), "{e}");
        let e = FunctionSpec::parse("poisson:rate=-1,cores=1,mem=1G,duration=1s").unwrap_err();
        assert!(e.to_string().contains("rate=\"-1\""), "{e}");
        let e = FunctionSpec::parse("azure:size=2").unwrap_err();
        assert!(e.to_string().contains("unknown key \"size\""), "{e}");
    }

    #[test]
    fn poisson_arrivals_are_ordered_in_window_and_at_the_rate() {
        let spec = FunctionSpec::parse(
            "poisson:rate=10,cores=1,mem=1G,duration=2s+poisson:rate=5,cores=2,mem=1G,duration=1s",
        )
        .unwrap();
        let a: Vec<Arrival> =
            Arrivals::new(&spec, Path::new("/nonexistent"), 1_000_000, 1_100_000, 1)
                .unwrap()
                .collect();
        assert!(a.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
        assert!(
            a.iter()
                .all(|x| (1_000_000..1_100_000).contains(&x.time_ms))
        );
        // 15/s over 100 s: 1,500 expected.
        assert!((1_300..1_700).contains(&a.len()), "{}", a.len());
        let big = a.iter().filter(|x| x.res.cores == 2).count();
        assert!((400..600).contains(&big), "{big}");
    }
}
