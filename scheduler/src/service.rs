//! The `Scheduler` service clients call: thin glue over the lease book.

use std::sync::Arc;

use harvest_proto::v1;
use tonic::{Request, Response, Status};

use harvest_proto::binding::{self, Bound};

use crate::book::{BookError, Now, Order};
use crate::config::PLACEMENT_RETRY;
use crate::identity::AuthError;

/// How many times AcquireLease places a lease whose start a batch job cut short.
pub const START_ATTEMPTS: u32 = 3;
use crate::error::RequestError;
use crate::identity::Identity;
use crate::metrics::Placement;
use crate::state::Shared;
use crate::validate;

/// The gRPC service for clients.
#[derive(Debug, Clone)]
pub struct SchedulerService {
    shared: Arc<Shared>,
}

impl SchedulerService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Who sent `req`: its credential decoded, and refused unless its payload is the one this
    /// request gives (so a credential proves this request and no other).
    async fn authenticate<R: Bound>(&self, req: &R) -> Result<Identity, RequestError> {
        let munge = req.credential().map_or("", |c| c.munge.as_str());
        let proof = self.shared.auth.authenticate(munge).await?;
        let want = binding::payload(req);
        if proof.payload != want {
            return Err(AuthError::WrongPayload {
                method: R::METHOD,
                got: proof.payload.chars().take(100).collect(),
                want,
            }
            .into());
        }
        Ok(proof.who)
    }

    /// Places the lease, orders its executor and waits until it is ready. A start that a batch
    /// job cuts short (the node's agent reclaimed the lease before its executor was ready) is
    /// placed again, up to [`START_ATTEMPTS`] times: Slurm does not know about leases, so a
    /// job may land on a node between placement and start.
    async fn acquire(&self, req: v1::AcquireLeaseRequest) -> Result<v1::Lease, RequestError> {
        validate::acquire(&req)?;
        let who = self.authenticate(&req).await?;
        let mut attempt = 1;
        loop {
            match self.acquire_once(&req, &who).await {
                Err(RequestError::Book(BookError::SameRequest(lease))) => {
                    return self.answer_retry(&lease).await;
                }
                Err(RequestError::StartFailed {
                    lease,
                    node,
                    reason,
                }) if attempt < START_ATTEMPTS && self.revoked(&lease) => {
                    tracing::info!(%lease, %node, %reason, attempt, "lease revoked while starting; placing it again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Whether a lease ended because the system took it back (not a failure of its own).
    fn revoked(&self, lease: &str) -> bool {
        self.shared
            .lock()
            .book
            .lease(lease)
            .is_some_and(|l| l.state == v1::LeaseState::Revoked as i32)
    }

    async fn acquire_once(
        &self,
        req: &v1::AcquireLeaseRequest,
        who: &Identity,
    ) -> Result<v1::Lease, RequestError> {
        // No room now may be room in a moment (an ending lease's resources come back with its
        // agent's next report): retry within the placement wait before refusing.
        let wait_until = tokio::time::Instant::now() + self.shared.config.placement_wait();
        let (lease, order, tx, ready) = loop {
            let placed = {
                let mut inner = self.shared.lock();
                let decision = std::time::Instant::now();
                // Checked under the lock that places: two acquisitions cannot both pass a cap
                // only one fits.
                let access = &self.shared.config.access;
                let (cores, memory_mib) = (
                    u64::from(req.cores),
                    crate::book::held_memory_mib(
                        req,
                        self.shared.config.default_memory_per_core_mib,
                    ),
                );
                let (user, group) = (
                    inner.book.usage(who.uid, false),
                    inner.book.usage(who.gid, true),
                );
                if let Err(e) = access.check_acquire(who, user, group, cores, memory_mib) {
                    self.shared
                        .metrics
                        .record_placement(Placement::Refused, None);
                    return Err(e.into());
                }
                // A retry of an acquisition a live lease already answers (the answer was lost,
                // or this scheduler took over and adopted the lease): that lease, not another.
                if let Some(lease) = inner.book.by_request(who.uid, &req.request_id) {
                    return Err(BookError::SameRequest(lease).into());
                }
                match inner.book.place(req, who, Now::current()) {
                    Ok((lease, order)) => {
                        let took = decision.elapsed();
                        self.shared
                            .metrics
                            .record_placement(Placement::Placed, Some(took));
                        let tx = inner.sender(&order.node);
                        let ready = inner.wait_for(&lease.id);
                        Ok((lease, order, tx, ready))
                    }
                    Err(e) => Err(e),
                }
            };
            match placed {
                Ok(placed) => break placed,
                Err(BookError::Unschedulable { .. })
                    if tokio::time::Instant::now() < wait_until =>
                {
                    tokio::time::sleep(PLACEMENT_RETRY).await;
                }
                Err(e) => {
                    let outcome = match e {
                        BookError::Unschedulable { .. } => Placement::Unschedulable,
                        _ => Placement::Refused,
                    };
                    self.shared.metrics.record_placement(outcome, None);
                    return Err(e.into());
                }
            }
        };
        let node = order.node.clone();
        let sent = match tx {
            Some(tx) => tx
                .send(Ok(v1::SchedulerMessage {
                    msg: Some(order.msg),
                }))
                .await
                .is_ok(),
            None => false,
        };
        if !sent {
            self.give_up(&lease.id, &node, "the node's agent is not connected");
            return Err(RequestError::AgentGone {
                node,
                lease: lease.id,
            });
        }
        let waited = self.shared.config.executor_start_timeout();
        match tokio::time::timeout(waited, ready).await {
            Ok(Ok(Ok(active))) => {
                tracing::info!(lease = %active.id, node = %active.node, address = %active.executor_address, "lease active");
                Ok(self.with_secret(active))
            }
            Ok(Ok(Err(reason))) => Err(RequestError::StartFailed {
                lease: lease.id,
                node,
                reason,
            }),
            Ok(Err(_)) | Err(_) => {
                // Ready may have arrived just now; the book decides under the lock.
                if let Some(active) = self.give_up(&lease.id, &node, "executor start timed out") {
                    return Ok(self.with_secret(active));
                }
                Err(RequestError::StartTimeout {
                    lease: lease.id,
                    node,
                    waited,
                })
            }
        }
    }

    /// The answer to a retried acquisition: the lease that answers its request id, once it is
    /// active (it may still be starting for the first try, within the start timeout).
    async fn answer_retry(&self, lease: &str) -> Result<v1::Lease, RequestError> {
        let waited = self.shared.config.executor_start_timeout();
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let now = self.shared.lock().book.lease(lease);
            match now {
                Some(l) if l.state == v1::LeaseState::Active as i32 => {
                    tracing::info!(%lease, "a retried acquisition gets the lease its first try made");
                    return Ok(self.with_secret(l));
                }
                Some(l) if l.state == v1::LeaseState::Pending as i32 => {}
                Some(l) => {
                    return Err(RequestError::StartFailed {
                        lease: lease.to_owned(),
                        node: l.node,
                        reason: format!(
                            "{}: {}",
                            v1::LeaseState::try_from(l.state).map_or("ended", |s| s.as_str_name()),
                            l.end_reason
                        ),
                    });
                }
                None => return Err(BookError::UnknownLease(lease.to_owned()).into()),
            }
            if tokio::time::Instant::now() >= deadline {
                let node = self
                    .shared
                    .lock()
                    .book
                    .lease(lease)
                    .map(|l| l.node.clone())
                    .unwrap_or_default();
                return Err(RequestError::StartTimeout {
                    lease: lease.to_owned(),
                    node,
                    waited,
                });
            }
            tokio::time::sleep(PLACEMENT_RETRY).await;
        }
    }

    /// The lease as its owner gets it: with its secret.
    fn with_secret(&self, mut lease: v1::Lease) -> v1::Lease {
        if let Some(secret) = self.shared.lock().book.secret(&lease.id) {
            lease.secret = secret.as_bytes().to_vec();
        }
        lease
    }

    /// Fails a lease that is still starting and stops its executor; returns the lease instead
    /// when it became active in the meantime.
    fn give_up(&self, lease: &str, node: &str, reason: &str) -> Option<v1::Lease> {
        let mut inner = self.shared.lock();
        inner.forget_waiter(lease);
        if let Some(l) = inner.book.lease(lease)
            && l.state == v1::LeaseState::Active as i32
        {
            return Some(l);
        }
        if inner
            .book
            .end(lease, v1::EndCause::ExecutorFailed, reason)
            .is_some()
        {
            inner.dispatch(vec![Order {
                node: node.to_owned(),
                msg: v1::scheduler_message::Msg::Destroy(v1::DestroyExecutor {
                    lease_id: lease.to_owned(),
                    reason: reason.to_owned(),
                    cause: v1::EndCause::ExecutorFailed as i32,
                }),
            }]);
        }
        None
    }

    async fn renew(&self, req: v1::RenewLeaseRequest) -> Result<v1::Lease, RequestError> {
        validate::lease_id(&req.lease_id)?;
        let who = self.authenticate(&req).await?;
        Ok(self
            .shared
            .lock()
            .book
            .renew(&req.lease_id, &who, Now::current())?)
    }

    async fn release(&self, req: v1::ReleaseLeaseRequest) -> Result<(), RequestError> {
        validate::lease_id(&req.lease_id)?;
        let who = self.authenticate(&req).await?;
        let mut inner = self.shared.lock();
        let order = inner.book.release(&req.lease_id, &who)?;
        inner.dispatch(order.into_iter().collect());
        Ok(())
    }

    async fn get(&self, req: v1::GetLeaseRequest) -> Result<v1::Lease, RequestError> {
        validate::lease_id(&req.lease_id)?;
        let who = self.authenticate(&req).await?;
        let id = &req.lease_id;
        let inner = self.shared.lock();
        let lease = inner
            .book
            .lease(id)
            .ok_or_else(|| BookError::UnknownLease(id.clone()))?;
        if lease.uid == who.uid {
            let mut lease = lease;
            if let Some(secret) = inner.book.secret(id) {
                lease.secret = secret.as_bytes().to_vec();
            }
            Ok(lease)
        } else if self.shared.config.access.is_operator(&who) {
            Ok(lease)
        } else {
            Err(RequestError::NotYours { lease: id.clone() })
        }
    }

    async fn list(
        &self,
        req: v1::ListLeasesRequest,
    ) -> Result<v1::ListLeasesResponse, RequestError> {
        let who = self.authenticate(&req).await?;
        let inner = self.shared.lock();
        let mut leases = inner.book.leases();
        if self.shared.config.access.is_operator(&who) {
            return Ok(v1::ListLeasesResponse {
                leases,
                others: None,
            });
        }
        leases.retain(|l| l.uid == who.uid);
        Ok(v1::ListLeasesResponse {
            leases,
            others: Some(inner.book.others_totals(who.uid)),
        })
    }

    async fn drain(
        &self,
        req: v1::DrainNodeRequest,
    ) -> Result<v1::DrainNodeResponse, RequestError> {
        let who = self.authenticate(&req).await?;
        self.shared
            .config
            .access
            .require_operator(&who, "draining a node")?;
        let reason = match req.reason.trim() {
            "" => format!("drained by operator uid {}", who.uid),
            r => format!(
                "drained by operator uid {}: {}",
                who.uid,
                r.chars().take(200).collect::<String>()
            ),
        };
        let mut inner = self.shared.lock();
        let orders = inner.book.drain_node(
            &req.node,
            (!req.undrain).then_some(reason),
            req.revoke_leases && !req.undrain,
        )?;
        let revoked = orders.len() as u32;
        inner.dispatch(orders);
        Ok(v1::DrainNodeResponse { revoked })
    }

    async fn revoke(&self, req: v1::RevokeLeaseRequest) -> Result<v1::Lease, RequestError> {
        validate::revoke(&req)?;
        let who = self.authenticate(&req).await?;
        self.shared
            .config
            .access
            .require_operator(&who, "revoking another user's lease")?;
        let reason = match req.reason.trim() {
            "" => format!("revoked by operator uid {}", who.uid),
            r => format!(
                "revoked by operator uid {}: {}",
                who.uid,
                r.chars().take(200).collect::<String>()
            ),
        };
        let mut inner = self.shared.lock();
        let (lease, order) = inner.book.revoke(&req.lease_id, &reason)?;
        inner.dispatch(order.into_iter().collect());
        Ok(lease)
    }
}

#[tonic::async_trait]
impl v1::scheduler_server::Scheduler for SchedulerService {
    async fn acquire_lease(
        &self,
        request: Request<v1::AcquireLeaseRequest>,
    ) -> Result<Response<v1::Lease>, Status> {
        // A client that hangs up must not leave a lease half-started: finish in a task.
        let this = self.clone();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = this.acquire(request.into_inner()).await;
            let outcome = match &result {
                Ok(_) => "active",
                Err(RequestError::Auth(_)) => "unauthenticated",
                Err(RequestError::Book(BookError::Unschedulable { .. })) => "unschedulable",
                Err(RequestError::Access(_) | RequestError::NotYours { .. }) => "refused",
                Err(RequestError::Book(_)) => "refused",
                Err(RequestError::AgentGone { .. }) => "unavailable",
                Err(RequestError::StartFailed { .. }) => "failed",
                Err(RequestError::StartTimeout { .. }) => "timeout",
            };
            this.shared
                .metrics
                .record_acquisition(outcome, started.elapsed());
            result
        });
        match task.await {
            Ok(result) => Ok(Response::new(result?)),
            Err(e) => Err(Status::internal(format!("lease acquisition failed: {e}"))),
        }
    }

    async fn release_lease(
        &self,
        request: Request<v1::ReleaseLeaseRequest>,
    ) -> Result<Response<v1::ReleaseLeaseResponse>, Status> {
        self.release(request.into_inner()).await?;
        Ok(Response::new(v1::ReleaseLeaseResponse {}))
    }

    async fn renew_lease(
        &self,
        request: Request<v1::RenewLeaseRequest>,
    ) -> Result<Response<v1::Lease>, Status> {
        Ok(Response::new(self.renew(request.into_inner()).await?))
    }

    async fn get_lease(
        &self,
        request: Request<v1::GetLeaseRequest>,
    ) -> Result<Response<v1::Lease>, Status> {
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.authenticate(&request.into_inner()).await?;
        let nodes = self.shared.lock().book.nodes();
        Ok(Response::new(v1::ListNodesResponse { nodes }))
    }

    async fn list_leases(
        &self,
        request: Request<v1::ListLeasesRequest>,
    ) -> Result<Response<v1::ListLeasesResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        Ok(Response::new(self.drain(request.into_inner()).await?))
    }

    async fn revoke_lease(
        &self,
        request: Request<v1::RevokeLeaseRequest>,
    ) -> Result<Response<v1::Lease>, Status> {
        Ok(Response::new(self.revoke(request.into_inner()).await?))
    }
}
