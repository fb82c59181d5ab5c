//! The ledger task over a store whose saves block until released: a plugin message is answered
//! while a save hangs, a lease's reservation is not, and changes made during a save are
//! coalesced into the next one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use harvest_core::CpuSet;
use harvest_core::step::{PluginMessage, StepAllocation, StepId};

use super::*;
use crate::discover::{FakeGpus, FakeMemory, FakeTopology, discover};
use crate::ledger::Reserve;
use crate::state::{StateError, Store};

/// Saves wait until `open` (a disk that stalls); each save is counted and kept.
#[derive(Debug, Default)]
struct GatedStore {
    open: AtomicBool,
    saves: AtomicU32,
    last: std::sync::Mutex<Option<Ledger>>,
}

impl Store for GatedStore {
    fn path(&self) -> &std::path::Path {
        std::path::Path::new("gated")
    }
    fn load(&self) -> Result<Option<Ledger>, StateError> {
        Ok(None)
    }
    fn save(&self, l: &Ledger) -> Result<(), StateError> {
        while !self.open.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.saves.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap() = Some(l.clone());
        Ok(())
    }
    fn quarantine(&self) -> Result<std::path::PathBuf, StateError> {
        unreachable!("nothing to quarantine")
    }
}

/// Opens the gate when dropped, so that a failing test does not leave a blocking thread (and
/// the runtime's shutdown) waiting for ever.
struct Opener(Arc<GatedStore>);

impl Drop for Opener {
    fn drop(&mut self) {
        self.0.open.store(true, Ordering::SeqCst);
    }
}

fn agent() -> NodeAgent {
    let hw = discover(
        &FakeTopology::uniform(1, 4, 1),
        &FakeMemory(8000),
        &FakeGpus::none(),
    )
    .unwrap();
    let reserve = Reserve {
        cores: 0,
        memory_mib: 0,
    };
    NodeAgent::new(
        "n1",
        hw,
        reserve,
        Ledger::new("n1"),
        Duration::from_secs(60),
    )
}

fn start(job: u32, cpus: &str) -> PluginMessage {
    PluginMessage::StepStart(StepAllocation {
        job_id: job,
        step_id: StepId::BATCH,
        uid: 1000,
        node: "n1".into(),
        cpus: CpuSet::parse_list(cpus).unwrap(),
        memory_mib: Some(100),
        gpus: vec![],
        harvest: true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_messages_are_answered_while_a_save_hangs_and_reservations_wait_for_theirs() {
    let store = Arc::new(GatedStore::default());
    let _opener = Opener(store.clone());
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let ledger = spawn(
        agent(),
        store.clone(),
        ReclaimPolicy::default(),
        &tracker,
        cancel.clone(),
    );
    // The first change starts a save that hangs; the next ones are answered regardless.
    for job in 1..=20 {
        let (reply, _) = tokio::time::timeout(
            Duration::from_secs(5),
            ledger.plugin(start(job, "0"), SystemTime::now()),
        )
        .await
        .expect("answered while the disk stalls")
        .unwrap();
        assert!(reply.ok);
    }
    assert_eq!(ledger.snapshot().ledger.jobs.len(), 20);
    assert_eq!(store.saves.load(Ordering::SeqCst), 0);
    // A reservation is not answered until its save went through.
    let req = crate::lease::LeaseRequest {
        id: "L1".into(),
        uid: 1000,
        gid: 1000,
        cores: 1,
        memory_mib: 100,
        gpus: 0,
        expires_unix_ms: 0,
        recovery: Default::default(),
        memory: None,
    };
    let reserve = tokio::spawn({
        let ledger = ledger.clone();
        async move { ledger.reserve(req, SystemTime::now()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!reserve.is_finished(), "answered before its save");
    store.open.store(true, Ordering::SeqCst);
    let record = tokio::time::timeout(Duration::from_secs(5), reserve)
        .await
        .expect("the reservation is answered once its save went through")
        .unwrap()
        .unwrap();
    assert!(record.cpus.is_disjoint(&CpuSet::parse_list("0").unwrap()));
    // Twenty-one changes, saved in a few coalesced writes; the last one holds them all.
    let saves = store.saves.load(Ordering::SeqCst);
    assert!((1..=3).contains(&saves), "{saves} saves");
    let last = store.last.lock().unwrap().clone().unwrap();
    assert_eq!(last.jobs.len(), 20);
    assert!(last.leases.contains_key("L1"));
    cancel.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .expect("the ledger task and its saver stop");
}

#[tokio::test]
async fn a_stopped_ledger_task_refuses_changes_with_a_clear_error() {
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let store = Arc::new(GatedStore::default());
    store.open.store(true, Ordering::SeqCst);
    let ledger = spawn(
        agent(),
        store,
        ReclaimPolicy::default(),
        &tracker,
        cancel.clone(),
    );
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    let err = ledger
        .plugin(start(1, "0"), SystemTime::now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shutting down"), "{err}");
}
