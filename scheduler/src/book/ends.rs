//! How leases end: the one transition to Ended (`finish`) and everything that leads to it:
//! release, expiry and idle timeouts (`tick`), revocation of a node's leases (node down, Slurm's
//! or an operator's drain), an operator's revoke.

use std::time::Duration;

use harvest_policies::NodeId;
use harvest_proto::v1::{self, EndCause, LeaseState};
use harvest_proto::views::state_name;

use super::{BookError, Event, Freed, Health, LeaseBook, Now, Order, Phase, cause_name};
use crate::identity::Identity;

impl LeaseBook {
    /// Ends a live lease for `cause` (its state follows from the cause, [`super::state_for`]) and
    /// frees its reservation, whose resources stay taken until the agent's next report (the
    /// executor is still stopping). Returns the lease as it ended, or `None` when it was not
    /// live (ending is idempotent: the first end stands).
    pub fn end(&mut self, lease: &str, cause: EndCause, reason: &str) -> Option<v1::Lease> {
        self.finish(lease, cause, reason, Freed::WithNextReport)
    }

    /// Ends a lease on the agent's word that its executor failed to start or exited: the agent
    /// has already given its resources back, so they are free at once.
    pub fn end_by_agent(
        &mut self,
        lease: &str,
        cause: EndCause,
        reason: &str,
    ) -> Option<v1::Lease> {
        self.finish(lease, cause, reason, Freed::Now)
    }

    /// The one way a lease ends.
    pub(super) fn finish(
        &mut self,
        lease: &str,
        cause: EndCause,
        reason: &str,
        freed: Freed,
    ) -> Option<v1::Lease> {
        let rec = self.leases.get_mut(lease)?;
        rec.phase = rec.phase.next(Event::End { cause, reason }).ok()?;
        let state = rec.phase.state();
        if state == LeaseState::Revoked
            && let Some(&id) = self.by_name.get(&rec.node)
        {
            *self.nodes[id as usize]
                .revocations
                .entry(cause_name(cause))
                .or_default() += 1;
        }
        let ended = rec.wire();
        let key = rec.key;
        if let Some(released) = self.framework.release(&mut self.cluster, key)
            && freed == Freed::WithNextReport
        {
            let _ = self.cluster.update(released.node, |n| {
                n.batch = n.batch.add(&released.res);
            });
        }
        tracing::info!(
            lease,
            state = state_name(state as i32),
            reason,
            "lease ended"
        );
        self.ended.push_back(lease.to_owned());
        while self.ended.len() > self.limits.ended_leases_kept {
            if let Some(old) = self.ended.pop_front() {
                self.leases.remove(&old);
            }
        }
        Some(ended)
    }

    /// `who` releases a lease: only its user or root may. Returns the order that stops its
    /// executor (none when the lease had already ended).
    pub fn release(&mut self, lease: &str, who: &Identity) -> Result<Option<Order>, BookError> {
        let node = self.owned(lease, who)?.node.clone();
        let reason = format!("released by uid {}", who.uid);
        Ok(self
            .end(lease, EndCause::Released, &reason)
            .map(|_| Order::destroy(&node, lease, &reason, EndCause::Released)))
    }

    /// `who` says it still uses the lease (RenewLease): its idle clock restarts. Returns the
    /// lease as it is, ended or not, so a client learns why its lease ended.
    pub fn renew(&mut self, lease: &str, who: &Identity, now: Now) -> Result<v1::Lease, BookError> {
        let rec = self.owned(lease, who)?;
        if rec.is_live() {
            rec.last_active = now.instant;
            rec.last_active_unix_ms = now.unix_ms;
        }
        Ok(rec.wire())
    }

    /// An operator drains `node` from harvesting (`drain` is the reason) or lifts the drain
    /// (`None`); with `revoke`, its live leases end now (cause OPERATOR). Returns the orders
    /// that stop their executors.
    pub fn drain_node(
        &mut self,
        node: &str,
        drain: Option<String>,
        revoke: bool,
    ) -> Result<Vec<Order>, BookError> {
        let &id = self
            .by_name
            .get(node)
            .ok_or_else(|| BookError::UnknownNode(node.to_owned()))?;
        let reason = drain.clone();
        self.nodes[id as usize].operator_drain = drain;
        let Some(reason) = reason else {
            tracing::info!(node, "an operator lifted the node's drain");
            return Ok(Vec::new());
        };
        tracing::warn!(node, %reason, revoke, "an operator drained the node from harvesting");
        self.block_placement(id);
        if !revoke {
            return Ok(Vec::new());
        }
        Ok(self.revoke_node(node, EndCause::Operator, &reason))
    }

    /// An operator ends `lease` now. Returns it as ended and the order that stops its executor
    /// (none when it had already ended).
    pub fn revoke(
        &mut self,
        lease: &str,
        reason: &str,
    ) -> Result<(v1::Lease, Option<Order>), BookError> {
        let node = self
            .leases
            .get(lease)
            .ok_or_else(|| BookError::UnknownLease(lease.to_owned()))?
            .node
            .clone();
        let order = self
            .end(lease, EndCause::Operator, reason)
            .map(|_| Order::destroy(&node, lease, reason, EndCause::Operator));
        let wire = self.leases.get(lease).map(|r| r.wire());
        Ok((wire.unwrap_or_default(), order))
    }

    pub(super) fn revoke_node(&mut self, node: &str, cause: EndCause, reason: &str) -> Vec<Order> {
        let on_node: Vec<String> = self
            .leases
            .values()
            .filter(|r| r.node == node && r.is_live())
            .map(|r| r.id.clone())
            .collect();
        on_node
            .into_iter()
            .filter_map(|lease| {
                self.end(&lease, cause, reason)
                    .map(|_| Order::destroy(node, &lease, reason, cause))
            })
            .collect()
    }

    /// Expires leases past their lifetime and takes down nodes that missed their heartbeats
    /// (revoking their leases). Returns the orders for the agents.
    pub fn tick(&mut self, now: Now) -> Vec<Order> {
        let mut orders = Vec::new();
        let expired: Vec<(String, String)> = self
            .leases
            .values()
            .filter(|r| r.is_live() && r.expires_at <= now.instant)
            .map(|r| (r.id.clone(), r.node.clone()))
            .collect();
        for (lease, node) in expired {
            self.end(&lease, EndCause::Expired, "lifetime over");
            orders.push(Order::destroy(
                &node,
                &lease,
                "lease expired",
                EndCause::Expired,
            ));
        }
        let idle: Vec<(String, String, Duration)> = self
            .leases
            .values()
            .filter(|r| {
                r.phase == Phase::Active
                    && !r.idle_timeout.is_zero()
                    && now.instant >= r.last_active + r.idle_timeout
            })
            .map(|r| (r.id.clone(), r.node.clone(), r.idle_timeout))
            .collect();
        for (lease, node, timeout) in idle {
            let reason = format!("idle for {timeout:?}: no invocation and no renewal");
            self.end(&lease, EndCause::Idle, &reason);
            orders.push(Order::destroy(&node, &lease, &reason, EndCause::Idle));
        }
        let miss = self.limits.heartbeat_miss_limit;
        let late: Vec<NodeId> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.health == Health::Up && now.instant >= n.last_seen + n.heartbeat * miss
            })
            .map(|(id, _)| id as NodeId)
            .collect();
        for id in late {
            orders.extend(self.take_down(id));
        }
        orders
    }
}
