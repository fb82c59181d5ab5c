//! Which plugins a policy runs, with which weights, and the built-in policies.
//!
//! ```toml
//! order = "fewest-free"   # node-order | fewest-free | most-free
//! sample = 8              # stop filtering after this many feasible nodes
//! max_examined = 512      # and after this many nodes filtered
//! [[plugins]]
//! name = "fit"
//! [[plugins]]
//! name = "best-fit"
//! weight = 1
//! ```
//! A plugin listed once takes part in every extension point it implements; `weight` multiplies
//! its normalized score.

use serde::{Deserialize, Serialize};

use crate::cluster::CandidateOrder;
use crate::framework::Framework;
use crate::registry::Registry;

/// Feasible nodes scored per decision unless configured (Kubernetes scores a bounded share too).
pub const DEFAULT_SAMPLE: usize = 8;
/// Nodes filtered per decision at most unless configured: a decision whose first 512 candidates
/// all fail a filter reports the lease unschedulable (it waits and is retried) rather than scan on.
pub const DEFAULT_MAX_EXAMINED: usize = 512;
/// A plugin's score weight unless configured.
pub const DEFAULT_WEIGHT: u32 = 1;
/// The largest weight accepted (keeps weighted sums far from overflow).
pub const MAX_WEIGHT: u32 = 100;
/// The largest sample accepted: beyond it a decision is a scan again.
pub const MAX_SAMPLE: usize = 4096;

/// The built-in policies, in the order reports list them.
pub const BUILTIN_POLICIES: &[&str] = &[
    "first-fit",
    "best-fit",
    "spread",
    "interference-aware",
    "gpu-aware",
    "lease-affinity",
    "harvest",
];

/// A policy configuration that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown policy {0:?}; built-in policies are: {list}", list = BUILTIN_POLICIES.join(", "))]
    UnknownPolicy(String),
    #[error("plugins[{index}]: unknown plugin {name:?}; registered plugins are: {known}")]
    UnknownPlugin {
        index: usize,
        name: String,
        known: String,
    },
    #[error("plugins[{index}]: plugin {name:?} is listed twice; list each plugin once")]
    Duplicate { index: usize, name: String },
    #[error("plugins[{index}] ({name}): weight {weight} is out of range; use 1..={MAX_WEIGHT}")]
    Weight {
        index: usize,
        name: String,
        weight: u32,
    },
    #[error("sample = {0} is out of range; use 1..={MAX_SAMPLE}")]
    Sample(usize),
    #[error(
        "max_examined = {max_examined} is below sample = {sample}; examine at least as many nodes as are scored"
    )]
    MaxExamined { max_examined: usize, sample: usize },
    #[error("plugins: a policy needs the \"fit\" filter, or leases would be placed on full nodes")]
    NoFit,
    #[error("invalid policy TOML: {0}")]
    Toml(String),
}

/// One plugin of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn default_sample() -> usize {
    DEFAULT_SAMPLE
}

/// A policy: candidate order, sample size and plugins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub order: CandidateOrder,
    #[serde(default = "default_sample")]
    pub sample: usize,
    #[serde(default = "default_max_examined")]
    pub max_examined: usize,
    pub plugins: Vec<PluginRef>,
}

fn default_max_examined() -> usize {
    DEFAULT_MAX_EXAMINED
}

fn plugins(list: &[(&str, u32)]) -> Vec<PluginRef> {
    list.iter()
        .map(|(name, weight)| PluginRef {
            name: (*name).to_owned(),
            weight: *weight,
        })
        .collect()
}

impl PolicyConfig {
    /// A built-in policy by name ([`BUILTIN_POLICIES`]).
    pub fn builtin(name: &str) -> Result<Self, ConfigError> {
        use CandidateOrder::*;
        let (order, sample, list): (_, _, &[(&str, u32)]) = match name {
            // rFaaS's policy: the lowest-numbered node that fits.
            "first-fit" => (NodeOrder, 1, &[("fit", 1)]),
            "best-fit" => (FewestFree, DEFAULT_SAMPLE, &[("fit", 1), ("best-fit", 1)]),
            "spread" => (MostFree, DEFAULT_SAMPLE, &[("fit", 1), ("spread", 1)]),
            "interference-aware" => (
                FewestFree,
                DEFAULT_SAMPLE,
                &[("fit", 1), ("interference", 2), ("best-fit", 1)],
            ),
            "gpu-aware" => (
                FewestFree,
                DEFAULT_SAMPLE,
                &[("fit", 1), ("gpu", 2), ("best-fit", 1)],
            ),
            "lease-affinity" => (
                FewestFree,
                DEFAULT_SAMPLE,
                &[("fit", 1), ("lease-affinity", 2), ("best-fit", 1)],
            ),
            "harvest" => (
                FewestFree,
                DEFAULT_SAMPLE,
                &[
                    ("fit", 1),
                    ("interference", 3),
                    ("gpu", 2),
                    ("lease-affinity", 2),
                    ("best-fit", 1),
                ],
            ),
            other => return Err(ConfigError::UnknownPolicy(other.to_owned())),
        };
        Ok(Self {
            order,
            sample,
            max_examined: DEFAULT_MAX_EXAMINED,
            plugins: plugins(list),
        })
    }

    /// Parses a policy from TOML.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))
    }

    /// Checks the configuration against a registry without building it.
    pub fn validate(&self, registry: &Registry) -> Result<(), ConfigError> {
        if self.sample == 0 || self.sample > MAX_SAMPLE {
            return Err(ConfigError::Sample(self.sample));
        }
        if self.max_examined < self.sample {
            return Err(ConfigError::MaxExamined {
                max_examined: self.max_examined,
                sample: self.sample,
            });
        }
        for (index, p) in self.plugins.iter().enumerate() {
            if registry.build(&p.name).is_none() {
                return Err(ConfigError::UnknownPlugin {
                    index,
                    name: p.name.clone(),
                    known: registry.names().join(", "),
                });
            }
            if self.plugins[..index].iter().any(|q| q.name == p.name) {
                return Err(ConfigError::Duplicate {
                    index,
                    name: p.name.clone(),
                });
            }
            if p.weight == 0 || p.weight > MAX_WEIGHT {
                return Err(ConfigError::Weight {
                    index,
                    name: p.name.clone(),
                    weight: p.weight,
                });
            }
        }
        if !self.plugins.iter().any(|p| p.name == "fit") {
            return Err(ConfigError::NoFit);
        }
        Ok(())
    }

    /// Validates and builds the pipeline.
    pub fn build(&self, name: &str, registry: &Registry) -> Result<Framework, ConfigError> {
        self.validate(registry)?;
        let mut fw =
            Framework::new(name, self.order, self.sample).examine_at_most(self.max_examined);
        for p in &self.plugins {
            let set = registry.build(&p.name).expect("validated");
            fw = fw.with(set, p.weight);
        }
        Ok(fw)
    }
}

/// Builds a built-in policy with the built-in plugins.
pub fn builtin_framework(name: &str) -> Result<Framework, ConfigError> {
    PolicyConfig::builtin(name)?.build(name, &Registry::builtin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_policy_builds() {
        for name in BUILTIN_POLICIES {
            let fw = builtin_framework(name).unwrap();
            assert_eq!(fw.name(), *name);
        }
        assert_eq!(
            PolicyConfig::builtin("fastest").unwrap_err(),
            ConfigError::UnknownPolicy("fastest".into())
        );
    }

    #[test]
    fn toml_defaults_and_unknown_keys() {
        let cfg = PolicyConfig::from_toml("[[plugins]]\nname = \"fit\"\n").unwrap();
        assert_eq!(cfg.sample, DEFAULT_SAMPLE);
        assert_eq!(cfg.order, CandidateOrder::FewestFree);
        assert_eq!(cfg.plugins[0].weight, DEFAULT_WEIGHT);
        assert_eq!(cfg.max_examined, DEFAULT_MAX_EXAMINED);
        let err = PolicyConfig::from_toml("samples = 3\nplugins = []\n").unwrap_err();
        assert!(err.to_string().contains("samples"), "{err}");
        let cfg = PolicyConfig::from_toml("order = \"most-free\"\nplugins = []").unwrap();
        assert_eq!(cfg.order, CandidateOrder::MostFree);
    }

    #[test]
    fn validation_names_the_bad_entry() {
        let r = Registry::builtin();
        let mut cfg = PolicyConfig::builtin("best-fit").unwrap();
        cfg.plugins.push(PluginRef {
            name: "magic".into(),
            weight: 1,
        });
        let err = cfg.validate(&r).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownPlugin { index: 2, .. }));
        assert!(err.to_string().contains("best-fit, first-fit"), "{err}");
        cfg.plugins[2].name = "fit".into();
        assert!(matches!(
            cfg.validate(&r),
            Err(ConfigError::Duplicate { index: 2, .. })
        ));
        cfg.plugins.pop();
        cfg.plugins[1].weight = 0;
        assert!(matches!(
            cfg.validate(&r),
            Err(ConfigError::Weight {
                index: 1,
                weight: 0,
                ..
            })
        ));
        cfg.plugins[1].weight = 1;
        cfg.sample = 0;
        assert_eq!(cfg.validate(&r), Err(ConfigError::Sample(0)));
        cfg.sample = 4;
        cfg.max_examined = 3;
        assert!(matches!(
            cfg.validate(&r),
            Err(ConfigError::MaxExamined { .. })
        ));
        cfg.max_examined = 4;
        cfg.plugins.remove(0);
        assert_eq!(cfg.validate(&r), Err(ConfigError::NoFit));
    }
}
