//! The state the services share: the lease book, the agents' order channels, the acquisitions
//! waiting for their executor. One mutex, never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use harvest_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::book::{LeaseBook, Order};
use crate::config::Config;
use crate::identity::Authenticator;
use crate::metrics::SchedulerMetrics;

/// Orders queued per agent; a full queue ends the agent's session ([`Inner::dispatch`]).
pub const ORDER_QUEUE: usize = 256;

/// The sending half of an agent's session.
pub type OrderSender = mpsc::Sender<Result<v1::SchedulerMessage, Status>>;

/// What an acquisition waiting for its executor hears.
pub type StartOutcome = Result<v1::Lease, String>;

#[derive(Debug)]
struct AgentLink {
    session: u64,
    tx: OrderSender,
}

#[derive(Debug)]
pub struct Inner {
    pub book: LeaseBook,
    agents: HashMap<String, AgentLink>,
    waiters: HashMap<String, oneshot::Sender<StartOutcome>>,
    next_session: u64,
}

/// Everything the services share.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub auth: Arc<dyn Authenticator>,
    /// Placements, acquisitions and lease ends, for `/metrics`.
    pub metrics: Arc<SchedulerMetrics>,
    inner: Mutex<Inner>,
}

impl Shared {
    pub fn new(config: Config, auth: Arc<dyn Authenticator>, book: LeaseBook) -> Self {
        Self {
            config,
            auth,
            metrics: Arc::new(SchedulerMetrics::default()),
            inner: Mutex::new(Inner {
                book,
                agents: HashMap::new(),
                waiters: HashMap::new(),
                next_session: 1,
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the book as it was at the panic; serving on is
        // better than refusing every request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Attaches an agent's session; a newer session of the same node replaces the old one.
    pub fn attach(&mut self, node: &str, tx: OrderSender) -> u64 {
        let session = self.next_session;
        self.next_session += 1;
        self.agents
            .insert(node.to_owned(), AgentLink { session, tx });
        session
    }

    /// Detaches a session unless a newer one of the node took its place.
    pub fn detach(&mut self, node: &str, session: u64) {
        if self.agents.get(node).is_some_and(|a| a.session == session) {
            self.agents.remove(node);
        }
    }

    /// Drops every session (shutdown): their streams end.
    pub fn detach_all(&mut self) {
        self.agents.clear();
    }

    /// Whether `session` is the node's current session (a replaced one's messages are ignored).
    pub fn is_current(&self, node: &str, session: u64) -> bool {
        self.agents.get(node).is_some_and(|a| a.session == session)
    }

    /// The node's current session, when its agent is still connected.
    pub fn live_session(&self, node: &str) -> Option<u64> {
        self.agents
            .get(node)
            .filter(|a| !a.tx.is_closed())
            .map(|a| a.session)
    }

    pub fn sender(&self, node: &str) -> Option<OrderSender> {
        self.agents.get(node).map(|a| a.tx.clone())
    }

    /// Queues orders on their agents' sessions without waiting. Nothing is lost for good when
    /// an order cannot be queued: an agent that is not connected is reconciled when it
    /// registers again (executors of ended leases are destroyed then); an agent whose queue is
    /// full has its session ended, so that it reconnects and is reconciled the same way; and a
    /// DestroyExecutor is sent again while the agent's reports still list its lease
    /// ([`crate::book::DESTROY_RESEND_AFTER`]).
    pub fn dispatch(&mut self, orders: Vec<Order>) {
        for order in orders {
            let Some(link) = self.agents.get(&order.node) else {
                tracing::debug!(node = %order.node, ?order.msg, "agent not connected; order dropped");
                continue;
            };
            let msg = v1::SchedulerMessage {
                msg: Some(order.msg),
            };
            match link.tx.try_send(Ok(msg)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(node = %order.node, queue = ORDER_QUEUE,
                        "agent's order queue is full: ending its session, so that it registers again and is reconciled");
                    self.agents.remove(&order.node);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::debug!(node = %order.node, "agent's session closed; order dropped");
                }
            }
        }
    }

    pub fn wait_for(&mut self, lease: &str) -> oneshot::Receiver<StartOutcome> {
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(lease.to_owned(), tx);
        rx
    }

    pub fn forget_waiter(&mut self, lease: &str) {
        self.waiters.remove(lease);
    }

    pub fn notify(&mut self, lease: &str, outcome: StartOutcome) {
        if let Some(tx) = self.waiters.remove(lease) {
            // The acquisition may have given up already; nothing to do then.
            let _ = tx.send(outcome);
        }
    }
}
