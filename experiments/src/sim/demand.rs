//! Function demand: lease requests from the Azure Functions trace scaled by a stated factor,
//! and optional Poisson streams.
//!
//! **Azure** (`azure:scale=K`): each minute of the 8-hour, 500-function sample (tiled over the
//! window) gives per function `n` invocations of mean duration `d` (from its duration
//! percentiles). Scaled by `K` (a real factor: `K = 1` is the sample as recorded) the minute
//! carries `w = K n d` core-milliseconds of work, served by 1-core instances of the function's
//! memory: `floor(w / 60 s)` instances for the whole minute and one for the rest, each a lease
//! starting at a uniformly drawn moment of the minute. A lease carries its share of the
//! minute's invocations. So the events grow with the demand in cores, not with the invocation
//! count, and `K` in the thousands stays cheap.
//!
//! **Poisson** (`poisson:rate=R,cores=C,mem=M,duration=D`, as in [`crate::functions`]): one
//! invocation per lease, exponential durations of mean `D`.

use harvest_policies::Resources;

use crate::azure::{AzureError, AzureTrace};
use crate::functions::{FunctionSpec, SpecError, Stream};
use crate::rng::Rng;

/// One lease request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FnRequest {
    pub time_ms: u64,
    pub res: Resources,
    pub duration_ms: u64,
    /// Invocations it serves (fractional for the fluid Azure model).
    pub invocations: f64,
    /// Index of the stream in the spec.
    pub stream: u8,
    pub client: u32,
}

impl FnRequest {
    pub fn work_core_ms(&self) -> f64 {
        f64::from(self.res.cores) * self.duration_ms as f64
    }
}

/// A parsed demand spec: streams joined by `+`.
#[derive(Debug, Clone, PartialEq)]
pub enum DemandStream {
    Azure { scale: f64 },
    Poisson(Stream),
}

/// `azure[:scale=K]` (K a positive real), `poisson:...`, or `none`, joined by `+`.
pub fn parse_demand(text: &str) -> Result<Vec<DemandStream>, SpecError> {
    let mut out = Vec::new();
    for raw in text.split('+').map(str::trim).filter(|s| !s.is_empty()) {
        if raw == "azure" || raw.starts_with("azure:") {
            let mut scale = 1.0;
            for kv in raw
                .trim_start_matches("azure")
                .trim_start_matches(':')
                .split(',')
            {
                if kv.is_empty() {
                    continue;
                }
                match kv.split_once('=') {
                    Some(("scale", v)) => {
                        scale = v
                            .parse::<f64>()
                            .ok()
                            .filter(|s| s.is_finite() && *s > 0.0)
                            .ok_or_else(|| SpecError::Value {
                                stream: raw.into(),
                                key: "scale".into(),
                                value: v.into(),
                                why: "a positive factor on the sample's invocation rate".into(),
                            })?
                    }
                    _ => {
                        return Err(SpecError::Key {
                            stream: raw.into(),
                            key: kv.into(),
                            allowed: "azure takes scale=",
                        });
                    }
                }
            }
            out.push(DemandStream::Azure { scale });
        } else {
            for s in FunctionSpec::parse(raw)?.streams {
                out.push(DemandStream::Poisson(s));
            }
        }
    }
    Ok(out)
}

/// The Azure sample reduced to what the fluid model needs.
#[derive(Debug, Clone)]
pub struct AzureRates {
    /// Per function: invocations per minute, mean duration ms, memory MiB.
    pub functions: Vec<(Vec<u32>, f64, u64)>,
    pub minutes: usize,
}

impl AzureRates {
    pub fn load(dir: &std::path::Path) -> Result<Self, AzureError> {
        let t = AzureTrace::load(dir)?;
        let mut rng = Rng::new(0xa2);
        let functions = t
            .functions
            .iter()
            .map(|f| {
                let mean = (0..256)
                    .map(|_| f.sample_duration_ms(&mut rng) as f64)
                    .sum::<f64>()
                    / 256.0;
                (f.per_minute.clone(), mean, f.mem_mib.max(1))
            })
            .collect();
        Ok(Self {
            functions,
            minutes: t.minutes.max(1),
        })
    }

    /// Core-hours of work per hour of window at scale 1.
    pub fn core_hours_per_hour(&self) -> f64 {
        let work_ms: f64 = self
            .functions
            .iter()
            .map(|(pm, d, _)| pm.iter().map(|&n| f64::from(n)).sum::<f64>() * d)
            .sum();
        work_ms / 3.6e6 / (self.minutes as f64 / 60.0)
    }
}

/// Requests in time order over `[start, end)`, generated a minute at a time.
#[derive(Debug)]
pub struct Demand {
    streams: Vec<DemandStream>,
    azure: Option<AzureRates>,
    node_mem_mib: u64,
    rng: Rng,
    minute_start: u64,
    end: u64,
    buf: Vec<FnRequest>,
}

impl Demand {
    pub fn new(
        streams: Vec<DemandStream>,
        azure: Option<AzureRates>,
        node_mem_mib: u64,
        start: u64,
        end: u64,
        seed: u64,
    ) -> Self {
        Self {
            streams,
            azure,
            node_mem_mib,
            rng: Rng::new(seed).fork(0xde),
            minute_start: start,
            end,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) {
        while self.buf.is_empty() && self.minute_start < self.end {
            let t0 = self.minute_start;
            let t1 = (t0 + 60_000).min(self.end);
            self.minute_start = t1;
            for (si, s) in self.streams.iter().enumerate() {
                match s {
                    DemandStream::Azure { scale } => {
                        let Some(az) = &self.azure else { continue };
                        let idx = (t0 / 60_000) as usize % az.minutes;
                        let span = (t1 - t0) as f64;
                        for (fi, (pm, d, mem)) in az.functions.iter().enumerate() {
                            let n = f64::from(pm.get(idx).copied().unwrap_or(0)) * scale;
                            if n <= 0.0 {
                                continue;
                            }
                            let work = n * d * span / 60_000.0;
                            let full = (work / span).floor();
                            let mut push = |dur: f64, rng: &mut Rng| {
                                self.buf.push(FnRequest {
                                    time_ms: t0 + (rng.unit() * span) as u64,
                                    res: Resources::new(1, (*mem).min(self.node_mem_mib), 0),
                                    duration_ms: (dur as u64).max(1),
                                    invocations: n * dur / work,
                                    stream: si as u8,
                                    client: fi as u32,
                                });
                            };
                            for _ in 0..full as u64 {
                                push(span, &mut self.rng);
                            }
                            let rest = work - full * span;
                            if rest >= 1.0 {
                                push(rest, &mut self.rng);
                            }
                        }
                    }
                    DemandStream::Poisson(Stream::Poisson {
                        rate_per_s,
                        res,
                        mean_duration_ms,
                        clients,
                    }) => {
                        let mut t = t0 as f64;
                        loop {
                            t += self.rng.exp(1000.0 / rate_per_s);
                            if t >= t1 as f64 {
                                break;
                            }
                            let dur = self.rng.exp(*mean_duration_ms as f64).max(1.0) as u64;
                            self.buf.push(FnRequest {
                                time_ms: t as u64,
                                res: *res,
                                duration_ms: dur,
                                invocations: 1.0,
                                stream: si as u8,
                                client: self.rng.below(u64::from(*clients).max(1)) as u32,
                            });
                        }
                    }
                    DemandStream::Poisson(_) => {}
                }
            }
            // Popped from the back: latest first.
            self.buf
                .sort_unstable_by_key(|b| std::cmp::Reverse(b.time_ms));
        }
    }

    pub fn peek_ms(&mut self) -> Option<u64> {
        self.fill();
        self.buf.last().map(|r| r.time_ms)
    }

    pub fn pop(&mut self) -> Option<FnRequest> {
        self.fill();
        self.buf.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_work_is_scaled_exactly() {
        // One function, 6 invocations a minute of 30 s each, scale 2.5: 15 invocations, 450 s of
        // work a minute: 7 one-minute instances and one of 30 s.
        let az = AzureRates {
            functions: vec![(vec![6], 30_000.0, 128)],
            minutes: 1,
        };
        let mut d = Demand::new(
            parse_demand("azure:scale=2.5").unwrap(),
            Some(az),
            1024,
            0,
            60_000,
            1,
        );
        let mut reqs = Vec::new();
        while let Some(r) = d.pop() {
            reqs.push(r);
        }
        assert_eq!(reqs.len(), 8);
        let work: f64 = reqs.iter().map(|r| r.work_core_ms()).sum();
        assert_eq!(work, 450_000.0);
        let inv: f64 = reqs.iter().map(|r| r.invocations).sum();
        assert!((inv - 15.0).abs() < 1e-9);
        assert!(reqs.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    }

    #[test]
    fn bad_scales_are_named() {
        let e = parse_demand("azure:scale=-1").unwrap_err().to_string();
        assert!(e.contains("scale"), "{e}");
        assert!(parse_demand("azure:scale=0.5+none").is_ok());
    }
}
