//! Step 2 of gpu_check (see main.rs): device nodes opened from inside the lease and, as a
//! control, from gpu_check itself (root, outside any lease group).

use std::path::{Path, PathBuf};
use std::process::Command;

use harvest_client::invoke::ExecutorConnection;
use serde_json::{Value, json};

use crate::measure::call;
use crate::{Args, Report};

/// EPERM: what a devices cgroup answers for a node it does not allow.
const EPERM: i32 = 1;
/// Linux's O_NONBLOCK (x86-64 and aarch64): device nodes are opened as `open_path` does.
const O_NONBLOCK: i32 = 0o4000;

/// Opens each device node from inside the lease and from here (step 2 in main.rs).
pub fn device_checks(
    a: &Args,
    r: &mut Report,
    conn: &mut ExecutorConnection,
    gpus: &[u32],
    dir: &Path,
) -> Value {
    let mut checks: Vec<(PathBuf, &str, bool)> = Vec::new(); // path, what, should open inside
    let mut present = Vec::new();
    for entry in std::fs::read_dir(&a.dev_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("nvidia")
            .and_then(|d| d.parse::<u32>().ok())
        {
            present.push(n);
            let lent = gpus.contains(&n);
            checks.push((
                entry.path(),
                if lent {
                    "the lent GPU"
                } else {
                    "a GPU not lent"
                },
                lent,
            ));
        }
    }
    present.sort_unstable();
    for (name, what, allowed) in [
        (
            "nvidiactl",
            "NVIDIA's control node (allowed with any GPU)",
            true,
        ),
        (
            "nvidia-uvm",
            "the unified-memory node (allowed with any GPU)",
            true,
        ),
        (
            "nvidia-modeset",
            "the modeset node (not in the allow-list)",
            false,
        ),
    ] {
        let p = a.dev_root.join(name);
        if p.exists() {
            checks.push((p, what, allowed));
        }
    }
    // A GPU minor with no GPU behind it: EPERM inside only if the devices cgroup says no.
    let fake_minor = (0..=253).find(|m| !present.contains(m)).unwrap_or(253);
    let fake = dir.join(format!("nvidia{fake_minor}"));
    let made = Command::new("mknod")
        .args(["-m", "0666"])
        .arg(&fake)
        .args(["c", "195", &fake_minor.to_string()])
        .output();
    match made {
        Ok(o) if o.status.success() => checks.push((
            fake,
            "a node made with mknod for a GPU minor not on this machine",
            false,
        )),
        Ok(o) => r.error(
            "device_checks",
            format!(
                "mknod {}: {}",
                fake.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => r.error("device_checks", format!("mknod {}: {e}", fake.display())),
    }
    let mut rows = Vec::new();
    let (mut confined, mut unconfined, mut unclear, mut wrongly_refused) = (0, 0, 0, 0);
    for (path, what, allowed) in checks {
        let inside = match call(conn, "open_path", path.as_os_str().as_encoded_bytes()) {
            Ok(out) => String::from_utf8_lossy(&out).into_owned(),
            Err(e) => format!("invocation failed: {e:#}"),
        };
        let outside = open_here(&path);
        let eperm = format!("errno={EPERM}");
        let verdict = if allowed {
            if inside == "opened" {
                "opened, as a lent node should"
            } else if inside == eperm && outside != eperm {
                wrongly_refused += 1;
                "EPERM inside the lease only: refused, but it should be allowed"
            } else {
                "not refused by the lease: the same answer outside (no driver behind it?)"
            }
        } else if inside == eperm && outside != eperm {
            confined += 1;
            "EPERM inside the lease only: the devices cgroup refused it"
        } else if inside == "opened" {
            unconfined += 1;
            "opened from inside the lease: not confined"
        } else {
            unclear += 1;
            "inconclusive: the same answer inside and outside"
        };
        rows.push(json!({"path": path.display().to_string(), "what": what,
                         "should_open_inside": allowed, "inside_lease": inside,
                         "outside_as_root": outside, "verdict": verdict}));
    }
    let isolation = match (confined, unconfined, unclear) {
        _ if wrongly_refused > 0 => "broken: a lent node was refused (see the rows)",
        (0, 0, _) => "not checked: no device node that is not lent could be tried",
        (_, 0, 0) => "enforced",
        (0, _, _) => "unconfined",
        _ => "mixed (see the rows)",
    };
    json!({"isolation": isolation, "nodes": rows})
}

/// Opens `path` read-only here (root, outside any lease group): "opened" or "errno=N".
fn open_here(path: &Path) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
    {
        Ok(_) => "opened".into(),
        Err(e) => format!("errno={}", e.raw_os_error().unwrap_or(-1)),
    }
}
