//! harvest's Python client: the `harvest._native` extension module that `python/harvest/`
//! wraps (`harvest.Lease`, docs/python.md).
//!
//! - [`session`]: the lease, its connection pool and failover, in plain Rust over
//!   `harvest-client` (what the CLI uses), so Python sees the same behaviour and error categories.
//! - this file: the thin PyO3 shell. Every call that waits on the network releases the GIL
//!   (`Python::detach`), so other Python threads run while invocations are in flight.
//!
//! Errors cross as `harvest.errors` exceptions chosen by the CLI's exit code
//! (`harvest_client::cli::exit`), raised by `harvest.errors.from_code`.

// PyO3's macros expand to `unsafe` FFI glue, so this crate (the FFI boundary, as the SPANK
// plugin is) cannot take the workspace's `unsafe_code = "forbid"`; its own code has no `unsafe`.

pub mod session;

use std::time::Duration;

use harvest_client::{LeaseExt, LeaseRequest, Library, Polling};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use session::{Failure, Options, Session};

/// The `harvest.errors` exception for `f`, raised.
fn raise(py: Python<'_>, f: Failure) -> PyErr {
    match error_object(py, &f) {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}

/// The `harvest.errors` exception object for `f` (not raised).
fn error_object<'py>(py: Python<'py>, f: &Failure) -> PyResult<Bound<'py, PyAny>> {
    py.import("harvest.errors")?
        .getattr("from_code")?
        .call1((f.code, f.message.as_str()))
}

fn seconds(v: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(PyValueError::new_err(format!(
            "{what} must be a positive number of seconds, not {s}"
        ))),
    }
}

/// A held lease: what `harvest.Lease` wraps.
#[pyclass(name = "Session", module = "harvest._native", frozen)]
struct PySession {
    inner: Session,
}

#[pymethods]
impl PySession {
    /// Connects to the scheduler and acquires the lease; sizes in MiB, durations in seconds.
    #[new]
    #[pyo3(signature = (
        *, lib_path=None, lib_bytes=None, lib_on_node=None, cores=1, mem_mib=0, gpus=0,
        lifetime_s=None, idle_timeout_s=None, default_timeout_s=None, scheduler=None,
        failover=true, failover_deadline_s=30.0, connections=0, pipeline_depth=8, spin=false,
        hot=None, region_mib=0, cpu_millis=0, avoid_nodes=Vec::new()
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        lib_path: Option<std::path::PathBuf>,
        lib_bytes: Option<Vec<u8>>,
        lib_on_node: Option<String>,
        cores: u32,
        mem_mib: u64,
        gpus: u32,
        lifetime_s: Option<f64>,
        idle_timeout_s: Option<f64>,
        default_timeout_s: Option<f64>,
        scheduler: Option<String>,
        failover: bool,
        failover_deadline_s: f64,
        connections: usize,
        pipeline_depth: usize,
        spin: bool,
        hot: Option<String>,
        region_mib: u64,
        cpu_millis: u32,
        avoid_nodes: Vec<String>,
    ) -> PyResult<Self> {
        let memory = match region_mib {
            0 => None,
            mib => Some(
                harvest_core::region::MemorySpec::new(mib, cpu_millis)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            ),
        };
        let library = match (lib_path, lib_bytes, lib_on_node) {
            (None, None, None) if memory.is_some() => Library::Content(Vec::new()),
            (Some(p), None, None) => Library::read(&p).map_err(|e| raise(py, e.into()))?,
            (None, Some(b), None) => Library::Content(b),
            (None, None, Some(p)) => Library::Path(p),
            _ => {
                return Err(PyValueError::new_err(
                    "give exactly one function library: lib= (a path or the .so's bytes) or lib_on_node= (a path the node reads)",
                ));
            }
        };
        if cores == 0 && memory.is_none() {
            return Err(PyValueError::new_err("cores must be at least 1"));
        }
        let mut request = match memory {
            Some(spec) => LeaseRequest::memory(spec),
            None => LeaseRequest::new(cores, library),
        };
        request.memory_mib = mem_mib;
        request.avoid_nodes = avoid_nodes;
        request.gpus = gpus;
        request.lifetime = seconds(lifetime_s, "lifetime")?;
        request.idle_timeout = seconds(idle_timeout_s, "idle_timeout")?;
        request.default_timeout = seconds(default_timeout_s, "timeout")?;
        request.hot_window = hot
            .map(|h| {
                harvest_core::HotWindow::parse(&h)
                    .map_err(|e| PyValueError::new_err(format!("hot: {e}")))
            })
            .transpose()?;
        let failover_deadline =
            seconds(Some(failover_deadline_s), "failover_deadline")?.expect("a number was given");
        let options = Options {
            request,
            scheduler,
            failover,
            failover_deadline,
            connections,
            pipeline_depth,
            polling: if spin { Polling::Spin } else { Polling::Block },
        };
        let inner = py
            .detach(|| Session::open(options))
            .map_err(|e| raise(py, e))?;
        Ok(Self { inner })
    }

    /// Invokes `function` on `data`; returns its output. The GIL is released meanwhile.
    #[pyo3(signature = (function, data, timeout_s=None))]
    fn invoke<'py>(
        &self,
        py: Python<'py>,
        function: &str,
        data: &[u8],
        timeout_s: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let timeout = seconds(timeout_s, "timeout")?;
        let out = py
            .detach(|| self.inner.invoke(function, data, timeout))
            .map_err(|e| raise(py, e))?;
        Ok(PyBytes::new(py, &out))
    }

    /// Invokes `function` on each of `inputs` (bytes objects), pipelined over the lease's
    /// connections with the GIL released; returns a list with, in each input's place, its
    /// output (bytes) or its `harvest.errors` exception (not raised).
    #[pyo3(signature = (function, inputs, timeout_s=None))]
    fn invoke_many<'py>(
        &self,
        py: Python<'py>,
        function: &str,
        inputs: Vec<Bound<'py, PyBytes>>,
        timeout_s: Option<f64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let timeout = seconds(timeout_s, "timeout")?;
        // Borrowed, not copied: the bytes objects stay alive (and immutable) in `inputs`.
        let slices: Vec<&[u8]> = inputs.iter().map(|b| b.as_bytes()).collect();
        let results = py.detach(|| self.inner.invoke_many(function, &slices, timeout));
        let list = PyList::empty(py);
        for r in results {
            match r {
                Ok(out) => list.append(PyBytes::new(py, &out))?,
                Err(f) => list.append(error_object(py, &f)?)?,
            }
        }
        Ok(list)
    }

    /// The size in bytes of the lease's memory region. The GIL is released meanwhile.
    fn region_size(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.inner.region_size())
            .map_err(|e| raise(py, e))
    }

    /// `n` bytes at `offset` of the lease's memory region.
    fn read<'py>(&self, py: Python<'py>, offset: u64, n: u32) -> PyResult<Bound<'py, PyBytes>> {
        let out = py
            .detach(|| self.inner.read(offset, n))
            .map_err(|e| raise(py, e))?;
        Ok(PyBytes::new(py, &out))
    }

    /// Writes `data` at `offset` of the lease's memory region.
    fn write(&self, py: Python<'_>, offset: u64, data: &[u8]) -> PyResult<()> {
        py.detach(|| self.inner.write(offset, data))
            .map_err(|e| raise(py, e))
    }

    /// The bytes of each `(offset, n)` range, in one round trip.
    fn readv<'py>(&self, py: Python<'py>, ranges: Vec<(u64, u32)>) -> PyResult<Bound<'py, PyList>> {
        let parts = py
            .detach(|| self.inner.readv(&ranges))
            .map_err(|e| raise(py, e))?;
        let list = PyList::empty(py);
        for p in parts {
            list.append(PyBytes::new(py, &p))?;
        }
        Ok(list)
    }

    /// Writes each `(offset, data)` piece, in one round trip.
    fn writev<'py>(
        &self,
        py: Python<'py>,
        pieces: Vec<(u64, Bound<'py, PyBytes>)>,
    ) -> PyResult<()> {
        // Borrowed, not copied: the bytes objects stay alive (and immutable) in `pieces`.
        let borrowed: Vec<(u64, &[u8])> = pieces.iter().map(|(o, b)| (*o, b.as_bytes())).collect();
        py.detach(|| self.inner.writev(&borrowed))
            .map_err(|e| raise(py, e))
    }

    /// Releases the lease (its executor stops). Safe to repeat.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.release()).map_err(|e| raise(py, e))
    }

    /// The lease serving now, as a dict (`harvest lease acquire --json` without the secret).
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let lease = self.inner.lease();
        let d = PyDict::new(py);
        d.set_item("id", &lease.id)?;
        d.set_item("node", &lease.node)?;
        d.set_item("uid", lease.uid)?;
        d.set_item("user", &lease.user)?;
        d.set_item("cpus", lease.cpus.clone())?;
        d.set_item("memory_mib", lease.memory_mib)?;
        d.set_item("gpus", lease.gpus.clone())?;
        d.set_item("state", &lease.state)?;
        d.set_item(
            "executor_address",
            lease
                .executor_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        )?;
        d.set_item("expires_unix_ms", lease.expires_unix_ms)?;
        if let Some(m) = lease.memory {
            let md = PyDict::new(py);
            md.set_item("region_mib", m.region_mib)?;
            md.set_item("cpu_millis", m.cpu_millis)?;
            d.set_item("memory", md)?;
        }
        Ok(d)
    }

    /// The leases revoked under this one so far: dicts with lease, node, cause, reason.
    fn revocations<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for r in self.inner.revocations() {
            let d = PyDict::new(py);
            d.set_item("lease", r.lease)?;
            d.set_item("node", r.node)?;
            d.set_item("cause", r.cause)?;
            d.set_item("reason", r.reason)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// How many invocations run at once (connections to the executor).
    #[getter]
    fn connections(&self) -> usize {
        self.inner.max_connections()
    }
}

/// A size as the CLI takes it (`256M`, `4G`, a bare number of MiB) in MiB.
#[pyfunction]
fn parse_mem(text: &str) -> PyResult<u64> {
    session::parse_mem(text).map_err(PyValueError::new_err)
}

/// A duration as the CLI takes it (`500ms`, `30s`, `10m`) in seconds.
#[pyfunction]
fn parse_duration(text: &str) -> PyResult<f64> {
    session::parse_duration(text)
        .map(|d| d.as_secs_f64())
        .map_err(PyValueError::new_err)
}

/// The `harvest` CLI's exit codes by category (`harvest_client::cli::exit::code`), so that
/// `harvest.errors` can be checked against them.
#[pyfunction]
fn exit_codes(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    use harvest_client::cli::exit::code;
    let d = PyDict::new(py);
    for (name, value) in [
        ("local", code::LOCAL),
        ("usage", code::USAGE),
        ("unreachable", code::UNREACHABLE),
        ("auth", code::AUTH),
        ("no_resources", code::NO_RESOURCES),
        ("refused", code::REFUSED),
        ("executor", code::EXECUTOR),
        ("crashed", code::CRASHED),
        ("timeout", code::TIMEOUT),
        ("out_of_memory", code::OUT_OF_MEMORY),
        ("no_such_function", code::NO_SUCH_FUNCTION),
        ("output_too_large", code::OUTPUT_TOO_LARGE),
        ("revoked", code::REVOKED),
        ("remote", code::REMOTE_OTHER),
    ] {
        d.set_item(name, value)?;
    }
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySession>()?;
    m.add_function(wrap_pyfunction!(exit_codes, m)?)?;
    m.add_function(wrap_pyfunction!(parse_mem, m)?)?;
    m.add_function(wrap_pyfunction!(parse_duration, m)?)?;
    Ok(())
}
