//! The `Scheduler` service clients call: thin glue over the lease book.

use std::sync::Arc;

use harvest_proto::v1;
use tonic::{Request, Response, Status};

use crate::book::{BookError, Now, Order};
use crate::config::PLACEMENT_RETRY;

/// How many times AcquireLease places a lease whose start a batch job cut short.
pub const START_ATTEMPTS: u32 = 3;
use crate::error::RequestError;
use crate::identity::Identity;
use crate::metrics::Placement;
use crate::state::Shared;

/// The gRPC service for clients.
#[derive(Debug, Clone)]
pub struct SchedulerService {
    shared: Arc<Shared>,
}

impl SchedulerService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn authenticate(
        &self,
        credential: Option<&v1::Credential>,
    ) -> Result<Identity, RequestError> {
        let munge = credential.map_or("", |c| c.munge.as_str());
        Ok(self.shared.auth.authenticate(munge).await?)
    }

    /// Places the lease, orders its executor and waits until it is ready. A start that a batch
    /// job cuts short (the node's agent reclaimed the lease before its executor was ready) is
    /// placed again, up to [`START_ATTEMPTS`] times: Slurm does not know about leases, so a
    /// job may land on a node between placement and start.
    async fn acquire(&self, req: v1::AcquireLeaseRequest) -> Result<v1::Lease, RequestError> {
        let who = self.authenticate(req.credential.as_ref()).await?;
        let mut attempt = 1;
        loop {
            match self.acquire_once(&req, &who).await {
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
                Ok(active)
            }
            Ok(Ok(Err(reason))) => Err(RequestError::StartFailed {
                lease: lease.id,
                node,
                reason,
            }),
            Ok(Err(_)) | Err(_) => {
                // Ready may have arrived just now; the book decides under the lock.
                if let Some(active) = self.give_up(&lease.id, &node, "executor start timed out") {
                    return Ok(active);
                }
                Err(RequestError::StartTimeout {
                    lease: lease.id,
                    node,
                    waited,
                })
            }
        }
    }

    /// Fails a lease that is still starting and stops its executor; returns the lease instead
    /// when it became active in the meantime.
    fn give_up(&self, lease: &str, node: &str, reason: &str) -> Option<v1::Lease> {
        let mut inner = self.shared.lock();
        inner.forget_waiter(lease);
        if let Some(l) = inner.book.lease(lease)
            && l.state == v1::LeaseState::Active as i32
        {
            return Some(l.clone());
        }
        if inner
            .book
            .end(lease, v1::LeaseState::Failed, reason)
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
        let who = self.authenticate(req.credential.as_ref()).await?;
        Ok(self
            .shared
            .lock()
            .book
            .renew(&req.lease_id, &who, Now::current())?)
    }

    async fn release(&self, req: v1::ReleaseLeaseRequest) -> Result<(), RequestError> {
        let who = self.authenticate(req.credential.as_ref()).await?;
        let mut inner = self.shared.lock();
        let order = inner.book.release(&req.lease_id, &who)?;
        inner.dispatch(order.into_iter().collect());
        Ok(())
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
        let id = request.into_inner().lease_id;
        let lease = self.shared.lock().book.lease(&id).cloned();
        lease.map(Response::new).ok_or_else(|| {
            Status::not_found(format!(
                "no lease {id}: it never existed or ended long ago (`harvest leases` lists the leases)"
            ))
        })
    }

    async fn list_nodes(
        &self,
        _request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let nodes = self.shared.lock().book.nodes();
        Ok(Response::new(v1::ListNodesResponse { nodes }))
    }

    async fn list_leases(
        &self,
        _request: Request<v1::ListLeasesRequest>,
    ) -> Result<Response<v1::ListLeasesResponse>, Status> {
        let leases = self.shared.lock().book.leases();
        Ok(Response::new(v1::ListLeasesResponse { leases }))
    }
}
