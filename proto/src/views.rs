//! The wire types as people and scripts read them (JSON): one shape shared by `harvest nodes
//! --json` (the client) and the scheduler's `/api/cluster` (the dashboard).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::v1;

/// An agent's counters ([`v1::NodeCounters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeCountersView {
    pub reclaims: u64,
    pub reclaim_evictions: u64,
    pub reclaim_moves: u64,
    pub reclaim_overruns: u64,
    pub reclaim_latency_us_sum: u64,
    pub reclaim_latency_us_max: u64,
    pub interference_actions: u64,
}

impl From<v1::NodeCounters> for NodeCountersView {
    fn from(c: v1::NodeCounters) -> Self {
        Self {
            reclaims: c.reclaims,
            reclaim_evictions: c.reclaim_evictions,
            reclaim_moves: c.reclaim_moves,
            reclaim_overruns: c.reclaim_overruns,
            reclaim_latency_us_sum: c.reclaim_latency_us_sum,
            reclaim_latency_us_max: c.reclaim_latency_us_max,
            interference_actions: c.interference_actions,
        }
    }
}

impl From<NodeCountersView> for v1::NodeCounters {
    fn from(c: NodeCountersView) -> Self {
        v1::NodeCounters {
            reclaims: c.reclaims,
            reclaim_evictions: c.reclaim_evictions,
            reclaim_moves: c.reclaim_moves,
            reclaim_overruns: c.reclaim_overruns,
            reclaim_latency_us_sum: c.reclaim_latency_us_sum,
            reclaim_latency_us_max: c.reclaim_latency_us_max,
            interference_actions: c.interference_actions,
        }
    }
}

/// The interference levels from none to evict: the label values of the level metrics.
pub const LEVELS: [v1::InterferenceLevel; 5] = [
    v1::InterferenceLevel::None,
    v1::InterferenceLevel::Weight,
    v1::InterferenceLevel::Quota,
    v1::InterferenceLevel::Freeze,
    v1::InterferenceLevel::Evict,
];

/// A [`v1::InterferenceLevel`]'s short name, as JSON, tables and metric labels show it
/// ("none", "weight", "quota", "freeze", "evict"; unspecified reads as "none").
pub fn level_name(level: v1::InterferenceLevel) -> &'static str {
    match level {
        v1::InterferenceLevel::Unspecified | v1::InterferenceLevel::None => "none",
        v1::InterferenceLevel::Weight => "weight",
        v1::InterferenceLevel::Quota => "quota",
        v1::InterferenceLevel::Freeze => "freeze",
        v1::InterferenceLevel::Evict => "evict",
    }
}

impl v1::InterferenceLevel {
    /// The level with unspecified read as none, so that two readings compare equal.
    pub fn or_none(self) -> Self {
        match self {
            Self::Unspecified => Self::None,
            other => other,
        }
    }

    /// True for every level that acts on the leases (weight and above).
    pub fn applies(self) -> bool {
        self.or_none() != Self::None
    }
}

impl v1::InterferenceState {
    /// The level applied now, unspecified (or unknown to this build) read as none.
    pub fn current_level(&self) -> v1::InterferenceLevel {
        self.level().or_none()
    }
}

fn serialize_level<S: serde::Serializer>(
    level: &v1::InterferenceLevel,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(level_name(*level))
}

/// An agent's interference verdict ([`v1::InterferenceState`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InterferenceView {
    /// none, weight, quota, freeze or evict (by [`level_name`]).
    #[serde(serialize_with = "serialize_level")]
    pub level: v1::InterferenceLevel,
    pub detector: String,
    pub reason: String,
    pub since_unix_ms: i64,
    pub unavailable: Vec<String>,
    pub signals: BTreeMap<String, f64>,
    pub actions: BTreeMap<String, u64>,
    /// Each lease's verdict and level.
    pub leases: Vec<LeaseInterferenceView>,
}

/// One lease's interference verdict ([`v1::LeaseInterference`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeaseInterferenceView {
    pub lease_id: String,
    #[serde(serialize_with = "serialize_level")]
    pub level: v1::InterferenceLevel,
    pub quota_pct: u32,
    pub verdict: String,
    pub job_id: u32,
    pub harm_pct: f64,
    pub harm_se_pct: f64,
    pub probes: u32,
    pub confidence: f64,
    pub reason: String,
}

impl From<&v1::LeaseInterference> for LeaseInterferenceView {
    fn from(l: &v1::LeaseInterference) -> Self {
        Self {
            lease_id: l.lease_id.clone(),
            level: l.level().or_none(),
            quota_pct: l.quota_pct,
            verdict: l.verdict.clone(),
            job_id: l.job_id,
            // JSON has no infinity: a standard error of fewer than two probes reads as null.
            harm_pct: l.harm_pct,
            harm_se_pct: l.harm_se_pct,
            probes: l.probes,
            confidence: l.confidence,
            reason: l.reason.clone(),
        }
    }
}

impl From<&v1::InterferenceState> for InterferenceView {
    fn from(i: &v1::InterferenceState) -> Self {
        Self {
            level: i.current_level(),
            detector: i.detector.clone(),
            reason: i.reason.clone(),
            since_unix_ms: i.since_unix_ms,
            unavailable: i.unavailable.clone(),
            signals: i.signals.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            actions: i.actions.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            leases: i.leases.iter().map(LeaseInterferenceView::from).collect(),
        }
    }
}

/// A lease as the scheduler describes it (`harvest leases --json`, the dashboard's leases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseView {
    pub id: String,
    pub node: String,
    pub uid: u32,
    pub user: String,
    pub cpus: Vec<u32>,
    pub memory_mib: u64,
    pub gpus: Vec<u32>,
    /// pending, active, released, expired, revoked or failed.
    pub state: String,
    pub executor_address: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub end_reason: String,
    /// Why it ended, as a category: released, expired, idle, reclaimed, node_down,
    /// node_drained, interference, executor_failed ("" while live).
    pub end_cause: String,
    pub idle_timeout_ms: u64,
    pub last_active_unix_ms: i64,
    /// A memory lease's region and CPU cap (`null` for a function lease).
    pub memory: Option<harvest_core::region::MemorySpec>,
    /// The lease secret that opens its executor: only in the owner's answers (AcquireLease,
    /// GetLease), never printed or serialized.
    #[serde(skip)]
    pub secret: Option<harvest_core::invoke::auth::LeaseSecret>,
}

/// A [`v1::LeaseState`]'s short name ("active", "revoked", ...; "unknown" for no such state).
pub fn state_name(state: i32) -> String {
    v1::LeaseState::try_from(state)
        .map_or("unknown", |s| {
            s.as_str_name()
                .strip_prefix("LEASE_STATE_")
                .unwrap_or("unknown")
        })
        .to_ascii_lowercase()
}

/// A [`v1::EndCause`]'s short name ("reclaimed", "node_down", ...; "" when unspecified).
pub fn cause_name(cause: i32) -> String {
    match v1::EndCause::try_from(cause) {
        Ok(v1::EndCause::Unspecified) | Err(_) => String::new(),
        Ok(c) => c
            .as_str_name()
            .strip_prefix("END_CAUSE_")
            .unwrap_or_default()
            .to_ascii_lowercase(),
    }
}

impl From<v1::Lease> for LeaseView {
    fn from(l: v1::Lease) -> Self {
        Self {
            id: l.id,
            node: l.node,
            uid: l.uid,
            user: l.user,
            cpus: l.cpus,
            memory_mib: l.memory_mib,
            gpus: l.gpus,
            state: state_name(l.state),
            executor_address: l.executor_address,
            created_unix_ms: l.created_unix_ms,
            expires_unix_ms: l.expires_unix_ms,
            end_reason: l.end_reason,
            end_cause: cause_name(l.end_cause),
            idle_timeout_ms: l.idle_timeout_ms,
            last_active_unix_ms: l.last_active_unix_ms,
            memory: l.memory.map(|m| harvest_core::region::MemorySpec {
                region_mib: m.region_mib,
                cpu_millis: m.cpu_millis,
            }),
            secret: harvest_core::invoke::auth::LeaseSecret::from_bytes(&l.secret).ok(),
        }
    }
}

impl LeaseView {
    /// Pending or active: its executor may still serve invocations.
    pub fn is_live(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "active")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_keep_every_field() {
        let c = NodeCountersView::from(v1::NodeCounters {
            reclaims: 1,
            reclaim_evictions: 2,
            reclaim_moves: 3,
            reclaim_overruns: 4,
            reclaim_latency_us_sum: 5,
            reclaim_latency_us_max: 6,
            interference_actions: 7,
        });
        assert_eq!(
            serde_json_like(&c),
            "1 2 3 4 5 6 7",
            "every counter is carried"
        );
        let i = InterferenceView::from(&v1::InterferenceState {
            level: v1::InterferenceLevel::Quota.into(),
            detector: "threshold".into(),
            reason: "job 7 ran 9% slower".into(),
            since_unix_ms: 5,
            unavailable: vec!["perf".into()],
            signals: [("a".to_owned(), 0.5)].into(),
            actions: [("quota".to_owned(), 2)].into(),
            leases: vec![v1::LeaseInterference {
                lease_id: "L1".into(),
                level: v1::InterferenceLevel::Quota.into(),
                quota_pct: 25,
                verdict: "culprit".into(),
                job_id: 7,
                harm_pct: 9.0,
                harm_se_pct: 1.5,
                probes: 3,
                confidence: 0.99,
                reason: "job 7 ran 9% slower".into(),
            }],
        });
        assert_eq!(
            (level_name(i.level), i.signals["a"], i.actions["quota"]),
            ("quota", 0.5, 2)
        );
        assert_eq!(i.unavailable, ["perf"]);
        let l = &i.leases[0];
        assert_eq!(
            (
                l.lease_id.as_str(),
                level_name(l.level),
                l.quota_pct,
                l.verdict.as_str()
            ),
            ("L1", "quota", 25, "culprit")
        );
        assert_eq!(
            (l.job_id, l.harm_pct, l.harm_se_pct, l.probes),
            (7, 9.0, 1.5, 3)
        );
        assert_eq!(
            (l.confidence, l.reason.as_str()),
            (0.99, "job 7 ran 9% slower")
        );
    }

    #[test]
    fn levels_read_by_their_short_names_and_unspecified_as_none() {
        let names: Vec<&str> = LEVELS.iter().map(|&l| level_name(l)).collect();
        assert_eq!(names, ["none", "weight", "quota", "freeze", "evict"]);
        assert_eq!(level_name(v1::InterferenceLevel::Unspecified), "none");
        let unset = v1::InterferenceState::default();
        assert_eq!(unset.current_level(), v1::InterferenceLevel::None);
        assert!(!unset.current_level().applies());
        // A level number this build does not know reads as none too.
        let unknown = v1::InterferenceState {
            level: 99,
            ..Default::default()
        };
        assert_eq!(unknown.current_level(), v1::InterferenceLevel::None);
        assert!(v1::InterferenceLevel::Freeze.applies());
        // JSON keeps the lowercase name.
        let view = InterferenceView::from(&v1::InterferenceState {
            level: v1::InterferenceLevel::Evict.into(),
            ..Default::default()
        });
        assert_eq!(serde_json::to_value(&view).unwrap()["level"], "evict");
    }

    fn serde_json_like(c: &NodeCountersView) -> String {
        [
            c.reclaims,
            c.reclaim_evictions,
            c.reclaim_moves,
            c.reclaim_overruns,
            c.reclaim_latency_us_sum,
            c.reclaim_latency_us_max,
            c.interference_actions,
        ]
        .map(|v| v.to_string())
        .join(" ")
    }
}
