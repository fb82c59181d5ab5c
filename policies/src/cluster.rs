//! The cluster as placement sees it: node states, the leases placed on them, and the indexes.
//!
//! Every change to a node's free resources goes through [`Cluster::update`], which keeps the
//! indexes ([`crate::index`]) consistent. Reserve and unreserve of leases are idempotent: reserving
//! a lease that is already held on the same node with the same resources does nothing, releasing
//! one that is not held does nothing, so a scheduler that retries after a lost reply cannot
//! double-count.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use crate::hash::IdMap;
use crate::index::{Buckets, IndexedSet, MaxTree};
use crate::resources::{ClientId, LeaseId, NodeId, NodeState, Resources};

/// A lease placed on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub client: ClientId,
    pub node: NodeId,
    pub res: Resources,
}

/// In which order the framework visits candidate nodes; the policy's configuration picks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CandidateOrder {
    /// Lowest node id first (first-fit).
    NodeOrder,
    /// Fewest free cores that still fit first (best-fit, packing).
    #[default]
    FewestFree,
    /// Most free cores first (spread).
    MostFree,
    /// Every node in id order, without the index: the baseline benchmarks compare against.
    Scan,
}

/// A cluster operation that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("node {0} is not in the cluster (it has {1} nodes): add it before using it")]
    UnknownNode(NodeId, usize),
    #[error(
        "lease {lease} is already held on node {held_on} with {held:?}; release it before placing it on node {node} with {asked:?}"
    )]
    LeaseConflict {
        lease: LeaseId,
        held_on: NodeId,
        held: Resources,
        node: NodeId,
        asked: Resources,
    },
    #[error("lease {lease} needs {need:?} but node {node} has only {free:?} free")]
    DoesNotFit {
        lease: LeaseId,
        node: NodeId,
        need: Resources,
        free: Resources,
    },
}

/// Node states plus the indexes and lease book-keeping.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    nodes: Vec<NodeState>,
    buckets: Buckets,
    tree: MaxTree,
    gpu_free: IndexedSet,
    /// Nodes in an interference state: kept out of `buckets` and `tree`, visited after them.
    interfering: IndexedSet,
    leases: IdMap<LeaseId, Lease>,
    node_leases: Vec<Vec<LeaseId>>,
    clients: IdMap<ClientId, ClientPlacement>,
}

/// Where one client's leases are: lease counts per node and per topology group. The hasher has
/// no random seed, so iteration (hints) is the same on every run.
#[derive(Debug, Clone, Default)]
pub struct ClientPlacement {
    pub nodes: IdMap<NodeId, u32>,
    pub groups: IdMap<u32, u32>,
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// `count` identical nodes, `group_size` per topology group.
    pub fn uniform(count: u32, shape: Resources, group_size: u32) -> Self {
        let mut c = Self::new();
        for id in 0..count {
            c.add_node(id / group_size.max(1), shape);
        }
        c
    }

    /// Adds a node and returns its id (ids are dense, in order of addition).
    pub fn add_node(&mut self, group: u32, total: Resources) -> NodeId {
        let id = self.nodes.len() as NodeId;
        let node = NodeState::new(id, group, total);
        self.index_insert(&node);
        self.nodes.push(node);
        self.node_leases.push(Vec::new());
        id
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> Result<&NodeState, ClusterError> {
        self.nodes
            .get(id as usize)
            .ok_or(ClusterError::UnknownNode(id, self.nodes.len()))
    }

    /// Applies `change` to a node and re-indexes it.
    pub fn update(
        &mut self,
        id: NodeId,
        change: impl FnOnce(&mut NodeState),
    ) -> Result<(), ClusterError> {
        let len = self.nodes.len();
        let node = self
            .nodes
            .get_mut(id as usize)
            .ok_or(ClusterError::UnknownNode(id, len))?;
        let before = node.free();
        let was_interfering = node.interference;
        change(node);
        let after = node.free();
        let interfering = node.interference;
        if before != after || was_interfering != interfering {
            if was_interfering {
                self.interfering.remove(id);
            } else {
                self.buckets.remove(id, before.cores, before.mem_mib);
            }
            if interfering {
                self.interfering.insert(id);
                self.tree.set(id, 0, 0);
            } else {
                self.buckets.insert(id, after.cores, after.mem_mib);
                self.tree.set(id, after.cores, after.mem_mib);
            }
            if after.gpus > 0 {
                self.gpu_free.insert(id);
            } else {
                self.gpu_free.remove(id);
            }
        }
        Ok(())
    }

    fn index_insert(&mut self, node: &NodeState) {
        let free = node.free();
        self.buckets.insert(node.id, free.cores, free.mem_mib);
        self.tree.set(node.id, free.cores, free.mem_mib);
        if free.gpus > 0 {
            self.gpu_free.insert(node.id);
        }
    }

    /// Sets what the batch jobs on a node hold. Returns the leases that must be reclaimed (newest
    /// first) for batch plus functions to fit the node again; the caller releases them.
    pub fn set_batch(
        &mut self,
        id: NodeId,
        batch: Resources,
    ) -> Result<Vec<LeaseId>, ClusterError> {
        self.update(id, |n| n.batch = batch)?;
        Ok(self.reclaim_plan(id))
    }

    /// The newest leases on `id` whose release makes batch plus functions fit the node.
    pub fn reclaim_plan(&self, id: NodeId) -> Vec<LeaseId> {
        let Some(node) = self.nodes.get(id as usize) else {
            return Vec::new();
        };
        let mut function = node.function;
        let mut plan = Vec::new();
        for lease in self.node_leases[id as usize].iter().rev() {
            if node.total.fits(&node.batch.add(&function)) {
                break;
            }
            let res = self.leases[lease].res;
            function = function.saturating_sub(&res);
            plan.push(*lease);
        }
        plan
    }

    /// Places a lease. Idempotent: the same lease on the same node with the same resources is a
    /// no-op; anything else under an id already held is a conflict.
    pub fn reserve(&mut self, lease: Lease) -> Result<(), ClusterError> {
        if let Some(held) = self.leases.get(&lease.id) {
            if held.node == lease.node && held.res == lease.res {
                return Ok(());
            }
            return Err(ClusterError::LeaseConflict {
                lease: lease.id,
                held_on: held.node,
                held: held.res,
                node: lease.node,
                asked: lease.res,
            });
        }
        let free = self.node(lease.node)?.free();
        if !free.fits(&lease.res) {
            return Err(ClusterError::DoesNotFit {
                lease: lease.id,
                node: lease.node,
                need: lease.res,
                free,
            });
        }
        self.update(lease.node, |n| n.function = n.function.add(&lease.res))?;
        self.leases.insert(lease.id, lease);
        self.node_leases[lease.node as usize].push(lease.id);
        let group = self.nodes[lease.node as usize].group;
        let placement = self.clients.entry(lease.client).or_default();
        *placement.nodes.entry(lease.node).or_default() += 1;
        *placement.groups.entry(group).or_default() += 1;
        Ok(())
    }

    /// Releases a lease and returns it; `None` (and nothing changes) when it is not held.
    pub fn unreserve(&mut self, id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.update(lease.node, |n| {
            n.function = n.function.saturating_sub(&lease.res)
        })
        .expect("a held lease's node exists");
        let on_node = &mut self.node_leases[lease.node as usize];
        if let Some(p) = on_node.iter().position(|l| *l == id) {
            on_node.remove(p);
        }
        let group = self.nodes[lease.node as usize].group;
        if let Some(placement) = self.clients.get_mut(&lease.client) {
            decrement(&mut placement.nodes, lease.node);
            decrement(&mut placement.groups, group);
            if placement.nodes.is_empty() {
                self.clients.remove(&lease.client);
            }
        }
        Some(lease)
    }

    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// The leases held on a node, oldest first.
    pub fn leases_on(&self, id: NodeId) -> &[LeaseId] {
        self.node_leases.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Where `client` holds leases (`None` when it holds none).
    pub fn client(&self, client: ClientId) -> Option<&ClientPlacement> {
        self.clients.get(&client)
    }

    /// The nodes where `client` holds leases, with how many, in node order.
    pub fn client_nodes(&self, client: ClientId) -> Vec<(NodeId, u32)> {
        let mut v: Vec<(NodeId, u32)> = self
            .client(client)
            .map(|p| p.nodes.iter().map(|(n, c)| (*n, *c)).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Visits nodes with at least `need.cores` free cores (and a free GPU when `need.gpus > 0`)
    /// in `order`, until `visit` breaks. Nodes are visited at most once. Nodes in an interference
    /// state come after all others (in no particular order), or not at all with
    /// `skip_interfering`.
    pub fn candidates(
        &self,
        order: CandidateOrder,
        need: &Resources,
        skip_interfering: bool,
        mut visit: impl FnMut(NodeId) -> ControlFlow<()>,
    ) {
        if self
            .candidates_indexed(order, need, skip_interfering, &mut visit)
            .is_break()
            || skip_interfering
            || order == CandidateOrder::Scan
            || need.gpus > 0
        {
            return;
        }
        for &id in self.interfering.as_slice() {
            let free = self.nodes[id as usize].free();
            if free.cores >= need.cores && free.mem_mib >= need.mem_mib && visit(id).is_break() {
                return;
            }
        }
    }

    fn candidates_indexed(
        &self,
        order: CandidateOrder,
        need: &Resources,
        skip_interfering: bool,
        visit: &mut impl FnMut(NodeId) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if order == CandidateOrder::Scan {
            for id in 0..self.nodes.len() as NodeId {
                if !(skip_interfering && self.nodes[id as usize].interference) {
                    visit(id)?;
                }
            }
            return ControlFlow::Continue(());
        }
        if need.gpus > 0 {
            for &id in self.gpu_free.as_slice() {
                let node = &self.nodes[id as usize];
                if node.free().cores >= need.cores && !(skip_interfering && node.interference) {
                    visit(id)?;
                }
            }
            return ControlFlow::Continue(());
        }
        match order {
            CandidateOrder::NodeOrder => {
                let mut from = 0;
                while let Some(id) = self.tree.first_fit(from, need.cores, need.mem_mib) {
                    visit(id)?;
                    from = id + 1;
                }
            }
            CandidateOrder::FewestFree => {
                for f in need.cores..=self.buckets.max_free() {
                    for set in self.buckets.sets(f, need.mem_mib, false) {
                        for &id in set {
                            visit(id)?;
                        }
                    }
                }
            }
            CandidateOrder::MostFree => {
                for f in (need.cores..=self.buckets.max_free()).rev() {
                    for set in self.buckets.sets(f, need.mem_mib, true) {
                        for &id in set {
                            visit(id)?;
                        }
                    }
                }
            }
            CandidateOrder::Scan => unreachable!("handled above"),
        }
        ControlFlow::Continue(())
    }
}

fn decrement(map: &mut IdMap<u32, u32>, key: u32) {
    if let Some(count) = map.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: LeaseId, client: ClientId, node: NodeId, cores: u32) -> Lease {
        Lease {
            id,
            client,
            node,
            res: Resources::new(cores, 100, 0),
        }
    }

    fn visit_all(c: &Cluster, order: CandidateOrder, need: Resources) -> Vec<NodeId> {
        let mut seen = Vec::new();
        c.candidates(order, &need, false, |id| {
            seen.push(id);
            ControlFlow::Continue(())
        });
        seen
    }

    #[test]
    fn reserve_and_unreserve_are_idempotent() {
        let mut c = Cluster::uniform(2, Resources::new(4, 1000, 0), 1);
        c.reserve(lease(1, 9, 0, 2)).unwrap();
        c.reserve(lease(1, 9, 0, 2)).unwrap();
        assert_eq!(c.node(0).unwrap().function, Resources::new(2, 100, 0));
        assert_eq!(c.client_nodes(9), [(0, 1)]);
        assert!(matches!(
            c.reserve(lease(1, 9, 1, 2)),
            Err(ClusterError::LeaseConflict { lease: 1, .. })
        ));
        assert!(c.unreserve(1).is_some());
        assert!(c.unreserve(1).is_none());
        assert_eq!(c.node(0).unwrap().function, Resources::ZERO);
        assert!(c.client_nodes(9).is_empty());
        assert!(c.client(9).is_none());
        assert_eq!(c.lease_count(), 0);
    }

    #[test]
    fn reserve_refuses_what_does_not_fit_and_unknown_nodes() {
        let mut c = Cluster::uniform(1, Resources::new(4, 1000, 0), 1);
        assert!(matches!(
            c.reserve(lease(1, 1, 0, 5)),
            Err(ClusterError::DoesNotFit { node: 0, .. })
        ));
        assert_eq!(
            c.reserve(lease(2, 1, 7, 1)),
            Err(ClusterError::UnknownNode(7, 1))
        );
    }

    #[test]
    fn candidate_orders_follow_free_cores_and_ids() {
        let mut c = Cluster::uniform(4, Resources::new(8, 1000, 0), 2);
        c.set_batch(0, Resources::new(6, 0, 0)).unwrap(); // 2 free
        c.set_batch(1, Resources::new(2, 0, 0)).unwrap(); // 6 free
        c.set_batch(3, Resources::new(7, 0, 0)).unwrap(); // 1 free
        let need = Resources::new(2, 0, 0);
        assert_eq!(visit_all(&c, CandidateOrder::NodeOrder, need), [0, 1, 2]);
        assert_eq!(visit_all(&c, CandidateOrder::FewestFree, need), [0, 1, 2]);
        assert_eq!(visit_all(&c, CandidateOrder::MostFree, need), [2, 1, 0]);
        assert_eq!(
            visit_all(&c, CandidateOrder::Scan, need),
            [0, 1, 2, 3],
            "no index"
        );
        c.reserve(lease(5, 1, 2, 7)).unwrap(); // node 2: 1 free
        assert_eq!(visit_all(&c, CandidateOrder::FewestFree, need), [0, 1]);
    }

    #[test]
    fn interfering_nodes_come_last_or_not_at_all() {
        let mut c = Cluster::uniform(4, Resources::new(8, 1000, 0), 1);
        c.set_batch(1, Resources::new(6, 0, 0)).unwrap();
        c.update(1, |n| n.interference = true).unwrap();
        let need = Resources::new(1, 0, 0);
        let fewest = visit_all(&c, CandidateOrder::FewestFree, need);
        assert_eq!(
            fewest[3], 1,
            "the interfering node (2 free) comes last: {fewest:?}"
        );
        assert_eq!(visit_all(&c, CandidateOrder::NodeOrder, need), [0, 2, 3, 1]);
        let mut skipped = Vec::new();
        c.candidates(CandidateOrder::FewestFree, &need, true, |id| {
            skipped.push(id);
            ControlFlow::Continue(())
        });
        assert_eq!(skipped, fewest[..3]);
        c.update(1, |n| n.interference = false).unwrap();
        let back = visit_all(&c, CandidateOrder::FewestFree, need);
        assert_eq!(
            back[0], 1,
            "back in its bucket, first for best-fit: {back:?}"
        );
    }

    #[test]
    fn gpu_requests_visit_only_nodes_with_a_free_gpu() {
        let mut c = Cluster::new();
        c.add_node(0, Resources::new(8, 1000, 0));
        c.add_node(0, Resources::new(8, 1000, 2));
        let need = Resources::new(1, 0, 1);
        assert_eq!(visit_all(&c, CandidateOrder::NodeOrder, need), [1]);
        c.set_batch(1, Resources::new(0, 0, 2)).unwrap();
        assert_eq!(
            visit_all(&c, CandidateOrder::NodeOrder, need),
            [] as [NodeId; 0]
        );
    }

    #[test]
    fn batch_growth_reclaims_newest_leases_first() {
        let mut c = Cluster::uniform(1, Resources::new(8, 1000, 0), 1);
        c.reserve(lease(1, 1, 0, 2)).unwrap();
        c.reserve(lease(2, 1, 0, 2)).unwrap();
        c.reserve(lease(3, 2, 0, 2)).unwrap();
        let plan = c.set_batch(0, Resources::new(4, 0, 0)).unwrap();
        assert_eq!(plan, [3]);
        let plan = c.set_batch(0, Resources::new(8, 0, 0)).unwrap();
        assert_eq!(plan, [3, 2, 1]);
        for l in plan {
            c.unreserve(l);
        }
        assert!(!c.node(0).unwrap().overcommitted());
        assert_eq!(c.leases_on(0), &[] as &[LeaseId]);
    }
}
