//! Revoked leases and failover: no invocation is silently lost.
//!
//! A batch job always wins: when Slurm starts a step on a lease's resources, the node's agent
//! kills the executor before the step's tasks run, and the lease ends as revoked (`reclaimed by
//! job 42`); a node that goes down, is drained, or whose jobs suffer from interference revokes
//! its leases too. An invocation in flight sees its connection die. [`explain`] turns that into
//! a [`Revoked`] error naming the cause, by asking the scheduler what became of the lease.
//!
//! [`invoke_with_failover`] acquires a lease, invokes, and when the lease is revoked acquires a
//! new one (elsewhere: the revoked node's resources are now the batch job's) and retries the
//! invocation, until it completes or the failover deadline passes; then the error still names
//! the revocation. `harvest invoke` does this unless `--no-failover`.

use std::time::{Duration, Instant};

use harvest_core::invoke::ErrorCode;

use crate::invoke::{InvokeError, Polling};
use crate::lease::{Lease, LeaseError, LeaseExt, LeaseRequest, SchedulerClient};

/// How long [`explain`] waits for the scheduler to learn that a lease ended (the agent reports
/// a revocation within milliseconds; a node that died is noticed after missed heartbeats).
pub const EXPLAIN_WAIT: Duration = Duration::from_secs(3);
/// How often [`explain`] asks.
pub const EXPLAIN_POLL: Duration = Duration::from_millis(20);
/// How long failover keeps trying by default.
pub const DEFAULT_FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

/// A lease the system took back, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub lease: String,
    pub node: String,
    /// reclaimed, node_down, node_drained, interference, expired, idle, executor_failed.
    pub cause: String,
    /// The scheduler's words, e.g. "reclaimed by job 42".
    pub reason: String,
}

impl std::fmt::Display for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lease {} on node {} revoked: {}",
            self.lease, self.node, self.reason
        )
    }
}

/// Why a call with failover failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The lease was revoked and no other lease could finish the invocation (failover off, or
    /// no slot within its deadline: `failover` says what happened).
    #[error("LeaseRevoked: {revocation}{}", failover.as_deref().map(|f| format!("; {f}")).unwrap_or_default())]
    Revoked {
        revocation: Revocation,
        failover: Option<String>,
    },
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Whether an invocation error may mean the lease is gone (its executor vanished or said so),
/// rather than a failure of the function itself.
pub fn may_be_revoked(e: &InvokeError) -> bool {
    match e {
        InvokeError::Connect { .. }
        | InvokeError::Io { .. }
        | InvokeError::Closed { .. }
        | InvokeError::NoAnswer { .. } => true,
        // Once a lease is gone its port may serve another lease, whose executor refuses this
        // lease's secret: ask the scheduler.
        InvokeError::Unauthorized { .. } => true,
        InvokeError::Remote { code, .. } => *code == ErrorCode::LeaseRevoked,
        InvokeError::Protocol { .. } | InvokeError::Request(_) | InvokeError::NoSecret { .. } => {
            false
        }
    }
}

/// The revocation behind a failed invocation on `lease`: asks the scheduler (for up to `wait`)
/// until the lease is no longer live. `None` when it stays live (the failure was something
/// else) or was released by its owner.
pub async fn explain(
    client: &mut SchedulerClient,
    lease: &str,
    wait: Duration,
) -> Result<Option<Revocation>, LeaseError> {
    let until = Instant::now() + wait;
    loop {
        let now = client.get(lease).await?;
        if !now.is_live() {
            return Ok((now.state != "released").then(|| revocation(&now)));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        tokio::time::sleep(EXPLAIN_POLL).await;
    }
}

fn revocation(l: &Lease) -> Revocation {
    Revocation {
        lease: l.id.clone(),
        node: l.node.clone(),
        cause: if l.end_cause.is_empty() {
            l.state.clone()
        } else {
            l.end_cause.clone()
        },
        reason: if l.end_reason.is_empty() {
            l.state.clone()
        } else {
            l.end_reason.clone()
        },
    }
}

/// How [`invoke_with_failover`] behaves.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// Retry on a new lease after a revocation.
    pub enabled: bool,
    /// Stop retrying this long after the first revocation.
    pub deadline: Duration,
    pub polling: Polling,
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            enabled: true,
            deadline: DEFAULT_FAILOVER_DEADLINE,
            polling: Polling::Block,
        }
    }
}

/// What a completed call did.
#[derive(Debug)]
pub struct Completed {
    pub output: Vec<u8>,
    /// The leases revoked under the call, oldest first (empty when none was).
    pub revocations: Vec<Revocation>,
    /// The lease that completed it (released, unless `release_error` says otherwise: it then
    /// ends at its idle timeout).
    pub lease: Lease,
    pub release_error: Option<LeaseError>,
}

/// Acquires a lease for `req`, invokes `function` once, and releases the lease; when the lease
/// is revoked under the invocation, retries on a new lease (if `policy.enabled`) until
/// `policy.deadline`. `on_revoked` hears of each revocation (the CLI prints it).
pub async fn invoke_with_failover(
    client: &mut SchedulerClient,
    req: &LeaseRequest,
    function: &str,
    input: &[u8],
    timeout: Option<Duration>,
    policy: Failover,
    mut on_revoked: impl FnMut(&Revocation),
) -> Result<Completed, CallError> {
    let mut revocations: Vec<Revocation> = Vec::new();
    let mut first_revoked: Option<Instant> = None;
    loop {
        let lease = match client.acquire(req).await {
            Ok(l) => l,
            Err(e) => {
                // After a revocation, a failed acquisition ends failover: name the revocation.
                return Err(match revocations.pop() {
                    Some(revocation) => CallError::Revoked {
                        revocation,
                        failover: Some(format!("failover found no new lease: {e}")),
                    },
                    None => e.into(),
                });
            }
        };
        let result = invoke_blocking(&lease, function, input, timeout, policy.polling).await;
        let err = match result {
            Ok(output) => {
                // The output is the user's; a failed release is reported, not fatal.
                let release_error = client.release(&lease.id).await.err();
                return Ok(Completed {
                    output,
                    revocations,
                    lease,
                    release_error,
                });
            }
            Err(e) => e,
        };
        let revoked = if may_be_revoked(&err) {
            explain(client, &lease.id, EXPLAIN_WAIT).await?
        } else {
            None
        };
        let Some(revocation) = revoked else {
            // The function's own failure (or a live lease's): release and report it.
            let _ = client.release(&lease.id).await;
            return Err(err.into());
        };
        on_revoked(&revocation);
        let started = *first_revoked.get_or_insert_with(Instant::now);
        if !policy.enabled {
            return Err(CallError::Revoked {
                revocation,
                failover: None,
            });
        }
        if started.elapsed() >= policy.deadline {
            return Err(CallError::Revoked {
                revocation,
                failover: Some(format!(
                    "failover gave up after {:?} without a lease that lasted",
                    policy.deadline
                )),
            });
        }
        revocations.push(revocation);
    }
}

/// One blocking invocation on `lease`, off the async runtime's thread.
async fn invoke_blocking(
    lease: &Lease,
    function: &str,
    input: &[u8],
    timeout: Option<Duration>,
    polling: Polling,
) -> Result<Vec<u8>, InvokeError> {
    let lease = lease.clone();
    let function = function.to_owned();
    let input = input.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut conn = lease.connect(polling)?;
        conn.invoke(&function, &input, timeout)
    })
    .await
    .map_err(|e| InvokeError::Request(format!("the invocation task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn connection_failures_and_revoked_frames_may_be_revocations_function_errors_are_not() {
        assert!(may_be_revoked(&InvokeError::Closed {
            addr: addr(),
            in_flight: 1
        }));
        assert!(may_be_revoked(&InvokeError::Remote {
            id: 1,
            code: ErrorCode::LeaseRevoked,
            message: "executor shut down".into()
        }));
        assert!(!may_be_revoked(&InvokeError::Remote {
            id: 1,
            code: ErrorCode::Crashed,
            message: "SIGSEGV".into()
        }));
        assert!(!may_be_revoked(&InvokeError::Request("bad".into())));
    }

    #[test]
    fn the_error_names_the_revocation_and_what_failover_did() {
        let revocation = Revocation {
            lease: "abc-3".into(),
            node: "n1".into(),
            cause: "reclaimed".into(),
            reason: "reclaimed by job 42".into(),
        };
        let e = CallError::Revoked {
            revocation: revocation.clone(),
            failover: None,
        };
        assert_eq!(
            e.to_string(),
            "LeaseRevoked: lease abc-3 on node n1 revoked: reclaimed by job 42"
        );
        let e = CallError::Revoked {
            revocation,
            failover: Some("failover found no new lease: no node".into()),
        };
        assert!(
            e.to_string()
                .ends_with("; failover found no new lease: no node")
        );
    }

    #[test]
    fn a_lease_without_a_cause_is_explained_by_its_state() {
        let l = Lease {
            id: "x".into(),
            node: "n2".into(),
            uid: 1,
            user: String::new(),
            cpus: vec![],
            memory_mib: 0,
            gpus: vec![],
            state: "revoked".into(),
            executor_address: String::new(),
            created_unix_ms: 0,
            expires_unix_ms: 0,
            end_reason: "node down".into(),
            end_cause: String::new(),
            idle_timeout_ms: 0,
            last_active_unix_ms: 0,
            memory: None,
            secret: None,
        };
        let r = revocation(&l);
        assert_eq!(
            (r.cause.as_str(), r.reason.as_str()),
            ("revoked", "node down")
        );
    }
}
