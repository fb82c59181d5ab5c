//! What a run measures: time integrals of cores and memory by holder, a decimated time series,
//! and a latency histogram for placement decisions.

use serde::Serialize;

/// The instantaneous cluster state the integrals and the time series are made of.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub batch_cores: u64,
    pub fn_cores: u64,
    pub batch_mem_mib: u64,
    pub fn_mem_mib: u64,
    pub alloc_nodes: u64,
    /// Cores and memory of the nodes that hold at least one job.
    pub alloc_cores: u64,
    pub alloc_mem_mib: u64,
}

/// One row of `timeseries.csv`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub time_h: f64,
    pub batch_cores: u64,
    pub function_cores: u64,
    pub idle_cores: u64,
    pub batch_mem_gib: f64,
    pub function_mem_gib: f64,
    pub idle_mem_gib: f64,
    pub allocated_nodes: u64,
    pub queued_jobs: u64,
    pub queued_functions: u64,
}

/// Integrals over the measured window `[start, end)`, in unit x milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Integrals {
    pub batch_cores: f64,
    pub fn_cores: f64,
    pub batch_mem: f64,
    pub fn_mem: f64,
    pub alloc_nodes: f64,
    pub alloc_cores: f64,
    pub alloc_mem: f64,
}

/// Accumulates [`Integrals`] and [`Sample`]s as simulated time advances.
#[derive(Debug)]
pub struct Recorder {
    pub start_ms: u64,
    pub end_ms: u64,
    last_ms: u64,
    pub integrals: Integrals,
    next_sample_ms: u64,
    interval_ms: u64,
    pub samples: Vec<Sample>,
}

impl Recorder {
    pub fn new(start_ms: u64, end_ms: u64, points: usize) -> Self {
        let interval_ms = ((end_ms - start_ms) / points.max(1) as u64).max(1);
        Self {
            start_ms,
            end_ms,
            last_ms: start_ms,
            integrals: Integrals::default(),
            next_sample_ms: start_ms,
            interval_ms,
            samples: Vec::new(),
        }
    }

    /// Moves time to `now` with `g` having held since the last call.
    #[inline]
    pub fn advance(&mut self, now: u64, g: &Gauges, sample: impl Fn(u64, &Gauges) -> Sample) {
        let to = now.min(self.end_ms);
        if to > self.last_ms {
            let dt = (to - self.last_ms) as f64;
            let i = &mut self.integrals;
            i.batch_cores += g.batch_cores as f64 * dt;
            i.fn_cores += g.fn_cores as f64 * dt;
            i.batch_mem += g.batch_mem_mib as f64 * dt;
            i.fn_mem += g.fn_mem_mib as f64 * dt;
            i.alloc_nodes += g.alloc_nodes as f64 * dt;
            i.alloc_cores += g.alloc_cores as f64 * dt;
            i.alloc_mem += g.alloc_mem_mib as f64 * dt;
            self.last_ms = to;
        }
        while self.next_sample_ms <= to && self.next_sample_ms < self.end_ms {
            self.samples.push(sample(self.next_sample_ms, g));
            self.next_sample_ms += self.interval_ms;
        }
    }
}

/// Placement latencies in 10 ns buckets up to 1 ms, exact beyond.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    buckets: Vec<u32>,
    overflow: Vec<u64>,
    count: u64,
}

const BUCKET_NS: u64 = 10;
const BUCKETS: usize = 100_000;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            overflow: Vec::new(),
            count: 0,
        }
    }
}

impl LatencyHistogram {
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.count += 1;
        match self.buckets.get_mut((ns / BUCKET_NS) as usize) {
            Some(b) => *b += 1,
            None => self.overflow.push(ns),
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile in microseconds (0 when empty).
    pub fn quantile_us(&mut self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((self.count as f64 * q).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (i, &b) in self.buckets.iter().enumerate() {
            seen += u64::from(b);
            if seen >= rank {
                return (i as u64 * BUCKET_NS + BUCKET_NS / 2) as f64 / 1000.0;
            }
        }
        self.overflow.sort_unstable();
        let idx = (rank - seen - 1) as usize;
        self.overflow[idx.min(self.overflow.len() - 1)] as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrals_clip_to_the_window_and_samples_are_periodic() {
        let mut r = Recorder::new(100, 200, 10);
        let g = Gauges {
            batch_cores: 2,
            ..Gauges::default()
        };
        let s = |t: u64, g: &Gauges| Sample {
            time_h: t as f64,
            batch_cores: g.batch_cores,
            function_cores: 0,
            idle_cores: 0,
            batch_mem_gib: 0.0,
            function_mem_gib: 0.0,
            idle_mem_gib: 0.0,
            allocated_nodes: 0,
            queued_jobs: 0,
            queued_functions: 0,
        };
        r.advance(50, &g, s);
        assert_eq!(r.integrals.batch_cores, 0.0, "before the window");
        r.advance(150, &g, s);
        assert_eq!(r.integrals.batch_cores, 100.0);
        r.advance(500, &g, s);
        assert_eq!(
            r.integrals.batch_cores, 200.0,
            "after the window is not counted"
        );
        assert_eq!(r.samples.len(), 10);
        assert_eq!(r.samples[1].time_h, 110.0);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = LatencyHistogram::default();
        for ns in 1..=1000u64 {
            h.record(ns * 100);
        }
        h.record(5_000_000);
        assert_eq!(h.count(), 1001);
        assert!(
            (h.quantile_us(0.5) - 50.1).abs() < 0.01,
            "{}",
            h.quantile_us(0.5)
        );
        assert!((h.quantile_us(0.99) - 99.1).abs() < 0.01);
        assert_eq!(h.quantile_us(1.0), 5000.0);
    }
}
