//! Placement glue: a request through the configured policy onto a node's free resources, the
//! lease it makes (PENDING, reserved) and the order that starts its executor; the agent's
//! ready and moved events for it.

use std::time::Duration;

use harvest_core::invoke::auth::LeaseSecret;
use harvest_policies::{Decision, Request, Resources};
use harvest_proto::v1::{self};
use harvest_proto::views::state_name;

use super::{
    BookError, Event, Health, LeaseBook, LeaseRecord, Now, Order, Phase, unpredictable_u64,
};
use crate::identity::Identity;

/// What a request will hold on its node, MiB: a memory lease's region and its executor's
/// overhead; a function lease's memory, or `default_per_core` MiB per core when it asks none.
pub fn held_memory_mib(req: &v1::AcquireLeaseRequest, default_per_core: u64) -> u64 {
    match (&req.memory, req.memory_mib) {
        (Some(m), _) => harvest_core::region::MemorySpec {
            region_mib: m.region_mib,
            cpu_millis: m.cpu_millis,
        }
        .held_mib(),
        (None, 0) => u64::from(req.cores) * default_per_core,
        (None, m) => m,
    }
}

impl LeaseBook {
    /// Places a lease for `who` and returns the order that starts its executor. The lease is
    /// PENDING until [`executor_ready`](Self::executor_ready) or [`end`](Self::end).
    pub fn place(
        &mut self,
        req: &v1::AcquireLeaseRequest,
        who: &Identity,
        now: Now,
    ) -> Result<(v1::Lease, Order), BookError> {
        let memory = match &req.memory {
            Some(m) => Some(
                m.to_core()
                    .map_err(|e| BookError::BadRequest(format!("memory: {e}")))?,
            ),
            None => None,
        };
        match memory {
            Some(_) if req.cores != 0 || req.gpus != 0 => {
                return Err(BookError::BadRequest(
                    "a memory lease holds no cores or GPUs of its own: send cores 0 and gpus 0"
                        .into(),
                ));
            }
            None if req.cores == 0 => {
                return Err(BookError::BadRequest(
                    "cores must be at least 1 (the executor needs a core)".into(),
                ));
            }
            _ => {}
        }
        let lifetime = match req.lifetime_ms {
            0 => self.limits.default_lifetime,
            ms => Duration::from_millis(ms),
        };
        if lifetime > self.limits.max_lifetime {
            return Err(BookError::BadRequest(format!(
                "lifetime {lifetime:?} is longer than the scheduler's maximum {:?}",
                self.limits.max_lifetime
            )));
        }
        let library = match memory {
            Some(_) => None,
            None => Some(
                req.library
                    .as_ref()
                    .and_then(|l| l.source.as_ref())
                    .ok_or_else(|| {
                        BookError::BadRequest(
                            "no function library: send its content or a path".into(),
                        )
                    })?,
            ),
        };
        let memory_mib = held_memory_mib(req, self.limits.default_memory_per_core_mib);
        let res = Resources::new(req.cores, memory_mib, req.gpus);
        let avoid: Vec<u32> = req
            .avoid_nodes
            .iter()
            .filter_map(|name| self.nodes.iter().position(|n| &n.name == name))
            .map(|i| i as u32)
            .collect();
        let key = self.next_key;
        self.next_key += 1;
        let decision = self
            .framework
            .place(
                &mut self.cluster,
                &Request {
                    lease: key,
                    client: u64::from(who.uid),
                    res,
                    data_nodes: &[],
                    avoid_nodes: &avoid,
                },
            )
            .map_err(|e| BookError::Placement(e.to_string()))?;
        let node = match decision {
            Decision::Placed(node) => node,
            Decision::Unschedulable {
                examined,
                rejections,
            } => {
                let up = self.nodes.iter().filter(|n| n.health == Health::Up).count();
                let reason = if rejections.is_empty() {
                    format!(
                        "{} node(s) known, {up} up; none has {} idle core(s) and {} MiB idle \
                         memory ({examined} examined)",
                        self.nodes.len(),
                        res.cores,
                        res.mem_mib
                    )
                } else {
                    rejections
                        .iter()
                        .map(|r| format!("{} rejected {} node(s): {}", r.plugin, r.nodes, r.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                return Err(BookError::Unschedulable {
                    cores: res.cores,
                    memory_mib: res.mem_mib,
                    gpus: res.gpus,
                    reason,
                });
            }
        };
        let node_name = self.nodes[node as usize].name.clone();
        // 64 random bits: a lease id names a directory, a cgroup and a lease others may not end,
        // so no one can guess the next one from the ones they saw.
        let id = format!("{}-{key}-{:016x}", self.id_prefix, unpredictable_u64());
        let expires_unix_ms = now.unix_ms + lifetime.as_millis() as i64;
        let idle_timeout = match req.idle_timeout_ms {
            0 => self.limits.default_idle_timeout,
            ms => Duration::from_millis(ms),
        };
        // Like the ids, no fallback: a guessable secret must not be made.
        let secret = LeaseSecret::random()
            .unwrap_or_else(|e| panic!("{e}: no unpredictable bytes for a lease secret"));
        let record = LeaseRecord {
            id: id.clone(),
            node: node_name.clone(),
            uid: who.uid,
            user: who.name.clone(),
            cpus: Vec::new(),
            memory_mib,
            gpus: Vec::new(),
            executor_address: String::new(),
            created_unix_ms: now.unix_ms,
            expires_unix_ms,
            last_active_unix_ms: now.unix_ms,
            phase: Phase::Pending,
            key,
            gid: who.gid,
            cores: res.cores,
            secret: Some(secret.clone()),
            expires_at: now.instant + lifetime,
            idle_timeout,
            last_active: now.instant,
            request_id: req.request_id.clone(),
            memory,
        };
        let wire = record.wire();
        self.leases.insert(id.clone(), record);
        tracing::info!(lease = %id, node = %node_name, uid = who.uid, ?res, "lease placed");
        let create = v1::CreateExecutor {
            lease_id: id,
            uid: who.uid,
            gid: who.gid,
            cores: res.cores,
            memory_mib,
            gpus: res.gpus,
            library: library.map(|l| v1::FunctionLibrary {
                source: Some(l.clone()),
            }),
            options: req.executor,
            expires_unix_ms,
            idle_timeout_ms: idle_timeout.as_millis() as u64,
            secret: secret.as_bytes().to_vec(),
            request_id: req.request_id.clone(),
            memory: memory.map(Into::into),
        };
        let order = Order {
            node: node_name,
            msg: v1::scheduler_message::Msg::Create(create),
        };
        Ok((wire, order))
    }

    /// Whether `node`'s agent may report on `lease`'s executor: only the node that holds the
    /// lease may (another agent's Ready would redirect the lease's client to an address of its
    /// choosing; its Exited would end someone else's lease). A lease the book does not know is
    /// no one's: the event is judged by the call it leads to (a late ready is answered with
    /// DestroyExecutor to the sender; an exit of an unknown lease changes nothing).
    pub fn check_holder(&self, node: &str, lease: &str) -> Result<(), BookError> {
        match self.leases.get(lease) {
            Some(rec) if rec.node != node => Err(BookError::NotHolder {
                lease: lease.to_owned(),
                node: node.to_owned(),
                holder: rec.node.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The agent reports the lease's executor listening: the lease becomes ACTIVE.
    pub fn executor_ready(
        &mut self,
        lease: &str,
        info: &v1::ExecutorInfo,
    ) -> Result<v1::Lease, BookError> {
        let rec = self
            .leases
            .get_mut(lease)
            .ok_or_else(|| BookError::UnknownLease(lease.to_owned()))?;
        rec.phase = rec
            .phase
            .next(Event::Ready)
            .map_err(|_| BookError::NotPending {
                lease: lease.to_owned(),
                state: state_name(rec.phase.state() as i32),
                reason: rec.phase.reason().to_owned(),
            })?;
        rec.cpus.clone_from(&info.cpus);
        rec.gpus.clone_from(&info.gpus);
        rec.executor_address.clone_from(&info.address);
        Ok(rec.wire())
    }

    /// The agent moved a live lease's executor to other CPUs (a batch step took some of its
    /// own): the lease lives on with the new ones.
    pub fn executor_moved(&mut self, lease: &str, info: &v1::ExecutorInfo) -> bool {
        match self.leases.get_mut(lease) {
            Some(rec) => match rec.phase.next(Event::Moved) {
                Ok(next) => {
                    rec.phase = next;
                    rec.cpus.clone_from(&info.cpus);
                    rec.gpus.clone_from(&info.gpus);
                    true
                }
                Err(_) => false,
            },
            _ => false,
        }
    }
}
