//! After a harvestd start: the leases of the ledger whose executor still runs in its cgroup get
//! a task again; the rest are ended; lease groups and directories no lease owns are removed.

use super::task::{self, Adopted};
use super::{LeaseSupervisor, launch, safefs};

/// Re-adopts what still runs and cleans up the rest (see the module docs).
pub async fn adopt(sup: &LeaseSupervisor) {
    let ctx = sup.context().clone();
    if ctx.cgroups.exists(ctx.parent.path()) {
        ctx.parent.prepare();
    }
    let snap = ctx.ledger.snapshot();
    let leases = snap.ledger.leases.clone();
    for (id, lease) in &leases {
        let alive = lease.executor.as_ref().and_then(|e| {
            let running = ctx.processes.start_time(e.pid) == Some(e.start_time);
            let address = e.address.clone()?;
            (running && ctx.cgroups.exists(&ctx.group(id))).then(|| Adopted {
                record: lease.clone(),
                pid: e.pid,
                start_time: e.start_time,
                address,
            })
        });
        match alive {
            Some(adopted) => {
                tracing::info!(lease = %id, pid = adopted.pid, "executor re-adopted");
                sup.spawn_adopted(id.clone(), lease.uid, adopted);
            }
            None => {
                task::run_gone(
                    &ctx,
                    id,
                    lease.clone(),
                    "harvestd restarted and the executor was gone".to_owned(),
                )
                .await;
            }
        }
    }
    let parent = ctx.parent.path().to_path_buf();
    let groups = ctx.cgroups.children(&parent).unwrap_or_default();
    for name in groups {
        let owned = name
            .strip_prefix("lease_")
            .is_some_and(|id| leases.contains_key(id));
        if owned {
            continue;
        }
        let group = parent.join(&name);
        // A populated group no lease of ours owns may be another agent's (two agents
        // configured with one lease_cgroup_parent): never kill what we did not start.
        match ctx.cgroups.pids(&group) {
            Ok(pids) if pids.is_empty() => {
                tracing::info!(group = %group.display(), "removing an empty lease group no lease owns");
                if let Err(e) = ctx.cgroups.remove(&group) {
                    tracing::warn!(group = %group.display(), error = %e, "could not remove a stray lease group");
                }
            }
            Ok(pids) => tracing::warn!(group = %group.display(), ?pids,
                "a lease group no lease of this agent owns still has processes; left alone (is another harvestd using the same lease_cgroup_parent?)"),
            Err(e) => {
                tracing::warn!(group = %group.display(), error = %e, "cannot read a stray lease group")
            }
        }
    }
    let dirs = std::fs::read_dir(launch::leases_dir(&ctx.settings.state_dir))
        .into_iter()
        .flatten()
        .flatten();
    for entry in dirs {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !leases.contains_key(&name) {
            let leases_dir = launch::leases_dir(&ctx.settings.state_dir);
            if let Err(e) = safefs::remove_entry(&leases_dir, &name) {
                tracing::warn!(dir = %leases_dir.join(&name).display(), error = %e,
                    "could not remove a lease directory no lease owns");
            }
        }
    }
}
