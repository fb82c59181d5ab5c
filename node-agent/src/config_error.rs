//! What a bad configuration is ([`ConfigError`], naming the key) and how durations are read:
//! shared by harvestd's [`crate::config`] and the sections it embeds ([`crate::interference`]),
//! kept apart so that neither imports the other.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{key}` = {value}: {hint}")]
    Invalid {
        key: &'static str,
        value: String,
        hint: &'static str,
    },
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    harvest_core::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Writes a duration as [`duration`] reads it (`"1s"`, `"50ms"`): the configuration reference
/// and the packaged configuration files print the defaults this way.
pub fn write_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&harvest_core::format_duration(*d))
}
