//! Sets of OS CPU ids.
//!
//! A [`CpuSet`] is what cgroups (`cpuset.cpus`), `sched_setaffinity` and hwloc call a CPU list. It
//! parses and prints the Linux list format (`0-3,8,10-11`) and serializes as a JSON list of ids,
//! which is what `harvestd status --json` shows. All CPU-set arithmetic in harvest goes through here.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The largest CPU id accepted from text; guards against `0-4294967295` eating the machine.
pub const MAX_CPU_ID: u32 = 65_535;

/// A set of OS CPU ids, ordered. It reads from JSON with the same bound as from text
/// ([`MAX_CPU_ID`]), so that whatever a message carries also prints and parses as a CPU list.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CpuSet(#[serde(deserialize_with = "bounded_ids")] BTreeSet<u32>);

fn bounded_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeSet<u32>, D::Error> {
    let ids = BTreeSet::<u32>::deserialize(d)?;
    match ids.last() {
        Some(&id) if id > MAX_CPU_ID => Err(serde::de::Error::custom(format!(
            "CPU id {id} is above the supported maximum {MAX_CPU_ID}"
        ))),
        _ => Ok(ids),
    }
}

/// A CPU list that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuSetParseError {
    #[error(
        "invalid CPU id {token:?} in CPU list {list:?}: expected a number like 3 or a range like 0-7"
    )]
    BadToken { list: String, token: String },
    #[error("descending range {token:?} in CPU list {list:?}: write it low-high, e.g. 2-5")]
    Descending { list: String, token: String },
    #[error("CPU id {id} in CPU list {list:?} is above the supported maximum {MAX_CPU_ID}")]
    TooLarge { list: String, id: u32 },
}

impl CpuSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The CPUs `0..n`.
    pub fn first_n(n: u32) -> Self {
        (0..n).collect()
    }

    /// Parses the Linux list format. Surrounding whitespace (a trailing newline from a cgroup
    /// file) is ignored; an empty string is the empty set.
    pub fn parse_list(list: &str) -> Result<Self, CpuSetParseError> {
        let trimmed = list.trim();
        let mut set = BTreeSet::new();
        if trimmed.is_empty() {
            return Ok(Self(set));
        }
        let bad = |token: &str| CpuSetParseError::BadToken {
            list: trimmed.to_owned(),
            token: token.to_owned(),
        };
        let num = |token: &str, part: &str| -> Result<u32, CpuSetParseError> {
            let id: u32 = part.trim().parse().map_err(|_| bad(token))?;
            if id > MAX_CPU_ID {
                return Err(CpuSetParseError::TooLarge {
                    list: trimmed.to_owned(),
                    id,
                });
            }
            Ok(id)
        };
        for token in trimmed.split(',') {
            match token.split_once('-') {
                None => {
                    set.insert(num(token, token)?);
                }
                Some((lo, hi)) => {
                    let (lo, hi) = (num(token, lo)?, num(token, hi)?);
                    if lo > hi {
                        return Err(CpuSetParseError::Descending {
                            list: trimmed.to_owned(),
                            token: token.to_owned(),
                        });
                    }
                    set.extend(lo..=hi);
                }
            }
        }
        Ok(Self(set))
    }

    /// The Linux list format, with ranges folded (`0-3,8`). The empty set prints as "".
    pub fn to_list(&self) -> String {
        self.to_string()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    pub fn insert(&mut self, cpu: u32) -> bool {
        self.0.insert(cpu)
    }

    pub fn remove(&mut self, cpu: u32) -> bool {
        self.0.remove(&cpu)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn union(&self, other: &CpuSet) -> CpuSet {
        self.0.union(&other.0).copied().collect()
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        self.0.intersection(&other.0).copied().collect()
    }

    /// `self` minus `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        self.0.difference(&other.0).copied().collect()
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn is_disjoint(&self, other: &CpuSet) -> bool {
        self.0.is_disjoint(&other.0)
    }

    /// The `n` lowest CPUs of the set, or `None` when it has fewer.
    pub fn take_lowest(&self, n: usize) -> Option<CpuSet> {
        (self.len() >= n).then(|| self.0.iter().copied().take(n).collect())
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Extend<u32> for CpuSet {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl FromStr for CpuSet {
    type Err = CpuSetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_list(s)
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut iter = self.0.iter().copied().peekable();
        let mut first = true;
        while let Some(lo) = iter.next() {
            let mut hi = lo;
            while hi
                .checked_add(1)
                .is_some_and(|next| iter.peek() == Some(&next))
            {
                hi = iter.next().unwrap_or(hi);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet[{self}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ranges() {
        let s = CpuSet::parse_list("0-3,8,10-11\n").unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(s.to_list(), "0-3,8,10-11");
        assert_eq!(CpuSet::parse_list(" ").unwrap(), CpuSet::new());
        assert_eq!(CpuSet::new().to_list(), "");
        assert_eq!(CpuSet::parse_list("5").unwrap().to_list(), "5");
    }

    #[test]
    fn rejects_bad_lists_with_the_token() {
        let err = CpuSet::parse_list("0-3,x").unwrap_err();
        assert!(err.to_string().contains("\"x\""), "{err}");
        assert!(matches!(
            CpuSet::parse_list("5-2"),
            Err(CpuSetParseError::Descending { .. })
        ));
        assert!(matches!(
            CpuSet::parse_list("0-99999"),
            Err(CpuSetParseError::TooLarge { .. })
        ));
        assert!(CpuSet::parse_list("1,,2").is_err());
    }

    #[test]
    fn set_arithmetic() {
        let all = CpuSet::first_n(4);
        let batch: CpuSet = [1, 2].into_iter().collect();
        let idle = all.difference(&batch);
        assert_eq!(idle.to_list(), "0,3");
        assert!(idle.is_disjoint(&batch));
        assert_eq!(idle.union(&batch), all);
        assert_eq!(all.intersection(&batch), batch);
        assert!(batch.is_subset(&all));
        assert_eq!(all.take_lowest(3).unwrap().to_list(), "0-2");
        assert!(batch.take_lowest(3).is_none());
    }

    #[test]
    fn serializes_as_json_list() {
        let s: CpuSet = [0, 1, 5].into_iter().collect();
        assert_eq!(serde_json::to_string(&s).unwrap(), "[0,1,5]");
        let back: CpuSet = serde_json::from_str("[5,0,1]").unwrap();
        assert_eq!(back, s);
    }

    /// Found with the `plugin_message` fuzz target (its body panicked on this input): a step's
    /// CPU list `[4294967295]` from the plugin socket made printing the set overflow (a panic in
    /// harvestd built with overflow checks, when it logged the step's CPUs). JSON now has the
    /// text form's bound, and printing the largest id cannot overflow.
    #[test]
    fn json_ids_have_the_text_bound_and_the_largest_prints() {
        let e = serde_json::from_str::<CpuSet>("[0,4294967295]").unwrap_err();
        assert!(e.to_string().contains("CPU id 4294967295"), "{e}");
        assert!(serde_json::from_str::<CpuSet>(&format!("[{}]", MAX_CPU_ID + 1)).is_err());
        let top: CpuSet = serde_json::from_str(&format!("[{MAX_CPU_ID}]")).unwrap();
        assert_eq!(CpuSet::parse_list(&top.to_list()).unwrap(), top);
        let edge: CpuSet = [u32::MAX - 1, u32::MAX].into_iter().collect();
        assert_eq!(edge.to_list(), format!("{}-{}", u32::MAX - 1, u32::MAX));
    }
}
