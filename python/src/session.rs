//! A lease held for a Python program: the scheduler connection, the lease, a pool of executor
//! connections, and failover. Plain Rust (no Python types), so the binding in `lib.rs` stays a
//! thin shell and the logic is testable without an interpreter.
//!
//! Threads share one [`Session`]: each invocation checks a connection out of the pool (at most
//! `connections` open, one per leased core by default, as the executor serves one connection per
//! worker), uses it without any lock held, and checks it back in. When an invocation fails in a
//! way that may mean the lease is gone, the scheduler is asked ([`failover::explain`]); a revoked
//! lease is replaced by a new one for the same request (once, by whichever thread sees it first:
//! the lease's generation tells the others it already happened) and the invocation is retried
//! there, until the failover deadline, exactly as `harvest invoke` does.
//!
//! Memory operations ([`Session::read`], [`write`](Session::write), ...) use the same pool but
//! never fail over: a region's contents go with its lease, so a revocation is reported
//! (`LeaseRevoked`), never hidden behind a fresh, empty region elsewhere.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use harvest_client::SchedulerClient;
use harvest_client::cli::exit::CliError;
use harvest_client::failover::{self, Revocation};
use harvest_client::identity::Munge;
use harvest_client::locate::ClientConfig;
use harvest_client::{ExecutorConnection, InvokeError, Lease, LeaseExt, LeaseRequest, Polling};
use harvest_core::invoke::ErrorCode;

/// The executor's default invocation timeout (docs/executor.md): how long an answer may take when
/// the caller gives no timeout, before the grace below.
const EXECUTOR_DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed operation as the CLI would report it: its exit code (the category, docs/cli.md) and
/// its message. The binding raises the exception class of that category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Self {
        Self {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

macro_rules! failure_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                CliError::from(e).into()
            }
        }
    )*};
}
failure_from!(
    InvokeError,
    harvest_client::LeaseError,
    harvest_client::locate::LocateError
);

fn released(id: &str) -> Failure {
    Failure {
        code: harvest_client::cli::exit::code::LOCAL,
        message: format!("lease {id} was released: open a new harvest.Lease"),
    }
}

/// How a [`Session`] is set up.
#[derive(Debug, Clone)]
pub struct Options {
    pub request: LeaseRequest,
    /// The scheduler (`host:port`, or several comma-separated); `None`: `$HARVEST_SCHEDULER`, then
    /// the client configuration file, as for the CLI.
    pub scheduler: Option<String>,
    /// Retry on a new lease when the lease is revoked under an invocation.
    pub failover: bool,
    /// Stop retrying this long after the first revocation.
    pub failover_deadline: Duration,
    /// Connections to the executor (parallel invocations); 0: one per leased core.
    pub connections: usize,
    /// Invocations kept in flight on each connection by [`Session::invoke_many`].
    pub pipeline_depth: usize,
    pub polling: Polling,
}

/// The lease now serving, and what replaced which.
#[derive(Debug)]
struct Current {
    lease: Lease,
    /// Bumped each time failover replaces the lease; connections of older generations are dropped.
    generation: u64,
    revocations: Vec<Revocation>,
    first_revoked: Option<Instant>,
    /// Released by its owner: no more invocations.
    closed: bool,
}

#[derive(Debug)]
struct Pool {
    generation: u64,
    idle: Vec<ExecutorConnection>,
    /// Connections of this generation open now (idle or checked out).
    open: usize,
}

/// A lease and its connections, shared by the program's threads.
#[derive(Debug)]
pub struct Session {
    rt: tokio::runtime::Runtime,
    client: Mutex<SchedulerClient>,
    options: Options,
    max_connections: usize,
    current: Mutex<Current>,
    pool: Mutex<Pool>,
    returned: Condvar,
}

/// Where one input's result lands in [`Session::invoke_many`].
type Slot = Mutex<Option<Result<Vec<u8>, Failure>>>;

/// A connection checked out of the pool, with the generation it belongs to.
struct Checkout {
    conn: ExecutorConnection,
    generation: u64,
    lease: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock (a bug) must not wedge every later call.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// Connects to the scheduler (found as the CLI finds it) and acquires the lease.
    pub fn open(options: Options) -> Result<Self, Failure> {
        let env = |k: &str| std::env::var(k).ok();
        let config = ClientConfig::find(None, &env)?;
        let url = config.scheduler(options.scheduler.as_deref(), &env)?;
        let munge = Munge {
            program: config
                .munge
                .clone()
                .unwrap_or_else(|| Munge::default().program),
            socket: config.munge_socket.clone(),
            scheduler_uid: config.scheduler_uid(&env)?,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("harvest-client")
            .enable_all()
            .build()
            .map_err(|source| CliError::Io {
                what: "cannot start the client's async runtime".into(),
                source,
            })?;
        let mut client = match config.ca(&env) {
            Some(ca) => rt.block_on(SchedulerClient::connect_tls(&url, Arc::new(munge), &ca))?,
            None => rt.block_on(SchedulerClient::connect(&url, Arc::new(munge)))?,
        };
        let lease = rt.block_on(client.acquire(&options.request))?;
        let max_connections = if options.connections == 0 {
            (lease.cpus.len().max(options.request.cores as usize)).max(1)
        } else {
            options.connections
        };
        Ok(Self {
            rt,
            client: Mutex::new(client),
            max_connections,
            current: Mutex::new(Current {
                lease,
                generation: 0,
                revocations: Vec::new(),
                first_revoked: None,
                closed: false,
            }),
            pool: Mutex::new(Pool {
                generation: 0,
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            options,
        })
    }

    /// The lease serving now (after a failover, the new one).
    pub fn lease(&self) -> Lease {
        lock(&self.current).lease.clone()
    }

    /// The leases revoked under this session so far, oldest first.
    pub fn revocations(&self) -> Vec<Revocation> {
        lock(&self.current).revocations.clone()
    }

    /// How many invocations may run at once (the pool's size).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Releases the lease; later invocations fail. Safe to repeat.
    pub fn release(&self) -> Result<(), Failure> {
        let id = {
            let mut cur = lock(&self.current);
            if cur.closed {
                return Ok(());
            }
            cur.closed = true;
            cur.lease.id.clone()
        };
        {
            let mut pool = lock(&self.pool);
            pool.idle.clear();
            pool.generation = u64::MAX;
            pool.open = 0;
        }
        self.returned.notify_all();
        let mut client = lock(&self.client).clone();
        self.rt.block_on(client.release(&id))?;
        Ok(())
    }

    /// Invokes `function` on `input` and waits for its output; fails over on revocation.
    pub fn invoke(
        &self,
        function: &str,
        input: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, Failure> {
        loop {
            let mut c = self.checkout(true)?;
            match c.conn.invoke(function, input, timeout) {
                Ok(out) => {
                    self.checkin(c);
                    return Ok(out);
                }
                Err(e) => {
                    // The executor closes a connection after a crash, timeout or OOM kill; any
                    // other failure leaves it in doubt: never reuse it.
                    self.discard(c.generation);
                    self.after_failure(e, c.generation, &c.lease)?;
                }
            }
        }
    }

    /// Invokes `function` on every input, pipelined over the pool's connections (up to
    /// `pipeline_depth` in flight on each); each result in its input's place. A revocation is
    /// handled as [`invoke`](Self::invoke) does, for every invocation it left unanswered.
    pub fn invoke_many(
        &self,
        function: &str,
        inputs: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Vec<Result<Vec<u8>, Failure>> {
        let results: Vec<Slot> = inputs.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let workers = self.max_connections.min(inputs.len()).max(1);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| self.pipeline(function, inputs, timeout, &next, &results));
            }
        });
        results
            .into_iter()
            .map(|r| {
                r.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(|| {
                        Err(CliError::Invoke(InvokeError::Request(
                            "an invocation got no result (a bug in the client)".into(),
                        ))
                        .into())
                    })
            })
            .collect()
    }

    /// One worker of [`invoke_many`](Self::invoke_many): takes inputs by index, keeps up to
    /// `pipeline_depth` in flight on its connection.
    fn pipeline(
        &self,
        function: &str,
        inputs: &[&[u8]],
        timeout: Option<Duration>,
        next: &AtomicUsize,
        results: &[Slot],
    ) {
        let depth = self.options.pipeline_depth.max(1);
        let set = |i: usize, r: Result<Vec<u8>, Failure>| *lock(&results[i]) = Some(r);
        // A wait covers every answer queued before it on the connection.
        let max_wait = (timeout.unwrap_or(EXECUTOR_DEFAULT_TIMEOUT) + Duration::from_secs(5))
            * u32::try_from(depth).unwrap_or(u32::MAX);
        let mut out = Vec::new();
        'connections: loop {
            let mut c = match self.checkout(true) {
                Ok(c) => c,
                Err(e) => {
                    // No connection (the lease is closed, or no new one could be had): every
                    // input this worker takes gets that error, in its own words.
                    set_rest(next, inputs.len(), |i| set(i, Err(e.clone())));
                    return;
                }
            };
            let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
            loop {
                while in_flight.len() < depth {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= inputs.len() {
                        break;
                    }
                    match c.conn.submit(function, inputs[i], timeout) {
                        Ok(id) => in_flight.push_back((id, i)),
                        Err(e) => {
                            // Not sent: invoke it alone (with failover), then the rest on a
                            // fresh connection.
                            self.discard(c.generation);
                            let retry = self.after_failure(e, c.generation, &c.lease);
                            set(
                                i,
                                retry.and_then(|()| self.invoke(function, inputs[i], timeout)),
                            );
                            self.resend(function, inputs, timeout, in_flight, &set);
                            continue 'connections;
                        }
                    }
                }
                let Some(&(id, i)) = in_flight.front() else {
                    self.checkin(c);
                    return;
                };
                match c.conn.wait_into(&mut out, Some(max_wait)) {
                    Ok(got) if got == id => {
                        in_flight.pop_front();
                        set(i, Ok(std::mem::take(&mut out)));
                    }
                    Ok(got) => {
                        in_flight.pop_front();
                        set(
                            i,
                            Err(CliError::Invoke(InvokeError::Request(format!(
                                "answer for invocation {got} while waiting for {id}"
                            )))
                            .into()),
                        );
                        self.discard(c.generation);
                        self.resend(function, inputs, timeout, in_flight, &set);
                        continue 'connections;
                    }
                    Err(e) => {
                        in_flight.pop_front();
                        self.discard(c.generation);
                        let own = matches!(&e, InvokeError::Remote { id: got, .. } if *got == id)
                            && !failover::may_be_revoked(&e);
                        if own {
                            // The function's own failure (crash, timeout, OOM, ...): its result.
                            set(i, Err(e.into()));
                        } else {
                            let retry = self.after_failure(e, c.generation, &c.lease);
                            set(
                                i,
                                retry.and_then(|()| self.invoke(function, inputs[i], timeout)),
                            );
                        }
                        self.resend(function, inputs, timeout, in_flight, &set);
                        continue 'connections;
                    }
                }
            }
        }
    }

    /// Invocations a broken connection left unanswered, each sent again on its own (they had not
    /// run: a worker answers in order and its connection closed before their turn).
    fn resend(
        &self,
        function: &str,
        inputs: &[&[u8]],
        timeout: Option<Duration>,
        in_flight: VecDeque<(u64, usize)>,
        set: &impl Fn(usize, Result<Vec<u8>, Failure>),
    ) {
        for (_, i) in in_flight {
            set(i, self.invoke(function, inputs[i], timeout));
        }
    }

    /// The size in bytes of the lease's memory region.
    pub fn region_size(&self) -> Result<u64, Failure> {
        self.on_region(|c| c.region_size())
    }

    /// `len` bytes at `offset` of the lease's memory region.
    pub fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, Failure> {
        self.on_region(|c| c.read(offset, len))
    }

    /// Writes `data` at `offset` of the lease's memory region.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Failure> {
        self.on_region(|c| c.write(offset, data))
    }

    /// Several ranges `(offset, len)` of the region in one round trip, each range's bytes.
    pub fn readv(&self, ranges: &[(u64, u32)]) -> Result<Vec<Vec<u8>>, Failure> {
        self.on_region(|c| c.readv(ranges))
    }

    /// Writes several `(offset, data)` pieces in one round trip.
    pub fn writev(&self, pieces: &[(u64, &[u8])]) -> Result<(), Failure> {
        self.on_region(|c| c.writev(pieces))
    }

    /// Runs a memory operation on a pooled connection, without failover (see the module's
    /// header).
    fn on_region<T>(
        &self,
        op: impl FnOnce(&mut ExecutorConnection) -> Result<T, InvokeError>,
    ) -> Result<T, Failure> {
        let mut c = self.checkout(false)?;
        match op(&mut c.conn) {
            Ok(v) => {
                self.checkin(c);
                Ok(v)
            }
            // A refused request (a range outside the region, say) leaves the connection in
            // step: keep it. Anything else (an OOM-killed worker closes its connection) leaves it
            // gone or in doubt.
            Err(
                e @ InvokeError::Remote {
                    code: ErrorCode::BadRequest | ErrorCode::NoSuchFunction,
                    ..
                },
            ) => {
                self.checkin(c);
                Err(e.into())
            }
            Err(e) => {
                self.discard(c.generation);
                Err(self.region_failure(e, c.generation, &c.lease))
            }
        }
    }

    /// What a memory operation that failed with `err` on lease `lease_id` reports: a revoked
    /// lease as `LeaseRevoked` (recorded in [`revocations`](Self::revocations)), never retried.
    fn region_failure(&self, err: InvokeError, generation: u64, lease_id: &str) -> Failure {
        if !failover::may_be_revoked(&err) {
            return err.into();
        }
        let mut client = lock(&self.client).clone();
        let why = self.rt.block_on(failover::explain(
            &mut client,
            lease_id,
            failover::EXPLAIN_WAIT,
        ));
        let revocation = match why {
            Ok(Some(r)) => r,
            Ok(None) => return err.into(),
            Err(e) => return e.into(),
        };
        let mut cur = lock(&self.current);
        if cur.generation == generation && !cur.revocations.iter().any(|r| r.lease == lease_id) {
            cur.first_revoked.get_or_insert_with(Instant::now);
            cur.revocations.push(revocation.clone());
        }
        CliError::Revoked {
            revocation,
            failover: Some(
                "a memory region is never failed over: its contents were lost with the lease"
                    .to_owned(),
            ),
        }
        .into()
    }

    /// A connection of the current lease: an idle one, a new one while fewer than
    /// `max_connections` are open, else waits for one to come back. When the executor cannot
    /// be reached and `failover` is on, a revoked lease is replaced first; with it off, the
    /// revocation is the error.
    fn checkout(&self, failover: bool) -> Result<Checkout, Failure> {
        let (lease, generation) = {
            let cur = lock(&self.current);
            if cur.closed {
                return Err(released(&cur.lease.id));
            }
            (cur.lease.clone(), cur.generation)
        };
        let mut pool = lock(&self.pool);
        loop {
            if pool.generation != generation {
                if pool.generation == u64::MAX {
                    return Err(released(&lease.id));
                }
                // A newer lease than ours replaced the pool: start over with it.
                if pool.generation > generation {
                    drop(pool);
                    return self.checkout(failover);
                }
                pool.generation = generation;
                pool.idle.clear();
                pool.open = 0;
            }
            if let Some(conn) = pool.idle.pop() {
                return Ok(Checkout {
                    conn,
                    generation,
                    lease: lease.id.clone(),
                });
            }
            if pool.open < self.max_connections {
                pool.open += 1;
                drop(pool);
                return match lease.connect(self.options.polling) {
                    Ok(conn) => Ok(Checkout {
                        conn,
                        generation,
                        lease: lease.id.clone(),
                    }),
                    Err(e) => {
                        self.discard(generation);
                        if !failover {
                            return Err(self.region_failure(e, generation, &lease.id));
                        }
                        // A lease whose executor cannot be reached may have been revoked.
                        self.after_failure(e, generation, &lease.id)?;
                        self.checkout(true)
                    }
                };
            }
            pool = self.returned.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn checkin(&self, c: Checkout) {
        let mut pool = lock(&self.pool);
        if pool.generation == c.generation {
            pool.idle.push(c.conn);
        }
        drop(pool);
        self.returned.notify_one();
    }

    /// A checked-out connection of `generation` is gone.
    fn discard(&self, generation: u64) {
        let mut pool = lock(&self.pool);
        if pool.generation == generation {
            pool.open = pool.open.saturating_sub(1);
        }
        drop(pool);
        self.returned.notify_one();
    }

    /// After `err` on lease `lease_id` (generation `generation`): `Ok` when the caller should try
    /// again (the lease was revoked and replaced, by this thread or another), else the error to
    /// report.
    fn after_failure(
        &self,
        err: InvokeError,
        generation: u64,
        lease_id: &str,
    ) -> Result<(), Failure> {
        if !failover::may_be_revoked(&err) {
            return Err(err.into());
        }
        if lock(&self.current).generation != generation {
            // Another thread already replaced the lease.
            return Ok(());
        }
        let mut client = lock(&self.client).clone();
        let why = self.rt.block_on(failover::explain(
            &mut client,
            lease_id,
            failover::EXPLAIN_WAIT,
        ))?;
        let Some(revocation) = why else {
            return Err(err.into());
        };
        let mut cur = lock(&self.current);
        if cur.generation != generation {
            return Ok(());
        }
        if cur.closed {
            return Err(err.into());
        }
        let started = *cur.first_revoked.get_or_insert_with(Instant::now);
        cur.revocations.push(revocation.clone());
        if !self.options.failover {
            return Err(CliError::Revoked {
                revocation,
                failover: None,
            }
            .into());
        }
        if started.elapsed() >= self.options.failover_deadline {
            return Err(CliError::Revoked {
                revocation,
                failover: Some(format!(
                    "failover gave up after {:?} without a lease that lasted",
                    self.options.failover_deadline
                )),
            }
            .into());
        }
        // Acquire the replacement while holding `current`: the other threads that saw the
        // revocation wait here and then find the new generation.
        let acquired = self.rt.block_on(client.acquire(&self.options.request));
        match acquired {
            Ok(lease) => {
                cur.lease = lease;
                cur.generation += 1;
                drop(cur);
                *lock(&self.client) = client;
                Ok(())
            }
            Err(e) => Err(CliError::Revoked {
                revocation,
                failover: Some(format!("failover found no new lease: {e}")),
            }
            .into()),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A lease nobody closed is released rather than left to its idle timeout.
        let _ = self.release();
    }
}

/// Gives every index from `next` up to `len` to `f`.
fn set_rest(next: &AtomicUsize, len: usize, mut f: impl FnMut(usize)) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= len {
            return;
        }
        f(i);
    }
}

/// Parses a size as the CLI does (`256M`, `4G`; a bare number is MiB).
pub fn parse_mem(text: &str) -> Result<u64, String> {
    harvest_core::parse_memory_mib(text).map_err(|e| e.to_string())
}

/// Parses a duration as the CLI does (`500ms`, `30s`, `10m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    harvest_core::parse_duration(text).map_err(|e| e.to_string())
}
