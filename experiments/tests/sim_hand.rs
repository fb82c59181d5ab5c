//! Tiny traces whose schedules and utilizations are worked out by hand.

use std::path::{Path, PathBuf};

use harvest_experiments::machine::MachineFlags;
use harvest_experiments::sim::{
    AllocationMode, BatchMode, DEFAULT_PRIORITY, Limits, QueueLimit, QueueOrder, SimConfig,
    Summary, run,
};

fn data_dir() -> PathBuf {
    std::env::var_os("HARVEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

fn cfg(trace: &Path, batch: BatchMode, allocation: AllocationMode, window_s: u64) -> SimConfig {
    SimConfig {
        trace: trace.to_owned(),
        data_dir: data_dir(),
        copies: 1,
        copy_shift_s: 0,
        policy: "best-fit".into(),
        demand_text: "none".into(),
        batch,
        allocation,
        backfill_depth: 100,
        queue_order: QueueOrder::Fcfs,
        priority: DEFAULT_PRIORITY,
        limits: Limits::default(),
        straightforward_pass: false,
        start_s: 0,
        warmup_s: 0,
        duration_s: window_s,
        drain_s: 1000,
        max_wait_ms: 0,
        retries: 0,
        feedback: true,
        seed: 1,
        sensitive_fraction: 0.0,
        unknown_mem_fraction: 0.5,
        machine: MachineFlags::default(),
        node_gpus: 0,
        group_size: 16,
        samples: 10,
    }
}

fn simulate(text: &str, batch: BatchMode, allocation: AllocationMode, window_s: u64) -> Summary {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.swf");
    std::fs::write(&trace, text).unwrap();
    run(&cfg(&trace, batch, allocation, window_s), |_| {})
        .unwrap()
        .summary
}

/// 2 nodes x 4 cores. J1: 6 cores for 100 s; J2: 4 cores for 50 s; J3: 2 cores for 50 s; all
/// submitted at 0 with exact time limits.
const EASY: &str = "; MaxNodes: 2\n; MaxProcs: 8\n\
    1 0 0 100 6 -1 -1 6 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    2 0 100 50 4 -1 -1 4 50 -1 1 1 1 -1 1 -1 -1 -1\n\
    3 0 0 50 2 -1 -1 2 50 -1 1 1 1 -1 1 -1 -1 -1\n";

#[test]
fn easy_backfill_on_shared_nodes_matches_the_hand_schedule() {
    // Core-granular: J1 takes 6 cores at 0; J2 (4) cannot start, its reservation is at 100
    // when J1 ends; J3 (2 cores, ends at 50 <= 100) is backfilled at 0. Waits 0, 100, 0.
    // Core-seconds over [0, 200): 6*100 + 2*50 + 4*50 = 900 of 8*200 = 1600.
    let s = simulate(EASY, BatchMode::Easy, AllocationMode::Shared, 200);
    assert_eq!(s.util_cores_batch_only, 900.0 / 1600.0);
    assert!(
        (s.wait_mean_s - 100.0 / 3.0).abs() < 1e-9,
        "{}",
        s.wait_mean_s
    );
    assert_eq!(s.wait_p50_s, 0.0);
    // Bounded slowdowns 1, 3 (150 s for 50 s), 1.
    assert!((s.bounded_slowdown_mean - 5.0 / 3.0).abs() < 1e-9);
    // The trace's own schedule is the same one.
    assert_eq!(s.util_cores_trace, s.util_cores_batch_only);
    assert_eq!(s.start_error_mean_s, Some(0.0));
}

#[test]
fn node_exclusive_allocation_changes_the_schedule_as_by_hand() {
    // Whole nodes: J1 takes both nodes (6 cores on 2 nodes); J2 and J3 (one node each) start
    // at 100. Waits 0, 100, 100; the same 900 core-seconds, 2 idle cores inside J1's nodes.
    let s = simulate(EASY, BatchMode::Easy, AllocationMode::Exclusive, 200);
    assert_eq!(s.util_cores_batch_only, 900.0 / 1600.0);
    assert!(
        (s.wait_mean_s - 200.0 / 3.0).abs() < 1e-9,
        "{}",
        s.wait_mean_s
    );
    // Idle cores on allocated nodes: 1 on each of J1's nodes for 100 s, then 2 on J3's node
    // for 50 s = 300 core-s (after 150 s both nodes are empty: beside jobs, not inside).
    assert!((s.idle_core_hours_inside_jobs - 300.0 / 3600.0).abs() < 1e-9);
}

#[test]
fn a_node_granular_trace_matches_its_replay() {
    // 4 single-core nodes; the trace's own starts (submit + wait) never over-fill them.
    let trace = "; MaxNodes: 4\n; MaxProcs: 4\n\
        1 0 0 100 2 -1 -1 2 100 -1 1 1 1 -1 1 -1 -1 -1\n\
        2 10 0 30 2 -1 -1 2 60 -1 1 1 1 -1 1 -1 -1 -1\n\
        3 20 20 200 3 -1 -1 3 300 -1 1 1 1 -1 1 -1 -1 -1\n\
        4 50 60 40 1 -1 -1 1 50 -1 1 1 1 -1 1 -1 -1 -1\n";
    let s = simulate(trace, BatchMode::Replay, AllocationMode::Auto, 400);
    // Job 3 wants 3 cores at 40 while jobs 1 and 2 hold 4: the trace says it started at 40,
    // which this machine cannot hold, so it waits to 100 (job 1's end); job 4 at 110 fits.
    // So this trace does NOT match its replay; the one below (job 3 at 100) does.
    assert!(s.start_error_mean_s.unwrap() > 0.0);
    let fits = "; MaxNodes: 4\n; MaxProcs: 4\n\
        1 0 0 100 2 -1 -1 2 100 -1 1 1 1 -1 1 -1 -1 -1\n\
        2 10 0 30 2 -1 -1 2 60 -1 1 1 1 -1 1 -1 -1 -1\n\
        3 20 80 200 3 -1 -1 3 300 -1 1 1 1 -1 1 -1 -1 -1\n\
        4 50 60 40 1 -1 -1 1 50 -1 1 1 1 -1 1 -1 -1 -1\n";
    let s = simulate(fits, BatchMode::Replay, AllocationMode::Auto, 400);
    assert_eq!(s.start_error_mean_s, Some(0.0));
    // 2*100 + 2*30 + 3*200 + 1*40 = 900 core-s of 4*400.
    assert_eq!(s.util_cores_batch_only, 900.0 / 1600.0);
    assert_eq!(s.util_cores_batch_only, s.util_cores_trace);
}

#[test]
fn a_window_keeps_the_jobs_queued_at_its_start() {
    // 4 single-core nodes. J1: 4 cores 0-100; J2: submitted at 10, queued until 100, 4 cores
    // for 100 s; J3: submitted at 60, started at 200, 2 cores for 50 s. The window starts at
    // trace time 50 (J1 running, J2 queued) and lasts 200 s: core-s 4*50 + 4*100 + 2*50 = 700
    // of 4*200 = 800. Without J2 (queued at the window's start) it would be 300 of 800. J4,
    // long after, only makes the trace long enough that the window start is not wrapped.
    let text = "; MaxNodes: 4\n; MaxProcs: 4\n\
        1 0 0 100 4 -1 -1 4 100 -1 1 1 1 -1 1 -1 -1 -1\n\
        2 10 90 100 4 -1 -1 4 100 -1 1 1 1 -1 1 -1 -1 -1\n\
        3 60 140 50 2 -1 -1 2 50 -1 1 1 1 -1 1 -1 -1 -1\n\
        4 10000 0 10 1 -1 -1 1 10 -1 1 1 1 -1 1 -1 -1 -1\n";
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.swf");
    std::fs::write(&trace, text).unwrap();
    for batch in [BatchMode::Replay, BatchMode::Easy] {
        let c = SimConfig {
            start_s: 50,
            ..cfg(&trace, batch, AllocationMode::Auto, 200)
        };
        let s = run(&c, |_| {}).unwrap().summary;
        assert_eq!(s.util_cores_trace, 700.0 / 800.0, "{batch:?}");
        // Replay: each job at its trace start. EASY: J2 starts when J1 ends (50 s into the
        // window, as in the trace), J3 (2 cores) when J2 ends: the same schedule.
        assert_eq!(s.util_cores_batch_only, 700.0 / 800.0, "{batch:?}");
    }
}

/// 1 node x 4 cores. User 1 submits A (0 s) and B (1 s), user 2 submits C (500 s); each
/// takes the whole node for 1000 s (exact limits, so no backfill).
const FAIR: &str = "; MaxNodes: 1\n; MaxProcs: 4\n\
    1 0 0 1000 4 -1 -1 4 1000 -1 1 1 1 -1 1 -1 -1 -1\n\
    2 1 999 1000 4 -1 -1 4 1000 -1 1 1 1 -1 1 -1 -1 -1\n\
    3 500 1500 1000 4 -1 -1 4 1000 -1 1 2 2 -1 1 -1 -1 -1\n";

#[test]
fn fair_share_lets_the_light_users_job_pass_the_heavy_users() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.swf");
    std::fs::write(&trace, FAIR).unwrap();
    let mut c = cfg(&trace, BatchMode::Easy, AllocationMode::Shared, 4000);
    c.drain_s = 4000;
    // FCFS: A 0-1000, B 1000-2000, C 2000-3000: waits 0, 999, 1500.
    let s = run(&c, |_| {}).unwrap().summary;
    assert_eq!(s.wait_p50_s, 999.0);
    assert!((s.wait_mean_s - 2499.0 / 3.0).abs() < 1e-9);
    // Priority (recalculated every 5 minutes, at 500 s with C's submission): user 1 has had
    // the whole node and user 2 nothing (F = 2^-2 against 1), so C starts at 1000 and B at
    // 2000: waits 0, 1999, 500.
    c.queue_order = QueueOrder::Priority;
    let s = run(&c, |_| {}).unwrap().summary;
    assert_eq!(s.wait_p50_s, 500.0);
    assert!((s.wait_mean_s - 2499.0 / 3.0).abs() < 1e-9);
    assert_eq!(s.accounts, 2);
    assert_eq!(s.queue_order, QueueOrder::Priority);
}

/// 1 node x 4 cores. User 1 submits three 1-core jobs of 100 s at 0, user 2 one after them.
const LIMIT: &str = "; MaxNodes: 1\n; MaxProcs: 4\n\
    1 0 0 100 1 -1 -1 1 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    2 0 0 100 1 -1 -1 1 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    3 0 0 100 1 -1 -1 1 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    4 0 0 100 1 -1 -1 1 100 -1 1 2 2 -1 1 -1 -1 -1\n";

#[test]
fn a_running_jobs_limit_per_user_holds_the_users_jobs_as_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.swf");
    std::fs::write(&trace, LIMIT).unwrap();
    for order in [QueueOrder::Fcfs, QueueOrder::Priority] {
        let mut c = cfg(&trace, BatchMode::Easy, AllocationMode::Shared, 100);
        c.queue_order = order;
        // No limit: all four start at 0 on the 4 cores: the window [0, 100) is full.
        let s = run(&c, |_| {}).unwrap().summary;
        assert_eq!(s.util_cores_batch_only, 1.0, "{order:?}");
        assert_eq!(s.wait_mean_s, 0.0);
        // One running job per user: user 1's jobs at 0, 100 and 200 and user 2's at 0 (it
        // passes user 1's held jobs). Window [0, 100): 2 of 4 cores; waits 0, 100, 200, 0.
        c.limits.max_running_per_user = Some(1);
        let s = run(&c, |_| {}).unwrap().summary;
        assert_eq!(s.util_cores_batch_only, 0.5, "{order:?}");
        assert_eq!(s.wait_mean_s, 75.0, "{order:?}");
        assert_eq!(s.max_running_per_user, Some(1));
        // Two per user: user 1's third job at 100: waits 0, 0, 100, 0; 3 of 4 cores.
        c.limits.max_running_per_user = Some(2);
        let s = run(&c, |_| {}).unwrap().summary;
        assert_eq!(s.util_cores_batch_only, 0.75, "{order:?}");
        assert_eq!(s.wait_mean_s, 25.0, "{order:?}");
    }
}

/// 1 node x 8 cores. User 1: jobs of 4, 4 and 2 cores in queue 1; user 2: 2 cores in queue 2;
/// all 100 s, submitted at 0.
const CORE_LIMITS: &str = "; MaxNodes: 1\n; MaxProcs: 8\n\
    1 0 0 100 4 -1 -1 4 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    2 0 0 100 4 -1 -1 4 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    3 0 0 100 2 -1 -1 2 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    4 0 0 100 2 -1 -1 2 100 -1 1 2 2 -1 2 -1 -1 -1\n";

#[test]
fn core_limits_per_user_and_per_queue_hold_jobs_as_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.swf");
    std::fs::write(&trace, CORE_LIMITS).unwrap();
    for order in [QueueOrder::Fcfs, QueueOrder::Priority] {
        let mut c = cfg(&trace, BatchMode::Easy, AllocationMode::Shared, 100);
        c.queue_order = order;
        // No limit: jobs 1 and 2 fill the node at 0; 3 and 4 at 100. Waits 0, 0, 100, 100.
        let s = run(&c, |_| {}).unwrap().summary;
        assert_eq!(s.wait_mean_s, 50.0, "{order:?}");
        // 6 cores per user: job 2 would make user 1's 8 > 6, so it is held and blocks no one:
        // jobs 1, 3 (user 1: 6) and 4 start at 0; job 2 at 100 (job 1 ended). Waits 0, 100,
        // 0, 0; window [0, 100): 8 of 8 cores.
        c.limits.max_cores_per_user = Some(6);
        let s = run(&c, |_| {}).unwrap().summary;
        assert_eq!(s.wait_mean_s, 25.0, "{order:?}");
        assert_eq!(s.util_cores_batch_only, 1.0, "{order:?}");
        assert_eq!(s.max_cores_per_user, Some(6));
        // Queue "1" may run 4 cores: job 1 at 0, job 2 at 100, job 3 at 200; job 4 (queue
        // "2") at 0. Waits 0, 100, 200, 0; window [0, 100): 6 of 8 cores.
        c.limits.max_cores_per_user = None;
        c.limits.queues = vec![QueueLimit::parse("1:cores=4").unwrap()];
        let s = run(&c, |_| {}).unwrap().summary;
        assert_eq!(s.wait_mean_s, 75.0, "{order:?}");
        assert_eq!(s.util_cores_batch_only, 0.75, "{order:?}");
        // A user in queue "1" may run 6 cores: as the user limit above (user 2 is in "2").
        c.limits.queues = vec![QueueLimit::parse("1:user-cores=6").unwrap()];
        let s = run(&c, |_| {}).unwrap().summary;
        assert_eq!(s.wait_mean_s, 25.0, "{order:?}");
        // A queue the trace does not have is an error that lists its queues.
        c.limits.queues = vec![QueueLimit::parse("q_2d:cores=4").unwrap()];
        let e = run(&c, |_| {}).unwrap_err().to_string();
        assert!(
            e.contains("'q_2d' is not in the trace (its queues: 1, 2)"),
            "{e}"
        );
    }
}

/// The indexed EASY pass and the textbook one give the same schedule, start for start, on an
/// over-loaded synthetic trace (a queue hundreds of jobs deep, several users, jobs of 1 to 256
/// cores), under both queue orders.
#[test]
fn the_indexed_pass_schedules_a_deep_queue_as_the_textbook_pass() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.swf");
    std::fs::write(
        &trace,
        harvest_experiments::sim::synthetic::swf(16, 4.0, 24 * 3600),
    )
    .unwrap();
    for order in [QueueOrder::Fcfs, QueueOrder::Priority] {
        let mut c = cfg(&trace, BatchMode::Easy, AllocationMode::Shared, 12 * 3600);
        c.queue_order = order;
        c.warmup_s = 6 * 3600;
        c.drain_s = 6 * 3600;
        let fast = run(&c, |_| {}).unwrap().summary;
        c.straightforward_pass = true;
        let slow = run(&c, |_| {}).unwrap().summary;
        assert!(
            fast.queued_jobs_max > 100,
            "a deep queue: {}",
            fast.queued_jobs_max
        );
        assert!(fast.jobs_started > 50, "{} jobs started", fast.jobs_started);
        assert_eq!(
            fast.start_error_mean_s, slow.start_error_mean_s,
            "{order:?}"
        );
        for (what, a, b) in [
            ("events", fast.events as f64, slow.events as f64),
            (
                "jobs started",
                fast.jobs_started as f64,
                slow.jobs_started as f64,
            ),
            (
                "queued at most",
                fast.queued_jobs_max as f64,
                slow.queued_jobs_max as f64,
            ),
            (
                "util",
                fast.util_cores_batch_only,
                slow.util_cores_batch_only,
            ),
            ("wait mean", fast.wait_mean_s, slow.wait_mean_s),
            ("wait p90", fast.wait_p90_s, slow.wait_p90_s),
            (
                "slowdown",
                fast.bounded_slowdown_mean,
                slow.bounded_slowdown_mean,
            ),
        ] {
            assert_eq!(a, b, "{what}, {order:?}");
        }
    }
}

/// A warm start on 1 node x 4 cores, the window from trace time 50, one user, priority order.
/// Job 2 (2 cores) was submitted after job 1 but backfilled: the trace shows it running at 50
/// (60 s left), job 1 (4 cores) still queued; both enter at instant 0. Job 3 only makes the
/// trace long enough that the window start is not wrapped.
const WARM_RUNNING_FIRST: &str = "; MaxNodes: 1\n; MaxProcs: 4\n\
    1 0 150 100 4 -1 -1 4 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    2 5 5 100 2 -1 -1 2 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    3 10000 0 10 1 -1 -1 1 10 -1 1 1 1 -1 1 -1 -1 -1\n";

/// The same machine and window. Job 9 runs at 50 (2 cores, 60 s left); jobs 7 (4 cores, 50 s)
/// and 6 (2 cores, 100 s) are queued, submitted in that order although 6 has the lower id.
const WARM_IDS_OUT_OF_ORDER: &str = "; MaxNodes: 1\n; MaxProcs: 4\n\
    9 0 10 100 2 -1 -1 2 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    7 2 148 50 4 -1 -1 4 50 -1 1 1 1 -1 1 -1 -1 -1\n\
    6 3 200 100 2 -1 -1 2 100 -1 1 1 1 -1 1 -1 -1 -1\n\
    3 10000 0 10 1 -1 -1 1 10 -1 1 1 1 -1 1 -1 -1 -1\n";

/// A warm start's jobs all enter at instant 0, so their priorities tie and the tie-break
/// decides. The indexed pass takes each account's jobs in its queue's order, the textbook
/// pass sorts them: the two must agree, and the jobs the trace shows running come first (the
/// window starts with them running). Before the tie-break put running jobs first and the
/// queue was kept in its order, the passes differed on both traces (on RICC: 1,138 against
/// 1,124 events in a 2 h window from 720 h).
#[test]
fn a_warm_start_schedules_the_same_under_both_passes_running_jobs_first() {
    // (trace, wait mean, hand schedule)
    let cases = [
        // Job 2 starts at 0 (as it runs in the trace) and ends at 60; job 1 (4 cores) then
        // starts: wait 60. Core-s in [0, 200): 2 x 60 + 4 x 100 = 520 of 800.
        (WARM_RUNNING_FIRST, 60.0),
        // Job 9 at 0 to 60; by id job 6 (2 cores) comes before job 7: 6 starts at 0 on the 2
        // free cores, 7 (4 cores) when both have ended, at 100. Waits 0 and 100. Core-s:
        // 2 x 60 + 2 x 100 + 4 x 50 = 520 of 800.
        (WARM_IDS_OUT_OF_ORDER, 50.0),
    ];
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.swf");
    for (text, wait_mean) in cases {
        std::fs::write(&trace, text).unwrap();
        let mut c = SimConfig {
            start_s: 50,
            queue_order: QueueOrder::Priority,
            ..cfg(&trace, BatchMode::Easy, AllocationMode::Shared, 200)
        };
        let fast = run(&c, |_| {}).unwrap().summary;
        c.straightforward_pass = true;
        let slow = run(&c, |_| {}).unwrap().summary;
        for (pass, s) in [("indexed", &fast), ("textbook", &slow)] {
            assert_eq!(s.wait_mean_s, wait_mean, "{pass} pass");
            assert_eq!(s.util_cores_batch_only, 520.0 / 800.0, "{pass} pass");
        }
        assert_eq!(fast.events, slow.events);
        assert_eq!(fast.start_error_mean_s, slow.start_error_mean_s);
    }
}
