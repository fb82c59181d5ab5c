//! The Prometheus metric families that `harvest-scheduler` and every `harvestd` both export,
//! defined once, so that one Grafana panel reads either and the two cannot drift apart.
//!
//! - [`node`]: [`NodeFamilies`], each node's resources by state, its GPUs, its leases and its
//!   agent's reclaim and interference counters, updated from the shared views
//!   ([`harvest_core::NodeView`], [`harvest_proto::views::NodeCountersView`],
//!   [`harvest_proto::v1::InterferenceState`]); and [`Resources`], the CPU, memory and GPU
//!   gauges by state of any scope (a node, the cluster).
//! - this file: [`Exposition`], a registry built once at start-up and encoded per scrape, and the
//!   label helpers.
//!
//! Each exporter builds its families and registers them into one [`Registry`] at start-up; at
//! every scrape it refreshes them from a snapshot of its state and encodes that registry. The
//! refresh clears each family before it writes it again, so a series whose labels went away (a
//! node that left, a GPU that changed state, a lease that ended) never lingers. What each
//! exporter counts only by itself (the scheduler's placements, the agent's invocations) stays in
//! its own crate. docs/metrics.md lists every metric.
//!
//! A separate crate rather than a module of `harvest-proto`: the wire crate is also the client
//! library's, which has no use for prometheus-client.

pub mod node;

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode as encode_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;

pub use node::{Exporter, NodeFamilies, NodeReport, Resources};

/// The Content-Type of the exposition (OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric's name starts with this (`harvest_node_cpus`, ...).
pub const PREFIX: &str = "harvest";

/// A series' labels, in the order the exposition writes them.
pub type Labels = Vec<(&'static str, String)>;
/// A gauge of seconds, ratios, signal values.
pub type FloatGauge = Gauge<f64, AtomicU64>;
/// A counter of seconds.
pub type FloatCounter = Counter<f64, AtomicU64>;

/// `[("node", "n1"), ("state", "idle")]` as [`Labels`].
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// A count as a gauge's value (saturating: a gauge is an `i64`).
pub fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Sets a counter of a family that is cleared before each refresh to the total a snapshot
/// carries (an agent's counters are totals since it started, not increments).
pub fn set_counter(family: &Family<Labels, Counter>, labels: &Labels, total: u64) {
    family.get_or_create(labels).inc_by(total);
}

/// A registry built once at start-up and encoded at every scrape.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
    /// One scrape at a time: a refresh clears families and fills them again, and another
    /// scrape's encoding must not see them half filled.
    scrape: Mutex<()>,
}

impl Exposition {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            scrape: Mutex::new(()),
        }
    }

    /// Runs `refresh` (which brings the registered families up to date with a snapshot), then
    /// encodes the registry as OpenMetrics text, ending in `# EOF`.
    pub fn encode(&self, refresh: impl FnOnce()) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        refresh();
        let mut out = String::new();
        encode_text(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
