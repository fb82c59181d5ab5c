//! `harvestd`, harvest's node agent.
pub mod cgroup;
pub mod discover;
pub mod ledger;
pub mod slurm;
