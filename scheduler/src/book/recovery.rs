//! Rebuilding from the agents: executors a restarted or new scheduler does not know are adopted
//! with what their agent kept (secret, group, idle timeout, request id); a duplicate of a
//! request is ordered away; a DestroyExecutor the agent still has not acted on is sent again.

use std::collections::HashMap;
use std::time::Duration;

use harvest_core::invoke::auth::LeaseSecret;
use harvest_policies::{NodeId, Resources};
use harvest_proto::v1::{self, EndCause};
use harvest_proto::views::state_name;

use super::{DESTROY_RESEND_AFTER, LeaseBook, LeaseRecord, Now, Order, Phase};

impl LeaseBook {
    /// Takes a running executor the book does not know as an ACTIVE lease, with what its agent
    /// kept of it (owner group, secret, idle timeout, request id; an agent from before they were
    /// kept gives none: gid = uid, no secret, the default idle timeout). An executor whose
    /// request id a live lease of the same user already answers is a duplicate (the client's
    /// retry was placed anew before this agent registered): it is ordered away.
    pub(super) fn adopt(
        &mut self,
        id: NodeId,
        node: &str,
        info: &v1::ExecutorInfo,
        passwd_name: &impl Fn(u32) -> String,
        now: Now,
    ) -> Option<Order> {
        if let Some(kept) = self.by_request(info.uid, &info.request_id) {
            let reason = format!(
                "duplicate of lease {kept}, which answered the same request (id {}) of uid {}",
                info.request_id, info.uid
            );
            tracing::warn!(lease = %info.lease_id, node, %reason, "running executor not adopted");
            return Some(Order::destroy(
                node,
                &info.lease_id,
                &reason,
                EndCause::Operator,
            ));
        }
        let res = Resources::new(
            u32::try_from(info.cpus.len()).unwrap_or(u32::MAX),
            info.memory_mib,
            u32::try_from(info.gpus.len()).unwrap_or(u32::MAX),
        );
        let key = self.next_key;
        self.next_key += 1;
        // Until the node's first report the adopted leases are all the scheduler knows of it:
        // grow its total so they fit, with nothing left free.
        if self.nodes[id as usize].version.is_none() {
            self.cluster
                .update(id, |n| n.total = n.total.add(&res))
                .expect("registered node exists");
        }
        let placed = self.cluster.reserve(harvest_policies::Lease {
            id: key,
            client: u64::from(info.uid),
            node: id,
            res,
        });
        if let Err(e) = placed {
            tracing::warn!(lease = %info.lease_id, node, error = %e, "adopted lease does not fit the node's last report");
        }
        let left_ms = (info.expires_unix_ms - now.unix_ms).max(0) as u64;
        let secret = LeaseSecret::from_bytes(&info.secret).ok();
        let gid = if secret.is_some() { info.gid } else { info.uid };
        let idle_timeout = match info.idle_timeout_ms {
            0 => self.limits.default_idle_timeout,
            ms => Duration::from_millis(ms),
        };
        tracing::info!(lease = %info.lease_id, node, uid = info.uid, gid,
            with_secret = secret.is_some(), "adopted a running executor");
        self.leases.insert(
            info.lease_id.clone(),
            LeaseRecord {
                id: info.lease_id.clone(),
                node: node.to_owned(),
                uid: info.uid,
                user: passwd_name(info.uid),
                cpus: info.cpus.clone(),
                memory_mib: info.memory_mib,
                gpus: info.gpus.clone(),
                executor_address: info.address.clone(),
                created_unix_ms: now.unix_ms,
                expires_unix_ms: info.expires_unix_ms,
                last_active_unix_ms: now.unix_ms,
                phase: Phase::Active,
                key,
                gid,
                cores: info.cpus.len() as u32,
                secret,
                expires_at: now.instant + Duration::from_millis(left_ms),
                idle_timeout,
                last_active: now.instant,
                request_id: info.request_id.clone(),
                memory: info.memory.map(|m| harvest_core::region::MemorySpec {
                    region_mib: m.region_mib,
                    cpu_millis: m.cpu_millis,
                }),
            },
        );
        None
    }

    /// DestroyExecutor again for each ended lease `node`'s agent still lists
    /// [`DESTROY_RESEND_AFTER`] after the last one was sent: an order lost on the way (a full
    /// queue, a broken session) is repaired by the reports, and the agent ends a lease once
    /// however often it is told.
    pub(super) fn destroy_again(&mut self, node: &str, listed: &[String], now: Now) -> Vec<Order> {
        let mut orders = Vec::new();
        let mut still = HashMap::new();
        for lease in listed {
            let Some(rec) = self.leases.get(lease) else {
                continue;
            };
            if rec.is_live() || rec.node != node {
                continue;
            }
            let since = self.stopping.get(lease).copied().unwrap_or(now.instant);
            let since = if now.instant.duration_since(since) >= DESTROY_RESEND_AFTER {
                let cause = rec.phase.cause();
                let reason = format!(
                    "lease is {} ({})",
                    state_name(rec.phase.state() as i32),
                    rec.phase.reason()
                );
                tracing::info!(
                    lease,
                    node,
                    "ended lease still on its node: DestroyExecutor again"
                );
                orders.push(Order::destroy(node, lease, &reason, cause));
                now.instant
            } else {
                since
            };
            still.insert(lease.clone(), since);
        }
        self.stopping
            .retain(|id, _| self.leases.get(id).is_some_and(|r| r.node != node));
        self.stopping.extend(still);
        orders
    }
}
