//! What each SPANK callback does, written against [`Host`] so it runs in unit tests.
//!
//! | callback (context)           | sends                     |
//! |------------------------------|---------------------------|
//! | `user_init` (remote)         | `StepStart`, waits for the agent's answer (bounded) |
//! | `exit` (remote)              | `StepEnd`; `JobEnd` for the batch and extern steps |
//! | `job_epilog` (job script)    | `JobEnd`, on every node of the job |
//!
//! `JobEnd` can thus arrive twice for a node (batch step, then epilog): it is idempotent, and it
//! ends every step of the job on that node. The epilog is the authoritative one (every node,
//! every kind of job); it runs only if the plugin was in `plugstack.conf` when slurmd started.
//!
//! Nothing here fails a job: every problem becomes at most one warning per process (through
//! Slurm's logger) and the callback reports success. The one exception is a bad `--harvest`
//! value at submit time, which the user must hear about.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use harvest_core::CpuSet;
use harvest_core::step::{PluginMessage, StepAllocation, StepId};

use crate::cgroup::{CgroupFs, JobCgroups, JobKey};
use crate::client::AgentClient;
use crate::config::{self, Config};
use crate::evict::{self, Evictor};
use crate::gpus;
use crate::host::{Context, Host, Item, Level};

/// The environment variable slurmstepd sets to its node name in its own environment (from slurmd's
/// configuration), and slurmd in the prolog/epilog environment.
pub const NODE_NAME_VAR: &str = "SLURMD_NODENAME";

/// Logs the first problem of a process at info level and later ones at debug level, so that an
/// absent agent costs one line per step in slurmd's log, not one per callback. Info, not error:
/// slurmstepd forwards errors to the user's srun, and an absent agent is the admin's business.
#[derive(Debug)]
pub struct Warner<'a> {
    warned: &'a AtomicBool,
}

impl<'a> Warner<'a> {
    pub fn new(warned: &'a AtomicBool) -> Self {
        Self { warned }
    }

    pub fn warn(&self, host: &dyn Host, msg: &str) {
        let first = !self.warned.swap(true, Ordering::Relaxed);
        let level = if first { Level::Info } else { Level::Debug };
        host.log(level, &format!("harvest: {msg}; the job runs unaffected"));
    }
}

/// `slurm_spank_user_init`: tells the agent what the step got, before its tasks start.
pub fn user_init(host: &dyn Host, args: &[&str], warner: &Warner<'_>) {
    if host.context() != Context::Remote {
        return;
    }
    let Some(config) = config_or_warn(host, args, warner) else {
        return;
    };
    let cgroups = CgroupFs::new(&config.cgroup_root, &config.proc_self_cgroup);
    if let Some(alloc) = step_start(host, &config, &cgroups, warner) {
        let node = alloc.node.clone();
        let (job, step) = (alloc.job_id, alloc.step_id);
        if !send(
            host,
            &config,
            &node,
            &PluginMessage::StepStart(alloc),
            warner,
        ) {
            evict_without_agent(host, &config, &node, job, step);
        }
    }
}

/// `/proc` for `/proc/self/cgroup`: the `proc` whose `self/cgroup` the configuration names (a
/// fake tree's in tests), else `/proc`.
fn proc_root(proc_self_cgroup: &Path) -> PathBuf {
    let self_dir = proc_self_cgroup
        .parent()
        .filter(|_| proc_self_cgroup.file_name().is_some_and(|n| n == "cgroup"));
    self_dir
        .filter(|d| d.file_name().is_some_and(|n| n == "self"))
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("/proc"), Path::to_owned)
}

/// The agent did not answer a step start, so no one cleared the step's resources: the plugin
/// ends every lease's processes on the node itself before the tasks start (see [`evict`]).
fn evict_without_agent(host: &dyn Host, config: &Config, node: &str, job: u32, step: StepId) {
    let evictor = Evictor {
        cgroup_root: config.cgroup_root.clone(),
        parent: config.lease_parent.for_node(node),
        proc_root: proc_root(&config.proc_self_cgroup),
        deadline: evict::DEFAULT_DEADLINE,
    };
    let done = evictor.evict_all();
    if done.leases == 0 {
        return;
    }
    let level = if done.left.is_empty() {
        Level::Info
    } else {
        Level::Error
    };
    host.log(
        level,
        &format!(
            "harvest: the agent did not answer job {job} step {step}'s start, so the plugin \
             ended the node's {} lease group(s) itself ({} process(es) killed){}",
            done.leases,
            done.killed,
            if done.left.is_empty() {
                String::new()
            } else {
                format!(
                    "; still holding processes after {:?}: {:?}",
                    evict::DEFAULT_DEADLINE,
                    done.left
                )
            }
        ),
    );
}

/// `slurm_spank_exit`: the step is over.
pub fn exit(host: &dyn Host, args: &[&str], warner: &Warner<'_>) {
    if host.context() != Context::Remote {
        return;
    }
    let Some(config) = config_or_warn(host, args, warner) else {
        return;
    };
    let (Some(job_id), Some(step_id), Some(node)) = (
        host.item(Item::JobId),
        host.item(Item::StepId),
        node_name(host),
    ) else {
        warner.warn(
            host,
            "cannot tell the agent a step ended: no job id, step id or node name",
        );
        return;
    };
    let step_id = StepId(step_id);
    // The batch script's end is the job's end (Slurm then kills every step), and the extern step
    // lives exactly as long as the job on its node: both end the job here, before the epilog.
    let msg = if step_id == StepId::BATCH || step_id == StepId::EXTERN {
        PluginMessage::JobEnd {
            job_id,
            node: node.clone(),
        }
    } else {
        PluginMessage::StepEnd {
            job_id,
            step_id,
            node: node.clone(),
        }
    };
    send(host, &config, &node, &msg, warner);
}

/// `slurm_spank_job_epilog`: the whole job is over on this node.
pub fn job_epilog(host: &dyn Host, args: &[&str], warner: &Warner<'_>) {
    if host.context() != Context::JobScript {
        return;
    }
    let Some(config) = config_or_warn(host, args, warner) else {
        return;
    };
    let job_id = host.item(Item::JobId).or_else(|| {
        host.process_env("SLURM_JOB_ID")
            .and_then(|v| v.trim().parse().ok())
    });
    let (Some(job_id), Some(node)) = (job_id, node_name(host)) else {
        warner.warn(
            host,
            "cannot tell the agent a job ended: no job id or node name",
        );
        return;
    };
    let msg = PluginMessage::JobEnd {
        job_id,
        node: node.clone(),
    };
    send(host, &config, &node, &msg, warner);
}

/// The `--harvest` option's callback. `Err` carries what to tell the user.
pub fn check_option(value: Option<&str>, remote: bool) -> Result<(), String> {
    let value = value.unwrap_or("");
    match config::parse_on_off(value) {
        Some(_) => Ok(()),
        // slurmstepd receives only values sbatch/srun already accepted; never fail a step here.
        None if remote => Ok(()),
        None => Err(config::bad_option_message(value)),
    }
}

/// What the step got, for a `StepStart`; `None` (after a warning) when Slurm gave no ids.
pub fn step_start(
    host: &dyn Host,
    config: &Config,
    cgroups: &dyn JobCgroups,
    warner: &Warner<'_>,
) -> Option<StepAllocation> {
    let (Some(job_id), Some(step_id), Some(uid), Some(node)) = (
        host.item(Item::JobId),
        host.item(Item::StepId),
        host.item(Item::Uid),
        node_name(host),
    ) else {
        warner.warn(
            host,
            "cannot report the step: Slurm gave no job id, step id, uid or node name",
        );
        return None;
    };
    let harvest = match host.harvest_option() {
        None => config.default_harvest,
        Some(v) => config::parse_on_off(&v).unwrap_or_else(|| {
            warner.warn(host, &config::bad_option_message(&v));
            config.default_harvest
        }),
    };
    let resources = match cgroups.job_resources(JobKey {
        node: &node,
        uid,
        job_id,
    }) {
        Ok(r) => r,
        // Not knowing what the job holds, the safe report is "keep this node clear of
        // functions while it runs": the batch job always wins.
        Err(e) => {
            warner.warn(
                host,
                &format!(
                    "cannot read what job {job_id} step {} got ({e}); asking the agent to keep \
                     this node clear of functions while it runs",
                    StepId(step_id)
                ),
            );
            return Some(StepAllocation {
                job_id,
                step_id: StepId(step_id),
                uid,
                node,
                cpus: CpuSet::new(),
                memory_mib: None,
                gpus: Vec::new(),
                harvest: false,
            });
        }
    };
    // Never the job's environment: the user writes it (see `gpus`).
    let devices_list = cgroups
        .step_devices_list(
            JobKey {
                node: &node,
                uid,
                job_id,
            },
            StepId(step_id),
        )
        .map_err(|e| e.to_string());
    let step_gpus = gpus::step_gpus(&gpus::node_gpus(&config.dev_root), devices_list);
    if let Some(why) = &step_gpus.all_because {
        host.log(
            Level::Debug,
            &format!(
                "harvest: job {job_id} step {} reported as holding every GPU of the node: {why}",
                StepId(step_id)
            ),
        );
    }
    let gpus = step_gpus.gpus;
    Some(StepAllocation {
        job_id,
        step_id: StepId(step_id),
        uid,
        node,
        cpus: resources.cpus,
        memory_mib: resources.memory_mib,
        gpus,
        harvest,
    })
}

fn config_or_warn(host: &dyn Host, args: &[&str], warner: &Warner<'_>) -> Option<Config> {
    Config::parse(args.iter().copied())
        .map_err(|e| warner.warn(host, &format!("bad arguments in plugstack.conf: {e}")))
        .ok()
}

/// The Slurm node name, from the calling process's own environment only. SPANK 22.05 has no item
/// for it (`S_JOB_NODEID` is the node's rank in the job); slurmstepd sets `SLURMD_NODENAME` in its
/// own environment from the configuration slurmd sends it (`_init_from_slurmd`), and slurmd sets
/// it last in the environment of `slurmstepd spank epilog`. The job's environment
/// (`spank_getenv`) is never read: whatever the user exported travels there.
fn node_name(host: &dyn Host) -> Option<String> {
    host.process_env(NODE_NAME_VAR).filter(|n| !n.is_empty())
}

/// Sends `msg` to the agent; false when the agent did not answer (a refusal is an answer).
fn send(
    host: &dyn Host,
    config: &Config,
    node: &str,
    msg: &PluginMessage,
    warner: &Warner<'_>,
) -> bool {
    let client = AgentClient::new(config.socket.for_node(node), config.timeout);
    match client.send(msg) {
        Ok(reply) if reply.ok => true,
        Ok(reply) => {
            warner.warn(
                host,
                &format!(
                    "the agent at {} refused the report: {}",
                    client.path().display(),
                    reply.error.as_deref().unwrap_or("no reason given")
                ),
            );
            true
        }
        Err(e) => {
            warner.warn(host, &e.to_string());
            false
        }
    }
}

#[cfg(test)]
#[path = "plugin_tests.rs"]
mod tests;
