//! Every field of a client request checked before anything else is done with it (before its
//! credential is even decoded: junk costs no `unmunge`), with an error that names the field and
//! the limit. What depends on the configuration (the lifetime's maximum) stays in the book.

use harvest_proto::v1;

use crate::book::BookError;

/// The most cores, GPUs and MiB one lease may ask for: far beyond any node, small enough that
/// no sum overflows.
pub const MAX_CORES: u32 = 1 << 16;
pub const MAX_GPUS: u32 = 1 << 10;
pub const MAX_MEMORY_MIB: u64 = 1 << 32;
/// The longest lease id, node name, library path and reason accepted.
pub const MAX_ID_BYTES: usize = 128;
pub const MAX_NODE_BYTES: usize = 64;
/// The most nodes one request may ask to avoid.
pub const MAX_AVOID_NODES: usize = 64;
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_REASON_BYTES: usize = 256;
/// The longest request id (the client's idempotency key; empty is allowed: none).
pub const MAX_REQUEST_ID_BYTES: usize = 64;
/// The executor's own bounds (harvest-executor refuses more).
pub const MAX_OUTPUT_BYTES: u64 = 1 << 30;
pub const MAX_HOT_WINDOW_US: i64 = 60_000_000;

fn bad(field: &str, why: impl std::fmt::Display) -> BookError {
    BookError::BadRequest(format!("{field}: {why}"))
}

/// A lease id or node name: 1 to `max` bytes of letters, digits, `-`, `_`, `.`.
fn name(field: &str, value: &str, max: usize) -> Result<(), BookError> {
    if value.is_empty() {
        return Err(bad(field, "is empty"));
    }
    if value.len() > max {
        return Err(bad(
            field,
            format_args!("is {} bytes, more than {max}", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(bad(
            field,
            format_args!("{c:?} is not a letter, digit, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

fn at_most<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    max: T,
) -> Result<(), BookError> {
    if value > max {
        return Err(bad(
            field,
            format_args!("{value} is more than the limit {max}"),
        ));
    }
    Ok(())
}

/// A memory lease: a region and a CPU cap, nothing else of a function lease's.
fn memory_lease(r: &v1::AcquireLeaseRequest, m: &v1::MemorySpec) -> Result<(), BookError> {
    if r.cores != 0 {
        return Err(bad(
            "cores",
            "must be 0 for a memory lease (its executor holds no core of its own)",
        ));
    }
    if r.gpus != 0 {
        return Err(bad("gpus", "must be 0 for a memory lease"));
    }
    if r.library.is_some() {
        return Err(bad("library", "must be absent for a memory lease"));
    }
    at_most("memory.region_mib", m.region_mib, MAX_MEMORY_MIB)?;
    m.to_core().map_err(|e| bad("memory", e))?;
    Ok(())
}

fn reason(value: &str) -> Result<(), BookError> {
    at_most("reason (bytes)", value.len(), MAX_REASON_BYTES)
}

pub fn acquire(r: &v1::AcquireLeaseRequest) -> Result<(), BookError> {
    match &r.memory {
        Some(m) => memory_lease(r, m)?,
        None => function_lease(r)?,
    }
    if !r.request_id.is_empty() {
        name("request_id", &r.request_id, MAX_REQUEST_ID_BYTES)?;
    }
    at_most("avoid_nodes (count)", r.avoid_nodes.len(), MAX_AVOID_NODES)?;
    for node in &r.avoid_nodes {
        name("avoid_nodes", node, MAX_NODE_BYTES)?;
    }
    if let Some(o) = &r.executor {
        executor_options(o)?;
    }
    Ok(())
}

/// A function lease: at least a core, a library.
fn function_lease(r: &v1::AcquireLeaseRequest) -> Result<(), BookError> {
    if r.cores == 0 {
        return Err(bad(
            "cores",
            "must be at least 1 (the executor needs a core)",
        ));
    }
    at_most("cores", r.cores, MAX_CORES)?;
    at_most("gpus", r.gpus, MAX_GPUS)?;
    at_most("memory_mib", r.memory_mib, MAX_MEMORY_MIB)?;
    match r.library.as_ref().and_then(|l| l.source.as_ref()) {
        None => return Err(bad("library", "missing: send its content or a path")),
        Some(v1::function_library::Source::Content(c)) if c.is_empty() => {
            return Err(bad("library.content", "is empty"));
        }
        Some(v1::function_library::Source::Content(_)) => {}
        Some(v1::function_library::Source::Path(p)) => {
            if !p.starts_with('/') {
                return Err(bad(
                    "library.path",
                    format_args!("{p:?} is not an absolute path"),
                ));
            }
            at_most("library.path (bytes)", p.len(), MAX_PATH_BYTES)?;
        }
    }
    Ok(())
}

fn executor_options(o: &v1::ExecutorOptions) -> Result<(), BookError> {
    if o.hot_window_us < -1 {
        return Err(bad(
            "executor.hot_window_us",
            format_args!("{} (-1 is always hot, 0 warm, else µs)", o.hot_window_us),
        ));
    }
    at_most("executor.hot_window_us", o.hot_window_us, MAX_HOT_WINDOW_US)?;
    at_most(
        "executor.max_output_bytes",
        o.max_output_bytes,
        MAX_OUTPUT_BYTES,
    )
}

pub fn lease_id(id: &str) -> Result<(), BookError> {
    name("lease_id", id, MAX_ID_BYTES)
}

pub fn drain(r: &v1::DrainNodeRequest) -> Result<(), BookError> {
    name("node", &r.node, MAX_NODE_BYTES)?;
    reason(&r.reason)
}

pub fn revoke(r: &v1::RevokeLeaseRequest) -> Result<(), BookError> {
    lease_id(&r.lease_id)?;
    reason(&r.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acq() -> v1::AcquireLeaseRequest {
        v1::AcquireLeaseRequest {
            cores: 1,
            library: Some(v1::FunctionLibrary {
                source: Some(v1::function_library::Source::Path("/opt/f.so".into())),
            }),
            ..Default::default()
        }
    }

    fn refused(r: Result<(), BookError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn a_memory_lease_has_a_region_and_nothing_of_a_function_lease() {
        let memory = |region_mib, cpu_millis| v1::AcquireLeaseRequest {
            memory: Some(v1::MemorySpec {
                region_mib,
                cpu_millis,
            }),
            ..Default::default()
        };
        acquire(&memory(1024, 0)).unwrap();
        acquire(&memory(1, 1000)).unwrap();
        let cases: Vec<(v1::AcquireLeaseRequest, &str)> = vec![
            (memory(0, 0), "a region of at least 1 MiB"),
            (memory(1, 5), "cpu_millis 5 is outside 10..=1000"),
            (
                memory(u64::MAX, 0),
                "memory.region_mib: 18446744073709551615 is more",
            ),
            (
                v1::AcquireLeaseRequest {
                    cores: 1,
                    ..memory(1, 0)
                },
                "cores: must be 0 for a memory lease",
            ),
            (
                v1::AcquireLeaseRequest {
                    gpus: 1,
                    ..memory(1, 0)
                },
                "gpus: must be 0",
            ),
            (
                v1::AcquireLeaseRequest {
                    library: acq().library,
                    ..memory(1, 0)
                },
                "library: must be absent",
            ),
            (
                v1::AcquireLeaseRequest {
                    executor: Some(v1::ExecutorOptions {
                        hot_window_us: -2,
                        ..Default::default()
                    }),
                    ..memory(1, 0)
                },
                "executor.hot_window_us",
            ),
        ];
        for (r, want) in cases {
            let got = refused(acquire(&r));
            assert!(got.contains(want), "{got:?} lacks {want:?}");
        }
    }

    #[test]
    fn each_bad_field_is_named_with_its_limit() {
        acquire(&acq()).unwrap();
        type Change = Box<dyn Fn(&mut v1::AcquireLeaseRequest)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|r| r.cores = 0), "cores: must be at least 1"),
            (
                Box::new(|r| r.avoid_nodes = vec!["n".into(); MAX_AVOID_NODES + 1]),
                "avoid_nodes (count): 65 is more than the limit 64",
            ),
            (
                Box::new(|r| r.avoid_nodes = vec!["x".repeat(MAX_NODE_BYTES + 1)]),
                "avoid_nodes",
            ),
            (
                Box::new(|r| r.cores = u32::MAX),
                "cores: 4294967295 is more than the limit 65536",
            ),
            (
                Box::new(|r| r.gpus = 5000),
                "gpus: 5000 is more than the limit 1024",
            ),
            (
                Box::new(|r| r.memory_mib = u64::MAX),
                "memory_mib: 18446744073709551615",
            ),
            (Box::new(|r| r.library = None), "library: missing"),
            (
                Box::new(|r| {
                    r.library = Some(v1::FunctionLibrary {
                        source: Some(v1::function_library::Source::Path("lib.so".into())),
                    })
                }),
                "library.path: \"lib.so\" is not an absolute path",
            ),
            (
                Box::new(|r| {
                    r.library = Some(v1::FunctionLibrary {
                        source: Some(v1::function_library::Source::Content(vec![])),
                    })
                }),
                "library.content: is empty",
            ),
            (
                Box::new(|r| {
                    r.executor = Some(v1::ExecutorOptions {
                        hot_window_us: -7,
                        ..Default::default()
                    })
                }),
                "executor.hot_window_us: -7",
            ),
            (
                Box::new(|r| {
                    r.executor = Some(v1::ExecutorOptions {
                        max_output_bytes: 1 << 40,
                        ..Default::default()
                    })
                }),
                "executor.max_output_bytes: 1099511627776 is more than the limit 1073741824",
            ),
        ];
        for (change, want) in cases {
            let mut r = acq();
            change(&mut r);
            let e = refused(acquire(&r));
            assert!(e.contains(want), "{e} lacks {want:?}");
        }
    }

    #[test]
    fn ids_nodes_and_reasons_are_bounded_plain_names() {
        lease_id("c1-7-00ff").unwrap();
        assert!(refused(lease_id("")).contains("lease_id: is empty"));
        assert!(refused(lease_id("../x")).contains("'/' is not a letter"));
        assert!(refused(lease_id(&"a".repeat(129))).contains("129 bytes, more than 128"));
        let e = refused(drain(&v1::DrainNodeRequest {
            node: "n1\n".into(),
            ..Default::default()
        }));
        assert!(e.contains("node: '\\n'"), "{e}");
        let e = refused(revoke(&v1::RevokeLeaseRequest {
            lease_id: "a".into(),
            reason: "x".repeat(300),
            ..Default::default()
        }));
        assert!(
            e.contains("reason (bytes): 300 is more than the limit 256"),
            "{e}"
        );
    }
}
