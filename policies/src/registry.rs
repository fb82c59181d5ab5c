//! Named plugins and their factories.
//!
//! The configuration names plugins; the registry turns a name into a [`PluginSet`]. The scheduler
//! and the simulator both start from [`Registry::builtin`]; tests register fakes
//! ([`crate::testing`]) under their own names.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::framework::PluginSet;
use crate::plugins::{BestFit, FirstFit, Fit, GpuAware, Interference, LeaseAffinity, Spread};

/// Builds a fresh instance of a plugin.
pub type Factory = Arc<dyn Fn() -> PluginSet + Send + Sync>;

/// Plugin names to factories.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every built-in plugin ([`crate::plugins`]).
    pub fn builtin() -> Self {
        let mut r = Self::new();
        r.register("fit", || PluginSet {
            filter: Some(Arc::new(Fit)),
            ..PluginSet::default()
        });
        r.register("first-fit", || PluginSet {
            score: Some(Arc::new(FirstFit)),
            ..PluginSet::default()
        });
        r.register("best-fit", || PluginSet {
            score: Some(Arc::new(BestFit)),
            ..PluginSet::default()
        });
        r.register("spread", || PluginSet {
            score: Some(Arc::new(Spread)),
            ..PluginSet::default()
        });
        r.register("interference", || {
            let p = Arc::new(Interference);
            PluginSet {
                filter: Some(p.clone()),
                score: Some(p),
                ..PluginSet::default()
            }
        });
        r.register("gpu", || PluginSet {
            score: Some(Arc::new(GpuAware)),
            ..PluginSet::default()
        });
        r.register("lease-affinity", || {
            let p = Arc::new(LeaseAffinity);
            PluginSet {
                score: Some(p.clone()),
                hint: Some(p),
                ..PluginSet::default()
            }
        });
        r
    }

    /// Adds or replaces a plugin.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn() -> PluginSet + Send + Sync + 'static,
    ) {
        self.factories.insert(name.to_owned(), Arc::new(factory));
    }

    /// A new instance of the named plugin.
    pub fn build(&self, name: &str) -> Option<PluginSet> {
        self.factories.get(name).map(|f| f())
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_fill_the_extension_points_they_implement() {
        let r = Registry::builtin();
        assert_eq!(
            r.names(),
            [
                "best-fit",
                "first-fit",
                "fit",
                "gpu",
                "interference",
                "lease-affinity",
                "spread"
            ]
        );
        let fit = r.build("fit").unwrap();
        assert!(fit.filter.is_some() && fit.score.is_none());
        let inter = r.build("interference").unwrap();
        assert!(inter.filter.is_some() && inter.score.is_some());
        let aff = r.build("lease-affinity").unwrap();
        assert!(aff.hint.is_some() && aff.score.is_some() && aff.filter.is_none());
        assert!(r.build("nope").is_none());
    }
}
