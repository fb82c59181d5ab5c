use super::load::{Event, Op, Outcome};
use super::report::{phase_figures, violates};

fn ev(op: Op, start: i64, end: i64, outcome: Outcome, category: &str) -> Event {
    Event {
        client: 0,
        op,
        start_unix_ms: start,
        end_unix_ms: end,
        outcome,
        category: category.into(),
        node: "n1".into(),
    }
}

#[test]
fn figures_count_answers_losses_and_recovery() {
    let events = vec![
        ev(Op::Invoke, 0, 1, Outcome::Ok, ""),
        ev(Op::Invoke, 0, 2, Outcome::Error, "closed"),
        ev(Op::Invoke, 0, 9000, Outcome::Lost, "no answer by the end"),
        ev(Op::Invoke, 0, 5000, Outcome::Late, "late"),
        ev(Op::Acquire, 900, 1000, Outcome::Ok, ""),
        ev(
            Op::Acquire,
            1100,
            2500,
            Outcome::Error,
            "scheduler:Unavailable",
        ),
        ev(Op::Acquire, 1200, 3500, Outcome::Ok, ""),
    ];
    let r = phase_figures(
        "kill-scheduler",
        &events,
        1000,
        &[(5, vec![(7, "n1/job_3".into())])],
    );
    assert_eq!(r.invocations, 4);
    assert_eq!(r.invocations_ok, 1);
    assert_eq!(r.invocation_errors["closed"], 1);
    assert_eq!(r.silent_losses, 1);
    assert_eq!(r.late, 1);
    assert!((r.answered_pct - 50.0).abs() < 1e-9);
    // The acquisition that started before the injection does not count as recovery.
    assert_eq!(r.recovery_s, Some(2.5));
    assert_eq!(r.executors_on_batch_cpus_samples, 1);
    assert!(violates(&r));
}

#[test]
fn a_clean_phase_violates_nothing() {
    let events = vec![
        ev(Op::Invoke, 0, 1, Outcome::Ok, ""),
        ev(Op::Invoke, 0, 2, Outcome::Error, "remote:LeaseRevoked"),
        ev(Op::Acquire, 10, 20, Outcome::Ok, ""),
    ];
    let r = phase_figures("kill-executor", &events, 5, &[(1, vec![])]);
    assert_eq!(r.answered_pct, 100.0);
    assert!(!violates(&r));
}
