//! Batch jobs that start and end at random: one thread keeps up to `max_jobs` jobs of 1 or 2
//! tasks, each sleeping 2 to 10 s, submitted at random gaps of 0.5 to 3 s (seeded), and cancels
//! whatever is left when stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::cluster::Cluster;
use crate::rng::Rng;

/// The running churn.
#[derive(Debug)]
pub struct Churn {
    stop: Arc<AtomicBool>,
    submitted: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Vec<u32>>,
}

/// Jobs of this run still in the queue.
fn live(cluster: &Cluster, ids: &[u32]) -> Vec<u32> {
    let out = cluster
        .command("squeue")
        .args(["-h", "-o", "%i"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let queued: Vec<u32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    ids.iter().copied().filter(|i| queued.contains(i)).collect()
}

impl Churn {
    pub fn start(cluster: Cluster, max_jobs: usize, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let submitted = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), submitted.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut ids: Vec<u32> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                ids = live(&cluster, &ids);
                if ids.len() < max_jobs {
                    let tasks = 1 + (rng.unit() * 2.0) as u32;
                    let secs = 2 + (rng.unit() * 8.0) as u32;
                    let out = cluster
                        .command("sbatch")
                        .args(["--parsable", "--output=/dev/null", "-N", "1"])
                        .args(["-n", &tasks.to_string(), "--mem", "64M"])
                        .args(["--wrap", &format!("sleep {secs}")])
                        .output();
                    if let Ok(o) = out
                        && o.status.success()
                        && let Some(id) = String::from_utf8_lossy(&o.stdout)
                            .trim()
                            .split(';')
                            .next()
                            .and_then(|i| i.parse().ok())
                    {
                        ids.push(id);
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let gap = Duration::from_secs_f64(0.5 + rng.unit() * 2.5);
                let until = std::time::Instant::now() + gap;
                while std::time::Instant::now() < until && !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            for id in &ids {
                cluster.scancel(*id);
            }
            ids
        });
        Self {
            stop,
            submitted,
            thread,
        }
    }

    /// Stops submitting, cancels what is left; returns how many jobs were submitted.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.submitted.load(Ordering::Relaxed)
    }
}
