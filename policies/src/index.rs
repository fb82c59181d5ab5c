//! The indexes that keep placement at 10,000 nodes under 100 µs.
//!
//! A linear scan runs every filter on every node: ~10,000 plugin calls per decision. Instead the
//! cluster keeps, updated on every change of a node's free resources in O(log n):
//! - [`Buckets`]: one set of nodes per (free cores, power-of-two class of free memory), so
//!   best-fit walks the fitting buckets upwards and spread walks downwards, touching only nodes
//!   that have the cores and (but for the request's own memory class) the memory;
//! - [`MaxTree`]: a segment tree of free cores and memory over node ids, so first-fit finds the
//!   lowest node id that fits in O(log n) without visiting the nodes before it;
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
    #[inline]
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

    #[inline]
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

    #[inline]
    pub fn contains(&self, id: NodeId) -> bool {
        self.pos.get(id as usize).is_some_and(|&p| p != NONE)
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    #[inline]
    pub fn as_slice(&self) -> &[NodeId] {
        &self.members
    }
}

/// Memory classes: a node with `m` MiB free is in class `bit_length(m)` (0 for none), so every
/// node in a class above a request's class has room for it, and only the request's own class
/// needs the filter to check.
pub const MEM_CLASSES: usize = 48;

/// The memory class of `mib`.
pub fn mem_class(mib: u64) -> usize {
    ((u64::BITS - mib.leading_zeros()) as usize).min(MEM_CLASSES - 1)
}

/// Nodes grouped by (free cores, memory class of free memory).
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    /// Indexed by `cores * MEM_CLASSES + class`.
    sets: Vec<Vec<NodeId>>,
    /// Per free-core count, a bit per memory class that has nodes.
    occupied: Vec<u64>,
    /// Each node's position in its set; indexed by node id.
    pos: Vec<u32>,
}

impl Buckets {
    fn key(cores: u32, mem_mib: u64) -> usize {
        cores as usize * MEM_CLASSES + mem_class(mem_mib)
    }

    pub fn insert(&mut self, id: NodeId, cores: u32, mem_mib: u64) {
        let k = Self::key(cores, mem_mib);
        if self.sets.len() <= k {
            self.sets
                .resize_with((cores as usize + 1) * MEM_CLASSES, Vec::new);
            self.occupied.resize(cores as usize + 1, 0);
        }
        if self.pos.len() <= id as usize {
            self.pos.resize(id as usize + 1, NONE);
        }
        self.pos[id as usize] = self.sets[k].len() as u32;
        self.sets[k].push(id);
        self.occupied[cores as usize] |= 1 << mem_class(mem_mib);
    }

    /// Removes a node inserted with the same `cores` and `mem_mib`.
    pub fn remove(&mut self, id: NodeId, cores: u32, mem_mib: u64) {
        let k = Self::key(cores, mem_mib);
        let Some(set) = self.sets.get_mut(k) else {
            return;
        };
        let p = self.pos[id as usize] as usize;
        if set.get(p) != Some(&id) {
            return;
        }
        let last = *set.last().expect("a member is present");
        set.swap_remove(p);
        if last != id {
            self.pos[last as usize] = p as u32;
        }
        self.pos[id as usize] = NONE;
        if set.is_empty() {
            self.occupied[cores as usize] &= !(1 << mem_class(mem_mib));
        }
    }

    /// The largest free-core count any bucket can hold.
    pub fn max_free(&self) -> u32 {
        self.occupied.len().saturating_sub(1) as u32
    }

    /// The non-empty sets with exactly `cores` free cores and memory class at least that of
    /// `mem_mib`, in ascending (or, with `descending`, descending) class order.
    pub fn sets(
        &self,
        cores: u32,
        mem_mib: u64,
        descending: bool,
    ) -> impl Iterator<Item = &[NodeId]> {
        let mask =
            self.occupied.get(cores as usize).copied().unwrap_or(0) & (!0u64 << mem_class(mem_mib));
        let base = cores as usize * MEM_CLASSES;
        let mut bits = mask;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let class = if descending {
                63 - bits.leading_zeros() as usize
            } else {
                bits.trailing_zeros() as usize
            };
            bits &= !(1 << class);
            Some(self.sets[base + class].as_slice())
        })
    }
}

/// A segment tree over node ids holding each node's free cores and memory, for leftmost-fit
/// queries. A subtree is skipped when its largest free cores or its largest free memory is too
/// small, so the search visits few nodes that fit in one dimension only.
#[derive(Debug, Clone, Default)]
pub struct MaxTree {
    /// Leaves start at `size`; node `i` has children `2i` and `2i+1`.
    cores: Vec<u32>,
    mem: Vec<u64>,
    size: usize,
}

impl MaxTree {
    pub fn set(&mut self, id: NodeId, cores: u32, mem_mib: u64) {
        let i = id as usize;
        if i >= self.size {
            self.grow(i + 1);
        }
        let mut p = self.size + i;
        self.cores[p] = cores;
        self.mem[p] = mem_mib;
        while p > 1 {
            p /= 2;
            self.cores[p] = self.cores[2 * p].max(self.cores[2 * p + 1]);
            self.mem[p] = self.mem[2 * p].max(self.mem[2 * p + 1]);
        }
    }

    fn grow(&mut self, min_len: usize) {
        let new_size = min_len.next_power_of_two().max(1);
        let (old_c, old_m): (Vec<u32>, Vec<u64>) = if self.size == 0 {
            (Vec::new(), Vec::new())
        } else {
            (
                self.cores[self.size..2 * self.size].to_vec(),
                self.mem[self.size..2 * self.size].to_vec(),
            )
        };
        self.size = new_size;
        self.cores = vec![0; 2 * new_size];
        self.mem = vec![0; 2 * new_size];
        self.cores[new_size..new_size + old_c.len()].copy_from_slice(&old_c);
        self.mem[new_size..new_size + old_m.len()].copy_from_slice(&old_m);
        for p in (1..new_size).rev() {
            self.cores[p] = self.cores[2 * p].max(self.cores[2 * p + 1]);
            self.mem[p] = self.mem[2 * p].max(self.mem[2 * p + 1]);
        }
    }

    /// The lowest id `>= from` with at least `cores` free cores and `mem_mib` free memory.
    pub fn first_fit(&self, from: NodeId, cores: u32, mem_mib: u64) -> Option<NodeId> {
        if self.size == 0 || from as usize >= self.size {
            return None;
        }
        self.descend(1, 0, self.size, from as usize, cores, mem_mib)
            .map(|i| i as NodeId)
    }

    fn descend(
        &self,
        p: usize,
        lo: usize,
        hi: usize,
        from: usize,
        cores: u32,
        mem: u64,
    ) -> Option<usize> {
        if hi <= from || self.cores[p] < cores || self.mem[p] < mem {
            return None;
        }
        if hi - lo == 1 {
            return Some(lo);
        }
        let mid = (lo + hi) / 2;
        self.descend(2 * p, lo, mid, from, cores, mem)
            .or_else(|| self.descend(2 * p + 1, mid, hi, from, cores, mem))
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
    fn buckets_key_on_cores_and_memory_class() {
        let mut b = Buckets::default();
        b.insert(1, 4, 1000);
        b.insert(2, 4, 5000);
        b.insert(3, 4, 0);
        b.remove(1, 4, 1000);
        b.insert(1, 0, 1000);
        fn sets(b: &Buckets, c: u32, m: u64, d: bool) -> Vec<NodeId> {
            b.sets(c, m, d).flatten().copied().collect()
        }
        assert_eq!(sets(&b, 4, 0, false), [3, 2]);
        assert_eq!(sets(&b, 4, 0, true), [2, 3]);
        assert_eq!(sets(&b, 4, 3000, false), [2], "class of 3000 and above");
        assert_eq!(
            sets(&b, 4, 4097, false),
            [2],
            "same class: the filter decides"
        );
        assert_eq!(sets(&b, 4, 9000, false), [] as [NodeId; 0]);
        assert_eq!(sets(&b, 0, 0, false), [1]);
        assert_eq!(b.max_free(), 4);
        b.remove(2, 4, 5000);
        b.remove(2, 4, 5000);
        assert_eq!(sets(&b, 4, 0, false), [3]);
    }

    #[test]
    fn mem_classes_bound_what_a_class_holds() {
        assert_eq!(mem_class(0), 0);
        assert_eq!(mem_class(1), 1);
        assert_eq!(mem_class(1023), 10);
        assert_eq!(mem_class(1024), 11);
        assert_eq!(mem_class(u64::MAX), MEM_CLASSES - 1);
    }

    #[test]
    fn max_tree_finds_leftmost_fit_in_both_dimensions() {
        let mut t = MaxTree::default();
        for (id, c, m) in [(0, 1, 100), (1, 4, 10), (2, 2, 50), (5, 8, 80)] {
            t.set(id, c, m);
        }
        assert_eq!(t.first_fit(0, 2, 0), Some(1));
        assert_eq!(t.first_fit(0, 2, 20), Some(2), "node 1 lacks memory");
        assert_eq!(t.first_fit(3, 2, 20), Some(5));
        assert_eq!(t.first_fit(0, 9, 0), None);
        t.set(2, 0, 0);
        assert_eq!(t.first_fit(0, 2, 20), Some(5));
        t.set(40, 16, 1000);
        assert_eq!(t.first_fit(6, 9, 0), Some(40));
        assert_eq!(t.first_fit(0, 1, 90), Some(0));
    }
}
