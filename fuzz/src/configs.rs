//! The configuration parsers: harvestd's TOML, the scheduler's TOML, a policy's TOML, and the
//! SPANK plugin's `plugstack.conf` arguments.

use std::path::Path;
use std::time::{Duration, Instant};

use harvest_policies::{PolicyConfig, Registry};

use crate::spank;

/// Bytes as text, as a configuration file read with `read_to_string` would be (a file that is
/// not UTF-8 is refused before parsing).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Any text as harvestd's configuration file: parsing and validating never panic, and a valid
/// configuration's durations can all be waited for (added to the clock without overflow).
pub fn agent_config(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(mut config) = harvest_agent::config::Config::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    config.node = "n1".into();
    if config.validate().is_err() {
        return;
    }
    let i = &config.interference;
    let durations = [
        ("reconcile_interval", config.reconcile_interval),
        ("unseen_job_grace", config.unseen_job_grace),
        ("read_timeout", config.read_timeout),
        ("scontrol_timeout", config.scontrol_timeout),
        ("heartbeat_interval", config.heartbeat_interval),
        ("reconnect_backoff_max", config.reconnect_backoff_max),
        ("executor_start_timeout", config.executor_start_timeout),
        ("executor_stop_grace", config.executor_stop_grace),
        ("reclaim_timeout", config.reclaim_timeout),
        ("reclaim_teardown_delay", config.reclaim_teardown_delay),
        ("drain_check_interval", config.drain_check_interval),
        ("interference.period", i.period),
        ("interference.probe_duration", i.probe_duration),
        ("interference.probe_interval", i.probe_interval),
        ("interference.settle", i.settle),
        ("interference.relax_after", i.relax_after),
        ("interference.max_hold", i.max_hold),
        ("interference.evict_hold", i.evict_hold),
    ];
    check_durations(&durations);
    let _ = config.reserve();
}

/// A validated duration must be usable as a deadline: `Instant::now() + d` panics on overflow.
fn check_durations(durations: &[(&str, Duration)]) {
    let now = Instant::now();
    for (key, d) in durations {
        assert!(
            now.checked_add(*d).is_some(),
            "{key} = {d:?} passed validation but cannot be a deadline"
        );
    }
}

/// Any text as the scheduler's configuration file: parsing, validating and every derived setting
/// never panic; a valid configuration's lifetimes can be added to today's clock.
pub fn scheduler_config(data: &[u8]) {
    use harvest_scheduler::config::Config;
    let Some(text) = text(data) else { return };
    let Ok(config) = toml::from_str::<Config>(text) else {
        return;
    };
    let valid = config.validate();
    if let Err(e) = &valid {
        assert!(!e.to_string().is_empty());
        return;
    }
    let _ = config.timeline_samples();
    assert!(config.listen_addr().is_ok());
    assert!(config.http_addr().is_ok());
    check_durations(&[
        ("executor_start_timeout_ms", config.executor_start_timeout()),
        ("placement_wait_ms", config.placement_wait()),
        ("tick_ms", config.tick()),
        ("auth_timeout_ms", config.auth_timeout()),
        (
            "max_lifetime_ms",
            Duration::from_millis(config.max_lifetime_ms),
        ),
        (
            "default_idle_timeout_ms",
            Duration::from_millis(config.default_idle_timeout_ms),
        ),
    ]);
    // The book stamps a lease's expiry as Unix milliseconds in an i64.
    let now_unix_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    assert!(
        i64::try_from(config.max_lifetime_ms)
            .ok()
            .and_then(|ms| now_unix_ms.checked_add(ms))
            .is_some(),
        "max_lifetime_ms = {} passed validation but overflows a lease's expiry",
        config.max_lifetime_ms
    );
}

/// Any text as a policy: parsing and validating never panic; a valid policy builds, and it
/// writes back to TOML that parses to the same policy.
pub fn policy_config(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(policy) = PolicyConfig::from_toml(text) else {
        return;
    };
    let registry = Registry::builtin();
    let valid = policy.validate(&registry);
    let written = toml::to_string(&policy).expect("a parsed policy serializes");
    let back = PolicyConfig::from_toml(&written).expect("a written policy parses");
    assert_eq!(back, policy, "{written}");
    if valid.is_ok() {
        assert!(policy.build("fuzz", &registry).is_ok());
    }
}

/// Any text as the plugin's `plugstack.conf` arguments (split on whitespace, as Slurm does):
/// parsing never panics; a parsed timeout is in range; a socket template expands for any node
/// name, and one without `%` is the path itself.
pub fn spank_args(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let args: Vec<&str> = line.split_ascii_whitespace().collect();
    for arg in &args {
        let value = arg.split_once('=').map_or(*arg, |(_, v)| v);
        if spank::parse_on_off(value).is_none() {
            assert!(spank::bad_option_message(value).contains("--harvest=on"));
        }
    }
    let Ok(config) = spank::Config::parse(args.iter().copied()) else {
        return;
    };
    let ms = config.timeout.as_millis();
    assert!(
        (1..=u128::from(spank::MAX_TIMEOUT_MS)).contains(&ms),
        "{ms}"
    );
    let template = args
        .iter()
        .rev()
        .find_map(|a| a.strip_prefix("socket="))
        .expect("a parsed configuration had socket=");
    for node in ["n1", "", "%n", "a/b"] {
        let path = config.socket.for_node(node);
        if !template.contains('%') {
            assert_eq!(path, Path::new(template));
        }
    }
}
