//! Which cores of which nodes a batch job gets.
//!
//! Each node has a count of cores still free *for batch* (leases do not count: the batch job
//! always wins and reclaims them). Nodes are kept in buckets by that count, so a placement
//! looks at no more buckets than a node has cores.
//!
//! - **Exclusive** (node-granular): a job takes `ceil(procs / cores)` wholly free nodes, its
//!   processors spread evenly; what it leaves idle on them is harvestable, not usable by batch.
//! - **Shared** (core-granular, Slurm's `cons_tres`): a job takes cores anywhere: on one node
//!   when one has room (the fullest that fits, to keep whole nodes for big jobs), otherwise the
//!   largest free chunks first.

use harvest_policies::NodeId;
use harvest_policies::index::IndexedSet;

/// Core-granular or node-exclusive (the resolved [`super::trace::AllocationMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Shared,
    Exclusive,
}

/// The batch view of the nodes (`buckets[k]`: the nodes with `k > 0` cores free).
#[derive(Debug)]
pub struct Allocator {
    pub granularity: Granularity,
    cores: Vec<u32>,
    free: Vec<u32>,
    buckets: Vec<IndexedSet>,
    free_units: u64,
}

impl Allocator {
    pub fn new(granularity: Granularity, node_cores: &[u32]) -> Self {
        let max = node_cores.iter().copied().max().unwrap_or(1) as usize;
        let mut buckets = vec![IndexedSet::default(); max + 1];
        for (i, &c) in node_cores.iter().enumerate() {
            if c > 0 {
                buckets[c as usize].insert(i as NodeId);
            }
        }
        let free_units = match granularity {
            Granularity::Shared => node_cores.iter().map(|&c| u64::from(c)).sum(),
            Granularity::Exclusive => node_cores.len() as u64,
        };
        Self {
            granularity,
            cores: node_cores.to_vec(),
            free: node_cores.to_vec(),
            buckets,
            free_units,
        }
    }

    /// What a job of `procs` processors needs, in this allocator's units.
    pub fn units_for(&self, procs: u32) -> u32 {
        match self.granularity {
            Granularity::Shared => procs,
            Granularity::Exclusive => procs.div_ceil(self.cores[0]),
        }
    }

    /// Units free now (cores, or wholly free nodes).
    pub fn free_units(&self) -> u32 {
        self.free_units.min(u64::from(u32::MAX)) as u32
    }

    /// Units of the whole machine.
    pub fn total_units(&self) -> u64 {
        match self.granularity {
            Granularity::Shared => self.cores.iter().map(|&c| u64::from(c)).sum(),
            Granularity::Exclusive => self.cores.len() as u64,
        }
    }

    fn set_free(&mut self, node: NodeId, to: u32) {
        let from = self.free[node as usize];
        // Bucket 0 (nodes with nothing free) is never searched: not kept.
        if from > 0 {
            self.buckets[from as usize].remove(node);
        }
        if to > 0 {
            self.buckets[to as usize].insert(node);
        }
        self.free[node as usize] = to;
        match self.granularity {
            Granularity::Shared => {
                self.free_units = self.free_units + u64::from(to) - u64::from(from);
            }
            Granularity::Exclusive => {
                let full = self.cores[node as usize];
                if from == full && to != full {
                    self.free_units -= 1;
                } else if from != full && to == full {
                    self.free_units += 1;
                }
            }
        }
    }

    /// Takes cores for `procs` processors; `(node, cores)` pairs, or `None` (nothing taken)
    /// when they are not free.
    pub fn take(&mut self, procs: u32) -> Option<Vec<(NodeId, u32)>> {
        let mut out = Vec::new();
        self.take_into(procs, &mut out).then_some(out)
    }

    /// [`Allocator::take`] into `out` (cleared first; the engine's buffer, so a start
    /// allocates nothing); false (nothing taken, `out` empty) when the cores are not free.
    pub fn take_into(&mut self, procs: u32, out: &mut Vec<(NodeId, u32)>) -> bool {
        out.clear();
        if self.units_for(procs) > self.free_units() {
            return false;
        }
        match self.granularity {
            Granularity::Exclusive => {
                let full = self.cores[0] as usize;
                let n = self.units_for(procs);
                for i in 0..n {
                    let Some(&node) = self.buckets[full].as_slice().last() else {
                        unreachable!("{n} wholly free nodes were counted")
                    };
                    let cores = procs / n + u32::from(i < procs % n);
                    self.set_free(node, 0);
                    out.push((node, cores));
                }
            }
            Granularity::Shared => {
                let mut left = procs;
                let max = self.buckets.len() - 1;
                // Whole free nodes while at least a node's worth is left (what the search
                // below picks then: the largest chunk), without the search.
                while left as usize >= max
                    && let Some(&node) = self.buckets[max].as_slice().last()
                {
                    self.set_free(node, 0);
                    out.push((node, max as u32));
                    left -= max as u32;
                }
                while left > 0 {
                    let fit = (left as usize..=max).find(|&k| !self.buckets[k].is_empty());
                    let k = match fit {
                        Some(k) => k,
                        None => {
                            let Some(k) = (1..(left as usize).min(max + 1))
                                .rev()
                                .find(|&k| !self.buckets[k].is_empty())
                            else {
                                unreachable!("{left} more free cores were counted")
                            };
                            k
                        }
                    };
                    let node = *self.buckets[k].as_slice().last().expect("not empty");
                    let take = left.min(k as u32);
                    self.set_free(node, k as u32 - take);
                    out.push((node, take));
                    left -= take;
                }
            }
        }
        true
    }

    /// Gives back what [`Allocator::take`] gave for one node.
    pub fn give_back(&mut self, node: NodeId, cores: u32) {
        let to = match self.granularity {
            Granularity::Exclusive => self.cores[node as usize],
            Granularity::Shared => self.free[node as usize] + cores,
        };
        self.set_free(node, to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_packs_onto_the_fullest_node_that_fits() {
        let mut a = Allocator::new(Granularity::Shared, &[4, 4, 4]);
        assert_eq!(a.take(3), Some(vec![(2, 3)]));
        // Node 2 has 1 free: a 1-core job goes there, not onto an empty node.
        assert_eq!(a.take(1), Some(vec![(2, 1)]));
        assert_eq!(a.take(6).map(|v| v.len()), Some(2), "4 + 2 over two nodes");
        assert_eq!(a.free_units(), 2);
        assert_eq!(a.take(3), None, "only 2 cores are free");
        a.give_back(2, 3);
        assert_eq!(a.free_units(), 5);
    }

    #[test]
    fn exclusive_takes_whole_nodes() {
        let mut a = Allocator::new(Granularity::Exclusive, &[4, 4, 4]);
        assert_eq!(a.units_for(5), 2);
        let got = a.take(5).unwrap();
        assert_eq!(got.iter().map(|x| x.1).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(a.free_units(), 1);
        assert_eq!(a.take(5), None);
        a.give_back(got[0].0, 3);
        assert_eq!(a.free_units(), 2);
    }
}
