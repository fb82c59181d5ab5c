//! Each check's verdicts, driven by its inputs alone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harvest_core::{CpuBreakdown, CpuSet, NodeView};

use super::*;
use crate::doctor::Verdict;

#[test]
fn slurm_version_is_read_or_its_absence_explained() {
    let c = slurm_version(Ok("slurm-wlm 22.05.8\n".into()));
    assert_eq!(c.verdict, Verdict::Ok);
    assert!(c.summary.contains("22.05.8"), "{}", c.summary);
    let c = slurm_version(Err("scontrol: No such file or directory".into()));
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.fix.unwrap().contains("slurm-client"));
    assert_eq!(slurm_version(Ok("garbage".into())).verdict, Verdict::Fail);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_plugin_is_found_through_includes() {
    let dir = tempfile::tempdir().unwrap();
    let so = write(dir.path(), "lib/libharvest_spank-abc.so", "");
    let conf = write(
        dir.path(),
        "plugstack.conf",
        &format!(
            "# comment\ninclude {}/plugstack.conf.d/*.conf\n",
            dir.path().display()
        ),
    );
    write(
        dir.path(),
        "plugstack.conf.d/other.conf",
        "required /usr/lib/other.so\n",
    );
    write(
        dir.path(),
        "plugstack.conf.d/harvest.conf",
        &format!(
            "optional {} socket=/run/x-%n.sock default=on\n",
            so.display()
        ),
    );
    let lines = read_plugstack(&conf).unwrap();
    assert_eq!(lines.len(), 2);
    let c = plugstack(&conf, Ok(lines), "harvest_spank", Path::exists);
    assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
    assert!(c.summary.contains("harvest.conf:1"), "{}", c.summary);
    assert!(c.summary.contains("socket=/run/x-%n.sock"), "{}", c.summary);
}

#[test]
fn a_plugstack_without_the_plugin_fails_and_says_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write(dir.path(), "plugstack.conf", "required /usr/lib/other.so\n");
    let c = plugstack(&conf, read_plugstack(&conf), "harvest_spank", Path::exists);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.contains("not registered"), "{}", c.summary);
    assert!(
        c.fix
            .unwrap()
            .contains("optional /usr/lib/slurm/libharvest_spank.so")
    );
    // A missing file, a missing library and a doubled line fail too.
    let missing = dir.path().join("nope.conf");
    let c = plugstack(
        &missing,
        read_plugstack(&missing),
        "harvest_spank",
        Path::exists,
    );
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.contains("cannot read"), "{}", c.summary);
    let conf = write(
        dir.path(),
        "p2.conf",
        "optional /gone/libharvest_spank.so\n",
    );
    let c = plugstack(&conf, read_plugstack(&conf), "harvest_spank", Path::exists);
    assert!(c.summary.contains("does not exist"), "{}", c.summary);
    let conf = write(
        dir.path(),
        "p3.conf",
        "optional libharvest_spank.so\noptional libharvest_spank.so\n",
    );
    let c = plugstack(&conf, read_plugstack(&conf), "harvest_spank", |_| true);
    assert!(c.summary.contains("2 times"), "{}", c.summary);
    let conf = write(dir.path(), "p4.conf", "bogus x\n");
    assert!(
        read_plugstack(&conf)
            .unwrap_err()
            .contains("unknown directive")
    );
}

#[test]
fn glob_matches_like_a_shell() {
    assert!(matches("*.conf", "harvest.conf"));
    assert!(!matches("*.conf", "harvest.conf.bak"));
    assert!(matches("h?rvest*", "harvest.conf"));
    assert!(!matches("x*", "harvest"));
}

const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
36 30 0:32 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
37 30 0:33 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
38 30 0:34 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
22 1 8:1 / / rw - ext4 /dev/sda1 rw
";

const PURE_V2: &str = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";

fn root() -> &'static Path {
    Path::new("/sys/fs/cgroup")
}

#[test]
fn a_hybrid_host_is_v1_with_its_controllers() {
    let m = parse_mountinfo(HYBRID, root()).unwrap();
    assert_eq!(m.len(), 7);
    assert_eq!(detect_mode(&m, root()), Some(CgroupMode::V1));
    let c = cgroup(&m, root(), None, None);
    assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
    assert!(c.summary.starts_with("cgroup v1"), "{}", c.summary);
    // Slurm (or the flag) saying v1 agrees.
    let c = cgroup(
        &m,
        root(),
        Some((CgroupMode::V1, "cgroup.conf".into())),
        None,
    );
    assert_eq!(c.verdict, Verdict::Ok);
}

#[test]
fn a_v1_node_configured_for_v2_is_the_wrong_mode() {
    let m = parse_mountinfo(HYBRID, root()).unwrap();
    let c = cgroup(
        &m,
        root(),
        Some((
            CgroupMode::V2,
            "/etc/slurm/cgroup.conf (CgroupPlugin)".into(),
        )),
        None,
    );
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.starts_with("wrong cgroup mode"), "{}", c.summary);
    assert!(c.summary.contains("hybrid"), "{}", c.summary);
    assert!(c.fix.unwrap().contains("CgroupPlugin=cgroup/v1"));
}

#[test]
fn missing_controllers_fail_or_warn_by_need() {
    let no_memory: String = HYBRID
        .lines()
        .filter(|l| !l.contains("memory"))
        .collect::<Vec<_>>()
        .join("\n");
    let c = cgroup(
        &parse_mountinfo(&no_memory, root()).unwrap(),
        root(),
        None,
        None,
    );
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.contains("missing memory"), "{}", c.summary);
    let no_freezer: String = HYBRID
        .lines()
        .filter(|l| !l.contains("freezer"))
        .collect::<Vec<_>>()
        .join("\n");
    let c = cgroup(
        &parse_mountinfo(&no_freezer, root()).unwrap(),
        root(),
        None,
        None,
    );
    assert_eq!(c.verdict, Verdict::Warn);
    assert!(c.summary.contains("missing freezer"), "{}", c.summary);
    // v2 reads its controllers from cgroup.controllers.
    let m = parse_mountinfo(PURE_V2, root()).unwrap();
    assert_eq!(detect_mode(&m, root()), Some(CgroupMode::V2));
    let all = Some(Ok(
        "cpuset cpu io memory pids hugetlb freezer devices".to_owned()
    ));
    assert_eq!(cgroup(&m, root(), None, all).verdict, Verdict::Ok);
    let c = cgroup(&m, root(), None, Some(Ok("cpu io memory pids".to_owned())));
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.contains("missing cpuset"), "{}", c.summary);
    assert_eq!(cgroup(&[], root(), None, None).verdict, Verdict::Fail);
    // Mounts outside the root do not count.
    assert!(
        parse_mountinfo(HYBRID, Path::new("/elsewhere"))
            .unwrap()
            .is_empty()
    );
    // The agent's parser: a line it would refuse is refused here too, and named.
    let e = parse_mountinfo("not mountinfo\n", root()).unwrap_err();
    assert!(e.to_string().contains("not mountinfo"), "{e}");
    // name=systemd is a v1 hierarchy (the mode) but no controller (the list).
    let named = "40 30 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n";
    let m = parse_mountinfo(named, root()).unwrap();
    assert_eq!(m.len(), 1);
    assert!(m[0].controllers.is_empty(), "{m:?}");
    assert_eq!(detect_mode(&m, root()), Some(CgroupMode::V1));
}

#[test]
fn slurm_plugin_names_map_to_modes() {
    assert_eq!(
        CgroupMode::from_slurm_plugin("cgroup/v2"),
        Some(CgroupMode::V2)
    );
    assert_eq!(
        CgroupMode::from_slurm_plugin(" cgroup/v1"),
        Some(CgroupMode::V1)
    );
    assert_eq!(CgroupMode::from_slurm_plugin("autodetect"), None);
}

struct FakeMunge {
    encode: Result<String, String>,
    decode: Result<String, String>,
}

impl MungeProbe for FakeMunge {
    fn encode(&self) -> Result<String, String> {
        self.encode.clone()
    }
    fn decode(&self, credential: &str) -> Result<String, String> {
        assert_eq!(credential, "MUNGE:cred");
        self.decode.clone()
    }
}

#[test]
fn munge_verdicts() {
    let ok = FakeMunge {
        encode: Ok("MUNGE:cred".into()),
        decode: Ok("STATUS:          Success (0)\nENCODE_HOST: x\n".into()),
    };
    assert_eq!(munge(&ok).verdict, Verdict::Ok);
    let down = FakeMunge {
        encode: Err("munge: Error: Failed to access \"/x\": No such file or directory".into()),
        decode: Ok(String::new()),
    };
    let c = munge(&down);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.starts_with("munge down"), "{}", c.summary);
    assert!(c.summary.contains("/x"), "{}", c.summary);
    let bad_key = FakeMunge {
        encode: Ok("MUNGE:cred".into()),
        decode: Ok("STATUS:          Invalid credential (6)\n".into()),
    };
    let c = munge(&bad_key);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.contains("Invalid credential"), "{}", c.summary);
}

#[test]
fn agent_verdicts() {
    let view = NodeView {
        name: "n1".into(),
        cpus: CpuBreakdown {
            total: CpuSet::first_n(4),
            batch: [0].into_iter().collect(),
            function: CpuSet::new(),
            idle: [1, 2, 3].into_iter().collect(),
        },
        memory_mib: Default::default(),
        gpus: Default::default(),
    };
    let sock = Path::new("/run/harvest/harvestd-n1.query.sock");
    let c = agent("n1", sock, Ok(view));
    assert_eq!((c.name.as_str(), c.verdict), ("agent:n1", Verdict::Ok));
    assert!(
        c.summary.contains("4 CPUs (1 batch, 0 function, 3 idle)"),
        "{}",
        c.summary
    );
    let c = agent("n1", sock, Err("connection refused".into()));
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.starts_with("agent down"), "{}", c.summary);
    assert!(c.fix.unwrap().contains("harvestd run --node n1"));
}

fn set(ids: &[u32]) -> BTreeSet<u32> {
    ids.iter().copied().collect()
}

fn sample(agent: &[u32], running: &[u32], any: &[u32]) -> LedgerSample {
    LedgerSample {
        agent: set(agent),
        slurm_running: set(running),
        slurm_any: set(any),
    }
}

#[test]
fn ledger_agreeing_with_slurm_is_ok() {
    // A completing job the agent still holds is no fault.
    let c = ledger("n1", &[sample(&[5, 6], &[5], &[5, 6])]);
    assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
    assert!(!sample(&[5, 6], &[5], &[5, 6]).disagrees());
}

#[test]
fn ledger_disagreements_are_named_both_ways() {
    let s = sample(&[5, 999], &[5, 7], &[5, 7]);
    assert!(s.disagrees());
    let c = ledger("n1", &[s]);
    assert_eq!((c.name.as_str(), c.verdict), ("ledger:n1", Verdict::Fail));
    assert!(
        c.summary.starts_with("ledger disagrees with Slurm"),
        "{}",
        c.summary
    );
    assert!(
        c.summary.contains("job(s) 999 that Slurm does not have"),
        "{}",
        c.summary
    );
    assert!(
        c.summary.contains("Slurm runs job(s) 7 on n1"),
        "{}",
        c.summary
    );
}

#[test]
fn a_job_that_starts_between_two_samples_is_no_fault() {
    // First look: Slurm runs 7, the agent has not heard yet; second look: both know it.
    let c = ledger("n1", &[sample(&[], &[7], &[7]), sample(&[7], &[7], &[7])]);
    assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
    // Seen in both looks: a fault.
    let c = ledger("n1", &[sample(&[999], &[], &[]), sample(&[999], &[], &[])]);
    assert_eq!(c.verdict, Verdict::Fail);
}

fn pem(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(vec!["node-n1".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem().into_bytes()
}

fn at(y: i32, m: u8, d: u8) -> SystemTime {
    let secs = rcgen::date_time_ymd(y, m, d).unix_timestamp();
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

#[test]
fn certificate_verdicts_by_date() {
    let p = Path::new("/etc/harvest/tls/node-n1.pem");
    let warn = Duration::from_secs(30 * 86_400);
    let c = certificate(p, Ok(pem((2025, 1, 1), (2027, 1, 1))), at(2026, 1, 1), warn);
    assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
    assert_eq!(c.name, "cert:/etc/harvest/tls/node-n1.pem");
    let c = certificate(
        p,
        Ok(pem((2025, 1, 1), (2026, 1, 20))),
        at(2026, 1, 1),
        warn,
    );
    assert_eq!(c.verdict, Verdict::Warn, "{c:?}");
    assert!(c.summary.contains("expires in 19 day(s)"), "{}", c.summary);
    let c = certificate(p, Ok(pem((2024, 1, 1), (2025, 1, 1))), at(2026, 1, 1), warn);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.summary.starts_with("expired certificate"),
        "{}",
        c.summary
    );
    assert!(c.summary.contains("365 day(s) ago"), "{}", c.summary);
    let c = certificate(p, Ok(pem((2027, 1, 1), (2028, 1, 1))), at(2026, 1, 1), warn);
    assert!(c.summary.contains("not valid yet"), "{}", c.summary);
    let c = certificate(p, Ok(b"not pem".to_vec()), at(2026, 1, 1), warn);
    assert_eq!(c.verdict, Verdict::Fail);
    let c = certificate(p, Err("No such file".into()), at(2026, 1, 1), warn);
    assert!(c.summary.contains("No such file"), "{}", c.summary);
    // In a bundle, the certificate that expires first decides.
    let mut bundle = pem((2025, 1, 1), (2030, 1, 1));
    bundle.extend(pem((2024, 1, 1), (2025, 6, 1)));
    let c = certificate(p, Ok(bundle), at(2026, 1, 1), warn);
    assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
}

#[test]
fn clock_verdicts_by_skew() {
    assert_eq!(clock("s:1", Ok(0.4), 2.0, 60.0).verdict, Verdict::Ok);
    let c = clock("s:1", Ok(-5.0), 2.0, 60.0);
    assert_eq!(c.verdict, Verdict::Warn);
    assert!(c.summary.contains("-5.0 s"), "{}", c.summary);
    let c = clock("s:1", Ok(400.0), 2.0, 60.0);
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.contains("400 s ahead of"), "{}", c.summary);
    assert_eq!(
        clock("s:1", Err("refused".into()), 2.0, 60.0).verdict,
        Verdict::Warn
    );
}

#[test]
fn scheduler_and_executor_verdicts() {
    assert_eq!(scheduler("https://s:1", Ok(3)).verdict, Verdict::Ok);
    let c = scheduler("https://s:1", Err("connection refused".into()));
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.summary.starts_with("scheduler unreachable"));
    assert_eq!(
        executor("L1", "n1", "10.0.0.5:4000", Ok(())).verdict,
        Verdict::Ok
    );
    let c = executor(
        "L1",
        "n1",
        "127.0.0.1:4000",
        Err("connection refused".into()),
    );
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.summary.contains("advertises 127.0.0.1:4000"),
        "{}",
        c.summary
    );
    assert!(c.fix.unwrap().contains("executor_bind_address"));
}

#[test]
fn loopback_addresses_warn_only_when_the_scheduler_is_elsewhere() {
    let cfg = Path::new("/etc/harvest/harvestd.toml");
    let c = addresses(
        cfg,
        Some("https://127.0.0.1:6820,https://127.0.0.1:6822"),
        Some("127.0.0.1"),
        None,
        None,
    );
    assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
    assert_eq!(c.name, "addresses:/etc/harvest/harvestd.toml");
    assert_eq!(addresses(cfg, None, None, None, None).verdict, Verdict::Ok);
    let c = addresses(
        cfg,
        Some("https://sched1.cluster:6820"),
        Some("127.0.0.1"),
        None,
        Some("127.0.0.1:9201"),
    );
    assert_eq!(c.verdict, Verdict::Warn, "{c:?}");
    for part in [
        "executor_bind_address = 127.0.0.1",
        "metrics_listen = 127.0.0.1:9201",
        "sched1.cluster",
    ] {
        assert!(c.summary.contains(part), "{part}: {}", c.summary);
    }
    // The defaults: every interface bound, the host name's address advertised.
    let c = addresses(cfg, Some("https://sched1.cluster:6820"), None, None, None);
    assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
    assert!(
        c.summary
            .contains("bind 0.0.0.0 and are advertised as this host name's address"),
        "{}",
        c.summary
    );
    // A loopback advertised address is as wrong as a loopback bind.
    let c = addresses(
        cfg,
        Some("https://sched1.cluster:6820"),
        Some("0.0.0.0"),
        Some("127.0.0.1"),
        None,
    );
    assert_eq!(c.verdict, Verdict::Warn, "{c:?}");
    assert!(
        c.summary.contains("executor_advertise_address = 127.0.0.1")
            && !c.summary.contains("executor_bind_address"),
        "{}",
        c.summary
    );
    let c = addresses(
        cfg,
        Some("https://[fd00::1]:6820"),
        Some("10.1.0.7"),
        None,
        Some("10.1.0.7:9201"),
    );
    assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
    assert!(loopback("[::1]") && loopback("localhost") && !loopback("10.0.0.1"));
}
