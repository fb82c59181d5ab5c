//! The addresses a component gives others to reach it (an executor's address that clients are
//! handed, the scheduler's address agents and clients connect to), apart from the addresses it
//! binds: a daemon may bind every interface (`0.0.0.0`) and must still name one address that other
//! hosts can connect to.
//!
//! Checked once at start: an advertised address must be a specific address (never `0.0.0.0` or
//! `::`) that this host can bind, i.e. one of its own. When none is configured it is the bound
//! address, or, where that is unspecified, the address the host's name resolves to (as a site's
//! `/etc/hosts` or DNS gives it); a name that resolves only to loopback (Debian's `127.0.1.1`
//! line) is refused, since no other host could use it.

use std::net::{IpAddr, TcpListener};

/// Where a host's name is read from ([`host_name`]).
pub const DEFAULT_HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// An advertised address that cannot be used; each variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    #[error(
        "{key} = {addr} is not an address another host can connect to: give this node's address \
         on the cluster network (127.0.0.1 for clients on this host only)"
    )]
    Unspecified { key: &'static str, addr: IpAddr },
    #[error(
        "{key} = {addr} is not an address of this host (binding it failed: {source}): give one of \
         this node's own addresses (ip -brief address lists them)"
    )]
    NotLocal {
        key: &'static str,
        addr: IpAddr,
        source: std::io::Error,
    },
    #[error(
        "{key} is not set and {bind_key} binds every interface, so the address is this host's \
         name's, but the name cannot be read or resolved: {reason}; set {key} to this node's \
         address on the cluster network"
    )]
    NoHostAddress {
        key: &'static str,
        bind_key: &'static str,
        reason: String,
    },
    #[error(
        "{key} is not set and {bind_key} binds every interface, so the address is this host's \
         name's, but {host:?} resolves only to loopback ({addrs}), which no other host can \
         reach: set {key} to this node's address on the cluster network (or 127.0.0.1 for a \
         single host), or fix the name's line in /etc/hosts"
    )]
    Loopback {
        key: &'static str,
        bind_key: &'static str,
        host: String,
        addrs: String,
    },
    #[error(
        "{key} = {value:?} is not host:port (a name or an address, and a port), e.g. \
             \"sched1.example:6820\""
    )]
    NotHostPort { key: &'static str, value: String },
    #[error(
        "{key} = {value:?}: {name:?} resolves to {addrs}, none of them an address of this host: \
         name this host as agents and clients reach it"
    )]
    NameNotLocal {
        key: &'static str,
        value: String,
        name: String,
        addrs: String,
    },
    #[error("{key} = {value:?}: {reason}")]
    NameUnresolved {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// How a host's name and its addresses are found (the real one: [`SystemHost`]).
pub trait HostLookup {
    /// This host's name.
    fn host_name(&self) -> Result<String, String>;
    /// The addresses `name` resolves to, in the resolver's order.
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, String>;
}

/// The host's name from `/proc/sys/kernel/hostname`, resolved with the C library's resolver
/// (`/etc/hosts`, DNS, as `nsswitch.conf` says).
#[derive(Debug, Clone)]
pub struct SystemHost {
    pub hostname_file: std::path::PathBuf,
}

impl Default for SystemHost {
    fn default() -> Self {
        Self {
            hostname_file: DEFAULT_HOSTNAME_FILE.into(),
        }
    }
}

impl HostLookup for SystemHost {
    fn host_name(&self) -> Result<String, String> {
        host_name(&self.hostname_file)
    }
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        use std::net::ToSocketAddrs;
        (name, 0)
            .to_socket_addrs()
            .map(|a| a.map(|a| a.ip()).collect())
            .map_err(|e| format!("resolving {name:?}: {e}"))
    }
}

/// The host's name, read from `file` (the kernel's `hostname`).
pub fn host_name(file: &std::path::Path) -> Result<String, String> {
    let name = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    Ok(name.to_owned())
}

/// The address to advertise: `advertised` if set, else `bind` if it is a specific address, else
/// the first non-loopback address (IPv4 first) of this host's name. Only picks; [`check_local`]
/// then proves the host can bind it.
pub fn pick(
    key: &'static str,
    bind_key: &'static str,
    bind: IpAddr,
    advertised: Option<IpAddr>,
    host: &dyn HostLookup,
) -> Result<IpAddr, AdvertiseError> {
    let addr = match advertised {
        Some(a) => a,
        None if !bind.is_unspecified() => bind,
        None => {
            let no_address = |reason| AdvertiseError::NoHostAddress {
                key,
                bind_key,
                reason,
            };
            let name = host.host_name().map_err(no_address)?;
            let addrs = host.resolve(&name).map_err(no_address)?;
            let usable = |v4: bool| {
                addrs
                    .iter()
                    .copied()
                    .find(|a| a.is_ipv4() == v4 && !a.is_loopback() && !a.is_unspecified())
            };
            match usable(true).or_else(|| usable(false)) {
                Some(a) => a,
                None if addrs.is_empty() => {
                    return Err(no_address(format!("{name:?} resolves to no address")));
                }
                None => {
                    return Err(AdvertiseError::Loopback {
                        key,
                        bind_key,
                        host: name,
                        addrs: addrs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
    };
    if addr.is_unspecified() {
        return Err(AdvertiseError::Unspecified { key, addr });
    }
    Ok(addr)
}

/// Proves `addr` is one of this host's addresses by binding a TCP socket to it on an ephemeral
/// port (and closing it): nothing is sent anywhere.
pub fn check_local(key: &'static str, addr: IpAddr) -> Result<(), AdvertiseError> {
    if addr.is_unspecified() {
        return Err(AdvertiseError::Unspecified { key, addr });
    }
    TcpListener::bind((addr, 0))
        .map(drop)
        .map_err(|source| AdvertiseError::NotLocal { key, addr, source })
}

/// [`pick`], then [`check_local`]: the address to advertise, proven to be this host's.
pub fn resolve(
    key: &'static str,
    bind_key: &'static str,
    bind: IpAddr,
    advertised: Option<IpAddr>,
    host: &dyn HostLookup,
) -> Result<IpAddr, AdvertiseError> {
    let addr = pick(key, bind_key, bind, advertised, host)?;
    check_local(key, addr)?;
    Ok(addr)
}

/// A `host:port` to advertise for a service bound on `bind`: `advertised` if set (a name must
/// resolve to at least one address of this host, an address must be one), else `bind`'s address
/// if a specific one, else this host's name's address ([`pick`]), with `bind`'s port.
pub fn resolve_host_port(
    key: &'static str,
    bind_key: &'static str,
    bind: std::net::SocketAddr,
    advertised: Option<&str>,
    host: &dyn HostLookup,
) -> Result<String, AdvertiseError> {
    let Some(value) = advertised else {
        let ip = resolve(key, bind_key, bind.ip(), None, host)?;
        return Ok(std::net::SocketAddr::new(ip, bind.port()).to_string());
    };
    let not_host_port = || AdvertiseError::NotHostPort {
        key,
        value: value.to_owned(),
    };
    let (name, port) = match value.strip_prefix('[') {
        Some(v6) => {
            let (h, p) = v6.split_once("]:").ok_or_else(not_host_port)?;
            (h, p)
        }
        None => value.rsplit_once(':').ok_or_else(not_host_port)?,
    };
    if name.is_empty() || name.contains(':') && !value.starts_with('[') {
        return Err(not_host_port());
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(not_host_port)?;
    if let Ok(ip) = name.parse::<IpAddr>() {
        check_local(key, ip)?;
        return Ok(value.to_owned());
    }
    let addrs = host
        .resolve(name)
        .map_err(|reason| AdvertiseError::NameUnresolved {
            key,
            value: value.to_owned(),
            reason,
        })?;
    if addrs
        .iter()
        .any(|a| !a.is_unspecified() && check_local(key, *a).is_ok())
    {
        return Ok(value.to_owned());
    }
    Err(AdvertiseError::NameNotLocal {
        key,
        value: value.to_owned(),
        name: name.to_owned(),
        addrs: if addrs.is_empty() {
            "no address".to_owned()
        } else {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A host whose name resolves to the given addresses (nothing is looked up for real).
    struct FakeHost(Vec<IpAddr>);
    impl HostLookup for FakeHost {
        fn host_name(&self) -> Result<String, String> {
            Ok("n17".into())
        }
        fn resolve(&self, _: &str) -> Result<Vec<IpAddr>, String> {
            Ok(self.0.clone())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    const K: &str = "executor_advertise_address";
    const B: &str = "executor_bind_address";

    #[test]
    fn an_explicit_address_wins_over_the_bound_one() {
        let none = FakeHost(vec![]);
        // Bound on 127.0.0.2, advertised as 127.0.0.3: both this host's (all of 127/8 is).
        let a = resolve(K, B, ip("127.0.0.2"), Some(ip("127.0.0.3")), &none).unwrap();
        assert_eq!(a, ip("127.0.0.3"));
        // Unset: the bound address, when it is a specific one.
        assert_eq!(
            resolve(K, B, ip("127.0.0.2"), None, &none).unwrap(),
            ip("127.0.0.2")
        );
    }

    #[test]
    fn unspecified_is_refused_with_the_key() {
        for any in [ANY, ip("::")] {
            let e = pick(K, B, ip("127.0.0.1"), Some(any), &FakeHost(vec![])).unwrap_err();
            assert!(matches!(e, AdvertiseError::Unspecified { .. }), "{e}");
            assert!(e.to_string().contains(K), "{e}");
            assert!(check_local(K, any).is_err());
        }
    }

    #[test]
    fn binding_every_interface_advertises_the_host_names_address() {
        let host = FakeHost(vec![ip("127.0.1.1"), ip("fd00::17"), ip("10.1.0.17")]);
        assert_eq!(pick(K, B, ANY, None, &host).unwrap(), ip("10.1.0.17"));
        let v6 = FakeHost(vec![ip("::1"), ip("fd00::17")]);
        assert_eq!(pick(K, B, ANY, None, &v6).unwrap(), ip("fd00::17"));
        // Debian's default /etc/hosts line: the name is loopback only.
        let e = pick(K, B, ANY, None, &FakeHost(vec![ip("127.0.1.1")])).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, AdvertiseError::Loopback { .. })
                && msg.contains("127.0.1.1")
                && msg.contains("\"n17\"")
                && msg.contains(K),
            "{msg}"
        );
        let e = pick(K, B, ANY, None, &FakeHost(vec![])).unwrap_err();
        assert!(matches!(e, AdvertiseError::NoHostAddress { .. }), "{e}");
    }

    #[test]
    fn an_address_this_host_does_not_have_is_refused() {
        // Loopback addresses are all this host's.
        check_local(K, ip("127.0.0.2")).unwrap();
        // 192.0.2.1 (TEST-NET-1, RFC 5737) is no host's: the bind fails (EADDRNOTAVAIL) unless
        // the kernel lets anyone bind foreign addresses. Nothing is sent.
        let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind")
            .is_ok_and(|v| v.trim() == "1");
        let r = check_local(K, ip("192.0.2.1"));
        if nonlocal {
            assert!(r.is_ok());
        } else {
            let e = r.unwrap_err();
            assert!(matches!(e, AdvertiseError::NotLocal { .. }), "{e}");
            assert!(e.to_string().contains("192.0.2.1"), "{e}");
        }
    }

    #[test]
    fn the_host_name_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hostname");
        std::fs::write(&f, "n17\n").unwrap();
        assert_eq!(host_name(&f).unwrap(), "n17");
        std::fs::write(&f, "\n").unwrap();
        assert!(host_name(&f).is_err());
        assert!(host_name(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn a_host_port_is_a_local_name_or_address_with_a_port() {
        let sock = |s: &str| -> std::net::SocketAddr { s.parse().unwrap() };
        const S: &str = "advertise";
        const L: &str = "listen";
        let host = FakeHost(vec![ip("127.0.0.5")]);
        // Explicit: an address of this host, or a name resolving to one.
        let r = |v| resolve_host_port(S, L, sock("0.0.0.0:6820"), Some(v), &host);
        assert_eq!(r("127.0.0.2:6820").unwrap(), "127.0.0.2:6820");
        assert_eq!(r("[::1]:6820").unwrap(), "[::1]:6820");
        assert_eq!(r("sched1.example:6820").unwrap(), "sched1.example:6820");
        for bad in [
            "sched1.example",
            "sched1.example:0",
            ":6820",
            "::1:6820",
            "h:x",
        ] {
            assert!(
                matches!(r(bad), Err(AdvertiseError::NotHostPort { .. })),
                "{bad}: {:?}",
                r(bad)
            );
        }
        assert!(matches!(
            r("0.0.0.0:6820"),
            Err(AdvertiseError::Unspecified { .. })
        ));
        let nowhere = FakeHost(vec![ip("0.0.0.0")]);
        let e = resolve_host_port(S, L, sock("0.0.0.0:1"), Some("far.example:1"), &nowhere)
            .unwrap_err();
        assert!(
            matches!(e, AdvertiseError::NameNotLocal { .. }) && e.to_string().contains(S),
            "{e}"
        );
        // Unset: the bound address with its port, else the host name's.
        assert_eq!(
            resolve_host_port(S, L, sock("127.0.0.2:6820"), None, &host).unwrap(),
            "127.0.0.2:6820"
        );
        let e = resolve_host_port(S, L, sock("0.0.0.0:6820"), None, &host).unwrap_err();
        assert!(matches!(e, AdvertiseError::Loopback { .. }), "{e}");
    }
}
