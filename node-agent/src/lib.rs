//! `harvestd`, harvest's node agent.
pub mod agent;
pub mod cgroup;
pub mod config;
pub mod discover;
pub mod ledger;
pub mod query;
pub mod scontrol;
pub mod server;
pub mod slurm;
pub mod state;
