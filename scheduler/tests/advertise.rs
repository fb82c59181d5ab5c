//! `harvest_scheduler::run` checks the address it advertises before it binds or waits for the
//! primary lock: a scheduler that agents and clients could not reach at that address refuses to
//! start, naming the key. Only 127.0.0.0/8 is bound; nothing is sent anywhere.

mod common;

use harvest_scheduler::ServeError;
use harvest_scheduler::config::Config;

async fn run(config: Config) -> Result<(), ServeError> {
    harvest_scheduler::run(config, async {}).await
}

#[tokio::test]
async fn an_unusable_advertised_address_is_refused_at_start() {
    let with = |advertise: &str| Config {
        advertise: Some(advertise.into()),
        ..common::config()
    };
    for (advertise, says) in [
        (
            "0.0.0.0:6820",
            "advertise = 0.0.0.0 is not an address another host can connect to",
        ),
        ("127.0.0.1", "is not host:port"),
    ] {
        let e = run(with(advertise)).await.unwrap_err();
        assert!(
            matches!(e, ServeError::Advertise(_)) && e.to_string().contains(says),
            "{advertise}: {e}"
        );
    }
    let nonlocal_bind_allowed = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind")
        .is_ok_and(|v| v.trim() == "1");
    if !nonlocal_bind_allowed {
        // 192.0.2.1 (TEST-NET-1) is no host's: binding it fails here, before any traffic.
        let e = run(with("192.0.2.1:6820")).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("advertise = 192.0.2.1 is not an address of this host"),
            "{e}"
        );
    }
    // A local address that is not the bound one passes the check: with the shutdown already
    // resolved, the scheduler then binds 127.0.0.2 and stops.
    let ok = Config {
        listen: "127.0.0.2:0".into(),
        ..with("127.0.0.3:6820")
    };
    run(ok).await.unwrap();
}
