//! Files generated from harvest's code, so that none of them can drift from it:
//!
//! - [`config_doc`]: the configuration reference (docs/config.md) and the commented
//!   configuration files the Debian packages install under /etc/harvest, from the configuration
//!   structs' fields, comments and defaults;
//! - [`man`]: the `harvest` CLI's man pages and shell completions, from its clap `Command`.
//!
//! `scripts/package` runs the `harvest-xtask` binary at package time; its tests fail when the
//! committed docs/config.md differs from what the generator prints.

pub mod config_doc;
pub mod man;
