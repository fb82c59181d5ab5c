//! `AgentGateway.Session`: one bidirectional stream per node agent.
//!
//! The first message must be Register; then slot reports (the heartbeat) and executor events
//! flow in, orders flow out through the session's channel. A broken stream only detaches the
//! session: the node stays up until it misses its heartbeats, so an agent that reconnects at
//! once loses nothing.
//!
//! Who an agent is comes from its client certificate ([`crate::tls::agent_identity`]): it may
//! register only as the node its certificate names, and report only on leases that node holds
//! ([`crate::book::LeaseBook::check_holder`]). Refusals are logged and counted
//! (`agent_refusals`). With `insecure_plaintext` there are no certificates and Register's node
//! is taken on trust; the lease check still holds.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use harvest_core::NodeView;
use harvest_proto::v1::{self, agent_message, executor_event};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::book::{Health, Now, Order, ReportExtras, ReportOutcome};
use crate::identity::passwd_name;
use crate::state::{ORDER_QUEUE, Shared};

/// The gRPC service the agents connect to.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> Self {
        Self { shared, shutdown }
    }
}

type OrderStream = Pin<Box<dyn Stream<Item = Result<v1::SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl v1::agent_gateway_server::AgentGateway for Gateway {
    type SessionStream = OrderStream;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<OrderStream>, Status> {
        // Who the connection is, before anything it says is read.
        let certified = if self.shared.config.insecure_plaintext {
            None
        } else {
            let certs = request.peer_certs();
            match crate::tls::agent_identity(certs.as_deref().map(Vec::as_slice)) {
                Ok(node) => Some(node),
                Err(e) => {
                    tracing::warn!(peer = ?request.remote_addr(), error = %e, "agent session refused");
                    self.shared.metrics.record_agent_refusal(e.reason());
                    return Err(Status::unauthenticated(e.to_string()));
                }
            }
        };
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the session closed before Register"))?;
        let Some(agent_message::Msg::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message of a session must be Register",
            ));
        };
        if reg.node.is_empty() {
            return Err(Status::invalid_argument("Register.node is empty"));
        }
        if let Some(certified) = certified
            && certified != reg.node
        {
            tracing::warn!(certified = %certified, claimed = %reg.node, "agent registering as another node refused");
            self.shared.metrics.record_agent_refusal("wrong_node");
            return Err(Status::permission_denied(format!(
                "this client certificate is node {certified}'s: it may not register as node {}; \
                 is harvestd running with the wrong --node or another node's certificate?",
                reg.node
            )));
        }
        let (tx, rx) = mpsc::channel(ORDER_QUEUE);
        let node = reg.node.clone();
        let session = {
            let passwd = self.shared.config.passwd.clone();
            let mut inner = self.shared.lock();
            // One agent per node. A second one (a harvestd started with the wrong --node, or a
            // test's) must not take over a node whose agent is alive; once that agent has gone
            // silent long enough for the node to be down, a newcomer may take its place.
            if let Some(current) = inner.live_session(&node)
                && inner.book.health(&node) == Some(Health::Up)
            {
                tracing::warn!(node = %node, current, "second agent for a node refused");
                return Err(Status::already_exists(format!(
                    "node {node} already has a connected agent (session {current}); is another \
                     harvestd running with --node {node}?"
                )));
            }
            let orders = inner.book.register(
                &node,
                Duration::from_millis(reg.heartbeat_ms),
                &reg.executors,
                |uid| passwd_name(&passwd, uid),
                Now::current(),
            );
            let session = inner.attach(&node, tx);
            inner.dispatch(orders);
            session
        };
        tracing::info!(node = %node, version = %reg.agent_version, executors = reg.executors.len(), "agent registered");
        let shared = self.shared.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(msg)) => handle(&shared, &node, session, msg),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(node = %node, error = %e, "agent session broken");
                            break;
                        }
                    },
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
            shared.lock().detach(&node, session);
            tracing::info!(node = %node, "agent session ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn handle(shared: &Shared, node: &str, session: u64, msg: v1::AgentMessage) {
    let mut inner = shared.lock();
    if !inner.is_current(node, session) {
        tracing::debug!(node, session, "message from a replaced session ignored");
        return;
    }
    match msg.msg {
        Some(agent_message::Msg::Slots(report)) => {
            let (Some(version), Some(view)) = (report.version, report.view.as_ref()) else {
                tracing::warn!(node, "slot report without a version or view ignored");
                return;
            };
            let now = Now::current();
            match inner.book.report(node, version, &NodeView::from(view), now) {
                Ok(ReportOutcome::Applied) => {
                    let orders =
                        inner
                            .book
                            .report_extras(node, ReportExtras::from_report(&report), now);
                    inner.dispatch(orders);
                }
                Ok(ReportOutcome::Stale) => {}
                Err(e) => tracing::warn!(node, error = %e, "slot report refused"),
            }
        }
        Some(agent_message::Msg::Executor(event)) => {
            let lease = event.lease_id;
            if let Err(e) = inner.book.check_holder(node, &lease) {
                tracing::warn!(node, lease = %lease, error = %e, "executor event refused");
                shared.metrics.record_agent_refusal("not_holder");
                return;
            }
            match event.event {
                Some(executor_event::Event::Ready(info)) => {
                    match inner.book.executor_ready(&lease, &info) {
                        Ok(wire) => inner.notify(&lease, Ok(wire)),
                        Err(e) => {
                            // Too late (timed out, released, node down): stop the executor.
                            tracing::warn!(node, lease = %lease, error = %e, "executor ready for a lease that is not starting");
                            inner.dispatch(vec![Order {
                                node: node.to_owned(),
                                msg: v1::scheduler_message::Msg::Destroy(v1::DestroyExecutor {
                                    lease_id: lease,
                                    reason: e.to_string(),
                                    cause: v1::EndCause::Unspecified as i32,
                                }),
                            }]);
                        }
                    }
                }
                Some(executor_event::Event::Failed(reason)) => {
                    inner
                        .book
                        .end_by_agent(&lease, v1::EndCause::ExecutorFailed, &reason);
                    inner.notify(&lease, Err(reason));
                }
                Some(executor_event::Event::Exited(reason)) => {
                    let cause = v1::EndCause::try_from(event.cause).unwrap_or_default();
                    // An executor that ends without a known cause (it crashed, its agent lost
                    // it) counts as failed; a known cause decides the state.
                    let cause = match cause {
                        v1::EndCause::Unspecified => v1::EndCause::ExecutorFailed,
                        c => c,
                    };
                    inner.book.end_by_agent(&lease, cause, &reason);
                    inner.notify(&lease, Err(format!("the executor exited: {reason}")));
                }
                Some(executor_event::Event::Moved(info)) => {
                    if !inner.book.executor_moved(&lease, &info) {
                        tracing::debug!(node, lease = %lease, "move of a lease that is not live ignored");
                    }
                }
                None => tracing::warn!(node, lease = %lease, "executor event without an event"),
            }
        }
        Some(agent_message::Msg::Register(_)) => {
            tracing::warn!(
                node,
                "second Register on one session ignored; reconnect to re-register"
            );
        }
        None => tracing::warn!(node, "empty agent message ignored"),
    }
}
