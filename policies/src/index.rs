//! The indexes that keep placement at 10,000 nodes under 100 µs.
//!
//! A linear scan runs every filter on every node: ~10,000 plugin calls per decision. Instead the
//! cluster keeps, updated on every change of a node's free resources in O(log n):
//! - [`Buckets`]: one set of nodes per free-core count, so best-fit walks the emptiest-fitting
//!   buckets upwards and spread walks downwards, touching only nodes that have the cores;
//! - [`MaxTree`]: a segment tree of free cores over node ids, so first-fit finds the lowest node
//!   id with enough cores in O(log n) without visiting the nodes before it;
//! - an [`IndexedSet`] of nodes with a free GPU, so GPU requests only visit GPU nodes.
//!
//! The framework stops after a bounded number of feasible nodes (Kubernetes'
//! `percentageOfNodesToScore`), so a decision costs O(sample x plugins + log n).

use crate::resources::NodeId;

/// A set of node ids with O(1) insert and remove, iterated in an order that depends only on the
/// sequence of operations (so runs are reproducible).
#[derive(Debug, Clone, Default)]
pub struct IndexedSet {
    members: Vec<NodeId>,
    /// Position of each node in `members`, `NONE` when absent; indexed by node id.
    pos: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl IndexedSet {
    pub fn insert(&mut self, id: NodeId) {
        let i = id as usize;
        if self.pos.len() <= i {
            self.pos.resize(i + 1, NONE);
        }
        if self.pos[i] == NONE {
            self.pos[i] = self.members.len() as u32;
            self.members.push(id);
        }
    }

    pub fn remove(&mut self, id: NodeId) {
        let Some(&p) = self.pos.get(id as usize) else {
            return;
        };
        if p == NONE {
            return;
        }
        let last = *self.members.last().expect("a member is present");
        self.members.swap_remove(p as usize);
        if last != id {
            self.pos[last as usize] = p;
        }
        self.pos[id as usize] = NONE;
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.pos.get(id as usize).is_some_and(|&p| p != NONE)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn as_slice(&self) -> &[NodeId] {
        &self.members
    }
}

/// Nodes grouped by their number of free cores.
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    by_free: Vec<IndexedSet>,
}

impl Buckets {
    pub fn insert(&mut self, id: NodeId, free_cores: u32) {
        let f = free_cores as usize;
        if self.by_free.len() <= f {
            self.by_free.resize_with(f + 1, IndexedSet::default);
        }
        self.by_free[f].insert(id);
    }

    pub fn remove(&mut self, id: NodeId, free_cores: u32) {
        if let Some(set) = self.by_free.get_mut(free_cores as usize) {
            set.remove(id);
        }
    }

    /// The largest free-core count any bucket can hold.
    pub fn max_free(&self) -> u32 {
        self.by_free.len().saturating_sub(1) as u32
    }

    /// The nodes with exactly `free_cores` free cores.
    pub fn bucket(&self, free_cores: u32) -> &[NodeId] {
        self.by_free
            .get(free_cores as usize)
            .map_or(&[], IndexedSet::as_slice)
    }
}

/// A segment tree over node ids holding each node's free cores, for leftmost-fit queries.
#[derive(Debug, Clone, Default)]
pub struct MaxTree {
    /// Leaves start at `size`; node `i` has children `2i` and `2i+1`.
    tree: Vec<u32>,
    size: usize,
}

impl MaxTree {
    pub fn set(&mut self, id: NodeId, value: u32) {
        let i = id as usize;
        if i >= self.size {
            self.grow(i + 1);
        }
        let mut p = self.size + i;
        self.tree[p] = value;
        while p > 1 {
            p /= 2;
            self.tree[p] = self.tree[2 * p].max(self.tree[2 * p + 1]);
        }
    }

    fn grow(&mut self, min_len: usize) {
        let new_size = min_len.next_power_of_two().max(1);
        let old: Vec<u32> = if self.size == 0 {
            Vec::new()
        } else {
            self.tree[self.size..2 * self.size].to_vec()
        };
        self.size = new_size;
        self.tree = vec![0; 2 * new_size];
        self.tree[new_size..new_size + old.len()].copy_from_slice(&old);
        for p in (1..new_size).rev() {
            self.tree[p] = self.tree[2 * p].max(self.tree[2 * p + 1]);
        }
    }

    /// The lowest id `>= from` whose value is `>= need`.
    pub fn first_at_least(&self, from: NodeId, need: u32) -> Option<NodeId> {
        if self.size == 0 || from as usize >= self.size {
            return None;
        }
        self.descend(1, 0, self.size, from as usize, need)
            .map(|i| i as NodeId)
    }

    fn descend(&self, p: usize, lo: usize, hi: usize, from: usize, need: u32) -> Option<usize> {
        if hi <= from || self.tree[p] < need {
            return None;
        }
        if hi - lo == 1 {
            return Some(lo);
        }
        let mid = (lo + hi) / 2;
        self.descend(2 * p, lo, mid, from, need)
            .or_else(|| self.descend(2 * p + 1, mid, hi, from, need))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_set_insert_remove_are_idempotent() {
        let mut s = IndexedSet::default();
        s.insert(3);
        s.insert(3);
        s.insert(7);
        assert_eq!(s.len(), 2);
        s.remove(3);
        s.remove(3);
        s.remove(99);
        assert_eq!(s.as_slice(), &[7]);
        assert!(!s.contains(3));
        assert!(s.contains(7));
    }

    #[test]
    fn buckets_move_nodes_between_counts() {
        let mut b = Buckets::default();
        b.insert(1, 4);
        b.insert(2, 4);
        b.remove(1, 4);
        b.insert(1, 0);
        assert_eq!(b.bucket(4), &[2]);
        assert_eq!(b.bucket(0), &[1]);
        assert_eq!(b.bucket(9), &[] as &[NodeId]);
        assert_eq!(b.max_free(), 4);
    }

    #[test]
    fn max_tree_finds_leftmost_fit_after_growth() {
        let mut t = MaxTree::default();
        for (id, v) in [(0, 1), (1, 4), (2, 2), (5, 8)] {
            t.set(id, v);
        }
        assert_eq!(t.first_at_least(0, 2), Some(1));
        assert_eq!(t.first_at_least(2, 2), Some(2));
        assert_eq!(t.first_at_least(3, 2), Some(5));
        assert_eq!(t.first_at_least(0, 9), None);
        t.set(1, 0);
        assert_eq!(t.first_at_least(0, 3), Some(5));
        t.set(40, 16);
        assert_eq!(t.first_at_least(6, 9), Some(40));
        assert_eq!(t.first_at_least(0, 5), Some(5));
    }
}
