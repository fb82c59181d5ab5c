//! How long the plugin waits for harvestd: `StepStart` and `StepEnd` round trips over the real
//! Unix socket (decode, ledger update in the ledger task, reply; the fsync'd save follows off the
//! path), against a baseline from the same run: a bare echo server speaking the same one-line
//! framing without any agent work. A second agent runs under faults: every save takes 500 ms
//! and `scontrol` hangs (the reconcile loop is stuck asking it about a job).
//!
//! `cargo bench -p harvest-agent --bench step_start` prints all three and their ratios. The
//! plugin's default deadline is 100 ms; the target under faults is p99 <= 10 ms.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harvest_agent::cgroup::V1;
use harvest_agent::config::Config;
use harvest_agent::discover::{FakeGpus, FakeMemory, FakeTopology, discover};
use harvest_agent::ledger::Ledger;
use harvest_agent::query::plugin_socket;
use harvest_agent::scontrol::FakeJobDetails;
use harvest_agent::scontrol::{JobDetails, ScontrolError, SlurmAlloc};
use harvest_agent::server::serve;
use harvest_agent::sources::Sources;
use harvest_agent::state::{LedgerStore, StateError, Store};
use harvest_core::step::{PluginMessage, StepAllocation, StepId, encode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const ROUNDS: u32 = 2000;

fn round_trip(path: &Path, msg: &[u8]) -> Duration {
    let t0 = Instant::now();
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(msg).unwrap();
    let mut line = Vec::new();
    BufReader::new(s).read_until(b'\n', &mut line).unwrap();
    assert!(
        line.starts_with(b"{\"v\":1,\"ok\":true"),
        "{}",
        String::from_utf8_lossy(&line)
    );
    t0.elapsed()
}

/// A disk on which every save takes 500 ms.
#[derive(Debug)]
struct SlowDisk(LedgerStore);

impl Store for SlowDisk {
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn load(&self) -> Result<Option<Ledger>, StateError> {
        self.0.load()
    }
    fn save(&self, l: &Ledger) -> Result<(), StateError> {
        std::thread::sleep(Duration::from_millis(500));
        self.0.save(l)
    }
    fn quarantine(&self) -> Result<PathBuf, StateError> {
        self.0.quarantine()
    }
}

/// An scontrol that never answers (for the length of the benchmark).
#[derive(Debug)]
struct HangingScontrol;

impl JobDetails for HangingScontrol {
    fn job_on_node(&self, _job: u32, _node: &str) -> Result<Option<SlurmAlloc>, ScontrolError> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(None)
    }
}

fn summary(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    (d[d.len() / 2], d[d.len() * 99 / 100])
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Baseline: the same framing, answered without any work.
    let echo_path = dir.path().join("echo.sock");
    let listener = rt
        .block_on(async { tokio::net::UnixListener::bind(&echo_path) })
        .unwrap();
    rt.spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut line = Vec::new();
                let (r, mut w) = s.split();
                tokio::io::BufReader::new(r)
                    .read_until(b'\n', &mut line)
                    .await
                    .unwrap();
                w.write_all(b"{\"v\":1,\"ok\":true}\n").await.unwrap();
            });
        }
    });

    let agent_path = start_agent(&rt, &dir.path().join("plain"), false);
    let faulty_path = start_agent(&rt, &dir.path().join("faulty"), true);

    let echo_msg = encode(&PluginMessage::JobEnd {
        job_id: 1,
        node: "n1".into(),
    })
    .unwrap();
    let mut base = Vec::new();
    let mut agent = Vec::new();
    let mut faulty = Vec::new();
    for i in 0..ROUNDS {
        base.push(round_trip(&echo_path, &echo_msg));
        // Alternate start and end so every message changes (and saves) the ledger.
        let msg = if i % 2 == 0 {
            PluginMessage::StepStart(StepAllocation {
                job_id: 1000 + i,
                step_id: StepId::BATCH,
                uid: 1000,
                node: "n1".into(),
                cpus: [i % 128].into_iter().collect(),
                memory_mib: Some(4096),
                gpus: vec![i % 8],
                harvest: true,
            })
        } else {
            PluginMessage::StepEnd {
                job_id: 1000 + i - 1,
                step_id: StepId::BATCH,
                node: "n1".into(),
            }
        };
        agent.push(round_trip(&agent_path, &encode(&msg).unwrap()));
        faulty.push(round_trip(&faulty_path, &encode(&msg).unwrap()));
    }
    let (b50, b99) = summary(base);
    let (a50, a99) = summary(agent);
    let (f50, f99) = summary(faulty);
    println!("plugin round trip over {ROUNDS} messages each (same run, same socket framing):");
    println!("  baseline echo server                        p50 {b50:>10.1?}  p99 {b99:>10.1?}");
    println!("  harvestd (fsync'd saves off the path)       p50 {a50:>10.1?}  p99 {a99:>10.1?}");
    println!("  harvestd, 500 ms saves + hanging scontrol   p50 {f50:>10.1?}  p99 {f99:>10.1?}");
    for (name, p50, p99) in [("harvestd", a50, a99), ("under faults", f50, f99)] {
        println!(
            "  {name}: ratio p50 {:.1}x, p99 {:.1}x; p99 is {:.1}% of the plugin's 100 ms deadline",
            p50.as_secs_f64() / b50.as_secs_f64(),
            p99.as_secs_f64() / b99.as_secs_f64(),
            p99.as_secs_f64() / 0.1 * 100.0
        );
    }
    println!(
        "  target under faults: p99 <= 10 ms: {}",
        if f99 <= Duration::from_millis(10) {
            "met"
        } else {
            "NOT met"
        }
    );
    std::process::exit(0);
}

/// Starts an agent in `dir` over a fake v1 cgroup tree; with `faults`, its saves take 500 ms
/// and its scontrol hangs on the one job the tree shows. Returns its plugin socket.
fn start_agent(rt: &tokio::runtime::Runtime, dir: &Path, faults: bool) -> PathBuf {
    let mut controllers = BTreeMap::new();
    for c in ["cpuset", "memory"] {
        std::fs::create_dir_all(dir.join(c)).unwrap();
        controllers.insert(c.to_owned(), dir.join(c));
    }
    if faults {
        // A job the reconcile loop finds by itself and asks (the hanging) scontrol about.
        let job = dir.join("cpuset/slurm_n1/uid_0/job_99");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join("cpuset.cpus"), "127").unwrap();
    }
    let details: std::sync::Arc<dyn JobDetails> = if faults {
        std::sync::Arc::new(HangingScontrol)
    } else {
        std::sync::Arc::new(FakeJobDetails::default())
    };
    let sources = Sources {
        cgroups: std::sync::Arc::new(V1::new(controllers, PathBuf::from("bench")).unwrap()),
        details,
        // No scheduler in the benchmark: no executor is ever started.
        processes: std::sync::Arc::new(harvest_agent::leases::process::OsProcesses {
            helper: PathBuf::from("harvestd"),
            proc_root: PathBuf::from("/proc"),
        }),
    };
    let hw = discover(
        &FakeTopology::uniform(2, 32, 2),
        &FakeMemory(512 * 1024),
        &FakeGpus::count(8),
    )
    .unwrap();
    let config = Config {
        node: "n1".into(),
        run_dir: dir.join("run"),
        state_dir: dir.join("state"),
        ..Config::default()
    };
    let run_dir = config.run_dir.clone();
    let store = LedgerStore::open(&config.state_dir, "n1").unwrap();
    let store: std::sync::Arc<dyn Store> = if faults {
        std::sync::Arc::new(SlowDisk(store))
    } else {
        std::sync::Arc::new(store)
    };
    rt.spawn(serve(config, hw, sources, store, std::future::pending()));
    let path = plugin_socket(&run_dir, "n1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "harvestd did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    path
}
