//! A map from increasing ids (the loop's leases) to values, kept as a window over the ids.
//!
//! The loop numbers its leases in the order they are placed, and most end within minutes, so
//! the live ones are a narrow band of recent ids: a deque indexed by `id - base` finds one
//! without hashing, and its neighbours (placed at about the same time) lie beside it in
//! memory. The window's front moves on as the oldest leases end. A lease that outlives many
//! later ones (a long Poisson lease) would hold the front back and the window would fill with
//! holes, so once the holes outnumber the live entries the oldest live entries are moved to a
//! hash map (`spill`): memory stays proportional to the live leases whatever their lengths.

use std::collections::VecDeque;

use harvest_policies::hash::IdMap;

/// Holes allowed in the window beyond the live entries before the oldest are spilled.
const SLACK: usize = 1024;

/// The map; see the module docs.
#[derive(Debug, Clone)]
pub struct IdWindow<V> {
    /// The id of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<V>>,
    /// Entries in `slots` that are `Some`.
    live: usize,
    /// Entries older than `base`.
    spill: IdMap<u64, V>,
}

impl<V> Default for IdWindow<V> {
    fn default() -> Self {
        Self {
            base: 0,
            slots: VecDeque::new(),
            live: 0,
            spill: IdMap::default(),
        }
    }
}

impl<V> IdWindow<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.live + self.spill.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `id`, which must be above every id inserted before.
    #[inline]
    pub fn insert(&mut self, id: u64, value: V) {
        if self.slots.is_empty() {
            self.base = self.base.max(id);
        }
        let end = self.base + self.slots.len() as u64;
        assert!(
            id >= end,
            "id {id} inserted after {}: ids must increase",
            end - 1
        );
        for _ in end..id {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(value));
        self.live += 1;
        self.bound();
    }

    /// Spills the oldest entries while the holes outnumber the live entries (plus the slack).
    #[inline]
    fn bound(&mut self) {
        while self.slots.len() > 2 * self.live + SLACK {
            if let Some(v) = self.slots.pop_front().expect("longer than the slack") {
                self.spill.insert(self.base, v);
                self.live -= 1;
            }
            self.base += 1;
            self.trim();
        }
    }

    /// Drops the holes at the front.
    #[inline]
    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    #[inline]
    pub fn get(&self, id: u64) -> Option<&V> {
        if id < self.base {
            return self.spill.get(&id);
        }
        self.slots
            .get((id - self.base) as usize)
            .and_then(Option::as_ref)
    }

    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    #[inline]
    pub fn remove(&mut self, id: u64) -> Option<V> {
        if id < self.base {
            return self.spill.remove(&id);
        }
        let v = self.slots.get_mut((id - self.base) as usize)?.take()?;
        self.live -= 1;
        self.trim();
        self.bound();
        Some(v)
    }

    /// Every value, the spilled ones first, then the window's in id order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.spill.values().chain(self.slots.iter().flatten())
    }

    /// Slots the window holds (live or holes): what its memory is proportional to.
    pub fn window_len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::collections::HashMap;

    /// Random inserts of increasing ids (with gaps), removes of live and absent ids, and a few
    /// very long-lived ids, against a `HashMap`: the same answers, and the window stays within
    /// twice the live entries plus the slack.
    #[test]
    fn answers_as_a_hash_map_does() {
        for seed in 0..100 {
            let mut rng = Rng::new(seed);
            let mut w: IdWindow<u64> = IdWindow::new();
            let mut m: HashMap<u64, u64> = HashMap::new();
            let mut next = rng.below(1000);
            let mut live: Vec<u64> = Vec::new();
            for step in 0..20_000u64 {
                match rng.below(10) {
                    0..=4 => {
                        next += 1 + rng.below(3) * rng.below(2);
                        w.insert(next, step);
                        m.insert(next, step);
                        // One in fifty lives (nearly) forever.
                        if rng.below(50) != 0 {
                            live.push(next);
                        }
                    }
                    5..=8 if !live.is_empty() => {
                        // Mostly the oldest first, as leases of similar lengths end.
                        let i = if rng.below(4) == 0 {
                            rng.below(live.len() as u64) as usize
                        } else {
                            0
                        };
                        let id = live.remove(i);
                        assert_eq!(w.remove(id), m.remove(&id), "seed {seed} step {step}");
                    }
                    _ => {
                        let id = rng.below(next + 10);
                        assert_eq!(w.get(id), m.get(&id), "seed {seed} step {step} id {id}");
                        assert_eq!(w.remove(id), m.remove(&id), "seed {seed} step {step}");
                        live.retain(|&l| l != id);
                    }
                }
                assert_eq!(w.len(), m.len(), "seed {seed} step {step}");
                assert!(
                    w.window_len() <= 2 * w.len() + SLACK + 1,
                    "seed {seed} step {step}: window {} for {} live",
                    w.window_len(),
                    w.len()
                );
            }
            let mut got: Vec<u64> = w.values().copied().collect();
            let mut want: Vec<u64> = m.values().copied().collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "seed {seed}");
            for id in m.keys() {
                assert!(w.contains(*id));
            }
        }
    }

    #[test]
    #[should_panic(expected = "ids must increase")]
    fn an_id_below_the_last_is_refused() {
        let mut w = IdWindow::new();
        w.insert(5, ());
        w.insert(4, ());
    }
}
