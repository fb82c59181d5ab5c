//! The lease state machine: one transition function over typed phases and events.
//!
//! ```text
//!             Ready / Running              Moved
//!   Pending ─────────────────▶ Active ◀──────────┐
//!      │  ▲ Moved                 │   └──────────┘
//!      │  └─┘                     │
//!      └──────── End(cause) ──────┴──▶ Ended(cause, reason)   (final: every event refused)
//! ```
//!
//! The wire's `LeaseState` is derived from the phase ([`Phase::state`]): an ended lease's state
//! follows from its cause ([`state_for`]), so state and cause can never disagree.

use harvest_proto::v1::{EndCause, LeaseState};

/// Where a lease is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Placed and reserved; its executor is starting.
    Pending,
    /// Its executor listens.
    Active,
    /// Over for good: why, as a category and in words.
    Ended { cause: EndCause, reason: String },
}

/// What can happen to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Its agent reports the executor listening (`ExecutorEvent.ready`).
    Ready,
    /// Its agent lists the executor among those it runs (`Register`, after a reconnect).
    Running,
    /// Its agent moved the executor to other CPUs (a batch step took some of its own).
    Moved,
    /// It ends: released, expired, idle, revoked for a cause, or failed.
    End { cause: EndCause, reason: &'a str },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Moved => "moved",
            Self::End { .. } => "end",
        }
    }
}

/// An event the lease's phase does not take (the caller decides what that means: an ended
/// lease ignores a second end; a late ready is answered with DestroyExecutor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the lease is {from}: it does not take the event {event}")]
pub struct NotAllowed {
    pub from: &'static str,
    pub event: &'static str,
}

/// The state an ended lease is in for its cause.
pub fn state_for(cause: EndCause) -> LeaseState {
    match cause {
        EndCause::Released => LeaseState::Released,
        EndCause::Expired | EndCause::Idle => LeaseState::Expired,
        EndCause::ExecutorFailed => LeaseState::Failed,
        EndCause::Unspecified
        | EndCause::Reclaimed
        | EndCause::NodeDown
        | EndCause::NodeDrained
        | EndCause::Operator
        | EndCause::Interference => LeaseState::Revoked,
    }
}

impl Phase {
    /// The phase after `event`, or why it does not apply.
    pub fn next(&self, event: Event<'_>) -> Result<Phase, NotAllowed> {
        let refused = || NotAllowed {
            from: self.name(),
            event: event.name(),
        };
        match (self, event) {
            (Self::Pending, Event::Ready | Event::Running) => Ok(Self::Active),
            (Self::Active, Event::Running | Event::Moved) => Ok(Self::Active),
            (Self::Pending, Event::Moved) => Ok(Self::Pending),
            (Self::Pending | Self::Active, Event::End { cause, reason }) => Ok(Self::Ended {
                cause,
                reason: reason.to_owned(),
            }),
            (Self::Active, Event::Ready) | (Self::Ended { .. }, _) => Err(refused()),
        }
    }

    /// Pending or active.
    pub fn is_live(&self) -> bool {
        !matches!(self, Self::Ended { .. })
    }

    pub fn state(&self) -> LeaseState {
        match self {
            Self::Pending => LeaseState::Pending,
            Self::Active => LeaseState::Active,
            Self::Ended { cause, .. } => state_for(*cause),
        }
    }

    /// Why it ended (`Unspecified` while live).
    pub fn cause(&self) -> EndCause {
        match self {
            Self::Ended { cause, .. } => *cause,
            _ => EndCause::Unspecified,
        }
    }

    /// Why it ended, in words (empty while live).
    pub fn reason(&self) -> &str {
        match self {
            Self::Ended { reason, .. } => reason,
            _ => "",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Ended { .. } => "ended",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAUSES: [EndCause; 10] = [
        EndCause::Unspecified,
        EndCause::Released,
        EndCause::Expired,
        EndCause::Reclaimed,
        EndCause::NodeDown,
        EndCause::Interference,
        EndCause::ExecutorFailed,
        EndCause::Idle,
        EndCause::NodeDrained,
        EndCause::Operator,
    ];

    fn events() -> Vec<Event<'static>> {
        let mut e = vec![Event::Ready, Event::Running, Event::Moved];
        e.extend(CAUSES.iter().map(|&cause| Event::End {
            cause,
            reason: "why",
        }));
        e
    }

    /// Every sequence of up to five events from a new lease (13^5 = 371,293 of them), each
    /// applied as the book applies them (a refused event leaves the phase as it was).
    fn every_sequence(mut check: impl FnMut(&[Event<'static>], &[Phase])) {
        let all = events();
        let mut seq = Vec::new();
        let mut phases = vec![Phase::Pending];
        fn walk(
            all: &[Event<'static>],
            seq: &mut Vec<Event<'static>>,
            phases: &mut Vec<Phase>,
            check: &mut impl FnMut(&[Event<'static>], &[Phase]),
        ) {
            check(seq, phases);
            if seq.len() == 5 {
                return;
            }
            for &e in all {
                let now = phases.last().unwrap().clone();
                let next = now.next(e).unwrap_or(now);
                seq.push(e);
                phases.push(next);
                walk(all, seq, phases, check);
                seq.pop();
                phases.pop();
            }
        }
        walk(&all, &mut seq, &mut phases, &mut check);
    }

    #[test]
    fn the_first_end_is_final_and_state_never_disagrees_with_cause() {
        let mut sequences = 0u64;
        every_sequence(|seq, phases| {
            sequences += 1;
            let first_end = seq.iter().position(|e| matches!(e, Event::End { .. }));
            let last = phases.last().unwrap();
            match first_end {
                // Nothing after the first end changes anything: its cause and reason stay.
                Some(i) => {
                    let Event::End { cause, .. } = seq[i] else {
                        unreachable!()
                    };
                    assert!(
                        phases[i + 1..].iter().all(|p| p == &phases[i + 1]),
                        "{seq:?}"
                    );
                    assert_eq!(last.cause(), cause, "{seq:?}");
                    assert_eq!(last.state(), state_for(cause), "{seq:?}");
                    assert_eq!(last.reason(), "why");
                    assert!(!last.is_live());
                }
                // Without an end a lease is live, active once anything said it runs.
                None => {
                    assert!(last.is_live(), "{seq:?}");
                    let ran = seq
                        .iter()
                        .any(|e| matches!(e, Event::Ready | Event::Running));
                    let want = if ran {
                        LeaseState::Active
                    } else {
                        LeaseState::Pending
                    };
                    assert_eq!(last.state(), want, "{seq:?}");
                    assert_eq!(last.cause(), EndCause::Unspecified);
                }
            }
            // Live states only ever move forward: never back from active to pending.
            for w in phases.windows(2) {
                assert!(
                    !(w[0] == Phase::Active && w[1] == Phase::Pending),
                    "{seq:?}"
                );
            }
        });
        assert_eq!(sequences, (0..=5).map(|n| 13u64.pow(n)).sum::<u64>());
    }

    #[test]
    fn refusals_are_exactly_a_second_ready_and_anything_after_the_end() {
        let ended = Phase::Ended {
            cause: EndCause::Idle,
            reason: "idle".into(),
        };
        for e in events() {
            assert!(ended.next(e).is_err(), "{e:?}");
            assert!(Phase::Pending.next(e).is_ok(), "{e:?}");
            assert_eq!(Phase::Active.next(e).is_err(), e == Event::Ready, "{e:?}");
        }
        let e = Phase::Active.next(Event::Ready).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the lease is active: it does not take the event ready"
        );
    }

    #[test]
    fn each_cause_has_the_state_clients_see() {
        use EndCause as C;
        use LeaseState as S;
        for (cause, state) in [
            (C::Released, S::Released),
            (C::Expired, S::Expired),
            (C::Idle, S::Expired),
            (C::ExecutorFailed, S::Failed),
            (C::Reclaimed, S::Revoked),
            (C::NodeDown, S::Revoked),
            (C::NodeDrained, S::Revoked),
            (C::Operator, S::Revoked),
            (C::Interference, S::Revoked),
            (C::Unspecified, S::Revoked),
        ] {
            assert_eq!(state_for(cause), state, "{cause:?}");
        }
    }
}
