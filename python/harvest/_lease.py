"""harvest.Lease: a lease on idle cores of the cluster, and invocations of its functions."""

from __future__ import annotations

import collections
import os
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Deque, Iterable, Iterator, Optional, Tuple, Union

from . import _native
from .errors import HarvestError, LeaseRevoked, LocalError

Size = Union[int, str]
Seconds = Union[int, float, str]
Data = Union[bytes, bytearray, memoryview]

#: Invocations kept in flight on each connection by submit() and map().
PIPELINE_DEPTH = 8


def _mib(mem: Optional[Size]) -> int:
    if mem is None:
        return 0
    if isinstance(mem, bool) or not isinstance(mem, (int, str)):
        raise TypeError(f"mem must be MiB (int) or a size such as '256M', not {mem!r}")
    if isinstance(mem, int):
        if mem <= 0:
            raise ValueError(f"mem must be a positive number of MiB, not {mem}")
        return mem
    return _native.parse_mem(mem)


def _seconds(value: Optional[Seconds], what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{what} must be seconds (a number) or a duration such as '10m', not {value!r}")
    if isinstance(value, str):
        return _native.parse_duration(value)
    if not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {value}")
    return float(value)


def _hot(value: Union[str, float, None]) -> Optional[str]:
    """``hot=``: ``"always"``, ``"warm"``, a duration (``"250us"``) or seconds, as the executor's
    ``--hot`` reads it (its words and durations are checked there)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"hot must be 'always', 'warm', a duration such as '250us' or seconds, not {value!r}")
    if not 0 <= value < 1e9:
        raise ValueError(f"hot must be 0 (warm) or more seconds, not {value}")
    return f"{round(value * 1e6)}us"


def _bytes(data: Data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes, bytearray or memoryview, not {type(data).__name__}")


def _offset(offset: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"an offset is an int, not {type(offset).__name__}")
    if not 0 <= offset < 1 << 64:
        raise ValueError(f"an offset is 0 or more (and below 2**64), not {offset}")
    return offset


def _length(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"a length is an int, not {type(n).__name__}")
    if not 0 <= n < 1 << 32:
        raise ValueError(f"a length is 0 to 2**32 - 1 bytes, not {n}")
    return n


class Lease:
    """Cores and memory on one node of the cluster, with the functions of ``lib`` ready to run.

    ``Lease(lib="./libf.so", cores=2, mem="256M", lifetime="10m")`` acquires the lease (sizes and
    durations as the ``harvest`` CLI takes them, or numbers: MiB and seconds); use it as a
    context manager, or call :meth:`close`. The scheduler is found as the CLI finds it
    (``scheduler=``, ``$HARVEST_SCHEDULER``, the client configuration file), and you are who munge
    says you are.

    When a batch job takes the lease back (or its node goes down) under an invocation, the
    invocation is retried on a new lease elsewhere until ``failover_deadline`` (unless
    ``failover=False``), as ``harvest invoke`` does; :attr:`revocations` lists what happened.
    Failures raise :class:`harvest.HarvestError` subclasses named after the CLI's exit-code
    categories. Invocations release the GIL.

    ``hot="always"`` asks for rFaaS's hot invocations: the executor's workers busy-poll for the
    next request (the leased cores burnt while the lease waits); pair it with ``spin=True``, which
    busy-polls here for the answers. A window (``hot="250us"``) stays hot through bursts and
    sleeps between them. The default is warm: both sides sleep, and a call costs a wake-up.
    """

    def __init__(
        self,
        lib: Union[str, os.PathLike, bytes, None] = None,
        cores: int = 1,
        mem: Optional[Size] = None,
        lifetime: Optional[Seconds] = None,
        *,
        gpus: int = 0,
        lib_on_node: Optional[str] = None,
        idle_timeout: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
        scheduler: Optional[str] = None,
        failover: bool = True,
        failover_deadline: Seconds = 30,
        connections: Optional[int] = None,
        max_in_flight: Optional[int] = None,
        spin: bool = False,
        hot: Union[str, float, None] = None,
    ) -> None:
        lib_path = lib_bytes = None
        if isinstance(lib, (bytes, bytearray)):
            lib_bytes = bytes(lib)
        elif lib is not None:
            lib_path = os.fspath(lib)
        if connections is not None and connections < 1:
            raise ValueError(f"connections must be at least 1, not {connections}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        deadline = _seconds(failover_deadline, "failover_deadline")
        assert deadline is not None
        self._adopt(
            _native.Session(
                lib_path=lib_path,
                lib_bytes=lib_bytes,
                lib_on_node=lib_on_node,
                cores=cores,
                mem_mib=_mib(mem),
                gpus=gpus,
                lifetime_s=_seconds(lifetime, "lifetime"),
                idle_timeout_s=_seconds(idle_timeout, "idle_timeout"),
                default_timeout_s=_seconds(timeout, "timeout"),
                scheduler=scheduler,
                failover=failover,
                failover_deadline_s=deadline,
                connections=connections or 0,
                pipeline_depth=PIPELINE_DEPTH,
                spin=spin,
                hot=_hot(hot),
            ),
            max_in_flight,
        )

    def _adopt(self, session: Any, max_in_flight: Optional[int]) -> None:
        """Takes over an open session (its lease acquired)."""
        self._session = session
        #: Most invocations submit() and map() keep in flight; submit() blocks beyond.
        self.max_in_flight: int = max_in_flight or self._session.connections * PIPELINE_DEPTH
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self._queue: Deque[Tuple[str, bytes, Optional[float], Future]] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._closed = False
        self._dispatcher: Optional[threading.Thread] = None
        # A lease left open (no `with`, no close()) is still released when it is garbage or the
        # program exits, rather than held until its idle timeout. The finalizer holds the
        # session, not the Lease, and runs at most once.
        self._release = weakref.finalize(self, self._session.release)

    # -- what the lease is ------------------------------------------------------------------
    @property
    def id(self) -> str:
        """The lease's id (after a failover, the new lease's)."""
        return self.info()["id"]

    @property
    def node(self) -> str:
        """The node the lease is on now."""
        return self.info()["node"]

    def info(self) -> dict[str, Any]:
        """The lease now serving: id, node, uid, user, cpus, memory_mib, gpus, state, ..."""
        return self._session.info()

    @property
    def revocations(self) -> list[dict[str, str]]:
        """Leases revoked under this one (lease, node, cause, reason), oldest first."""
        return self._session.revocations()

    @property
    def connections(self) -> int:
        """Invocations that run at once (connections to the executor; one per core by default)."""
        return self._session.connections

    # -- invoking ---------------------------------------------------------------------------
    def invoke(self, fn: str, data: Data = b"", timeout: Optional[Seconds] = None) -> bytes:
        """Runs ``fn`` on ``data`` and returns its output; raises a HarvestError on failure."""
        self._check_open()
        return self._session.invoke(fn, _bytes(data), _seconds(timeout, "timeout"))

    def submit(self, fn: str, data: Data = b"", timeout: Optional[Seconds] = None) -> "Future[bytes]":
        """Starts ``fn`` on ``data``; returns a Future of its output. Blocks while
        ``max_in_flight`` invocations are outstanding."""
        self._check_open()
        payload = _bytes(data)
        t = _seconds(timeout, "timeout")
        self._slots.acquire()
        fut: "Future[bytes]" = Future()
        with self._cv:
            if self._closing:
                self._slots.release()
                raise LocalError("the lease is closing: submit before close()")
            self._queue.append((fn, payload, t, fut))
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="harvest-dispatch", daemon=True
                )
                self._dispatcher.start()
            self._cv.notify()
        return fut

    def map(
        self, fn: str, inputs: Iterable[Data], timeout: Optional[Seconds] = None
    ) -> Iterator[bytes]:
        """Runs ``fn`` on each input, at most ``max_in_flight`` at a time, pipelined over the
        lease's connections; yields the outputs in input order. An input's failure raises its
        HarvestError when its turn comes."""
        self._check_open()
        t = _seconds(timeout, "timeout")
        it = iter(inputs)

        def generate() -> Iterator[bytes]:
            while True:
                chunk = [_bytes(d) for _, d in zip(range(self.max_in_flight), it)]
                if not chunk:
                    return
                for r in self._session.invoke_many(fn, chunk, t):
                    if isinstance(r, BaseException):
                        raise r
                    yield r

        return generate()

    # -- a memory region ---------------------------------------------------------------------
    # A memory lease's executor serves a region that its owner reads and writes by offset (the
    # harvest.mem.* operations, docs/executor.md). On a lease without one these raise
    # NoSuchFunction. They never fail over: a revoked lease's region is gone, which raises
    # LeaseRevoked. Each call is one round trip with the GIL released; calls from several
    # threads run at once on the lease's connections, with no ordering between them.
    def region_size(self) -> int:
        """The size in bytes of the lease's memory region."""
        self._check_open()
        return self._session.region_size()

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` of the lease's memory region (at most the executor's
        output limit, 4 MiB and 64 bytes by default, per call)."""
        self._check_open()
        return self._session.read(_offset(offset), _length(n))

    def write(self, offset: int, data: Data) -> None:
        """Writes ``data`` at ``offset`` of the lease's memory region."""
        self._check_open()
        self._session.write(_offset(offset), _bytes(data))

    def readv(self, ranges: Iterable[Tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, n)`` range, in one round trip (at most 1024 ranges)."""
        self._check_open()
        return self._session.readv([(_offset(o), _length(n)) for o, n in ranges])

    def writev(self, pieces: Iterable[Tuple[int, Data]]) -> None:
        """Writes each ``(offset, data)`` piece, in one round trip (at most 1024 pieces)."""
        self._check_open()
        self._session.writev([(_offset(o), _bytes(d)) for o, d in pieces])

    def _dispatch(self) -> None:
        """Sends what submit() queued, in batches, and completes the futures."""
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
            # One invoke_many per run of the same function and timeout, in submission order.
            i = 0
            while i < len(batch):
                fn, _, t, _ = batch[i]
                j = i
                while j < len(batch) and batch[j][0] == fn and batch[j][2] == t:
                    j += 1
                group = [b for b in batch[i:j] if b[3].set_running_or_notify_cancel()]
                for _ in range((j - i) - len(group)):
                    self._slots.release()
                i = j
                if not group:
                    continue
                try:
                    results = self._session.invoke_many(fn, [g[1] for g in group], t)
                except BaseException as e:  # noqa: BLE001 - handed to every waiting future
                    results = [e] * len(group)
                for (_, _, _, fut), r in zip(group, results):
                    if isinstance(r, BaseException):
                        fut.set_exception(r)
                    else:
                        fut.set_result(r)
                    self._slots.release()

    # -- ending -----------------------------------------------------------------------------
    def close(self) -> None:
        """Waits for submitted invocations, then releases the lease. Safe to repeat."""
        with self._cv:
            if self._closed:
                return
            self._closing = True
            self._cv.notify_all()
            dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.join()
        self._closed = True
        self._release()

    def _check_open(self) -> None:
        if self._closing:
            raise LocalError("the lease was closed: open a new harvest.Lease")

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        try:
            i = self.info()
            return f"<harvest.Lease {i['id']} on {i['node']} cpus={i['cpus']} {i['state']}>"
        except HarvestError:
            return "<harvest.Lease>"


class MemoryLease(Lease):
    """A region of a node's idle memory, lent to you: read and write it by offset.

    ``MemoryLease(size="1G", lifetime="10m")`` acquires a memory lease (its size as the CLI takes
    it, or MiB): a node whose batch jobs leave that much memory free lends it, and the lease's
    executor serves :meth:`read`, :meth:`write`, :meth:`readv` and :meth:`writev` over the same
    authenticated transport as invocations. It holds no core: the executor shares the node's
    CPUs at the lowest weight, capped at ``cpu_millis`` thousandths of one CPU (default 100).

    A batch job that needs the memory revokes the lease before its tasks start, and the region's
    contents are lost: a memory lease is never failed over to a fresh region
    (:class:`harvest.LeaseRevoked`). With ``replica=True`` a second memory lease of the same size
    is taken on another node (your choice and your cost: twice the memory, every write sent
    twice); writes go to both, reads to the primary, and when one of the two is revoked the
    other serves on alone: :attr:`replica_events` says which lease was lost, on which node, why,
    and which one serves now. ``connections`` (default 1) is how many calls from different
    threads run at once.
    """

    def __init__(
        self,
        size: Size,
        lifetime: Optional[Seconds] = None,
        *,
        replica: bool = False,
        cpu_millis: Optional[int] = None,
        idle_timeout: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
        scheduler: Optional[str] = None,
        connections: Optional[int] = None,
    ) -> None:
        if connections is not None and connections < 1:
            raise ValueError(f"connections must be at least 1, not {connections}")
        if cpu_millis is not None and (isinstance(cpu_millis, bool) or not 10 <= cpu_millis <= 1000):
            raise ValueError(f"cpu_millis is 10 to 1000 thousandths of one CPU, not {cpu_millis!r}")
        opts = dict(
            cores=0,
            region_mib=_mib(size),
            cpu_millis=cpu_millis or 0,
            lifetime_s=_seconds(lifetime, "lifetime"),
            idle_timeout_s=_seconds(idle_timeout, "idle_timeout"),
            default_timeout_s=_seconds(timeout, "timeout"),
            scheduler=scheduler,
            failover=False,
            connections=connections or 0,
            pipeline_depth=PIPELINE_DEPTH,
        )
        self._adopt(_native.Session(**opts), None)
        self._switch = threading.Lock()
        self._replica: Any = None
        self._release_replica: Any = None
        #: What happened to the primary or the replica: dicts with lost, lost_node, reason and
        #: serving (the lease that serves now; "" when none is left).
        self.replica_events: list[dict[str, str]] = []
        if replica:
            try:
                self._replica = _native.Session(avoid_nodes=[self._session.info()["node"]], **opts)
            except BaseException:
                self.close()
                raise
            self._release_replica = weakref.finalize(self, self._replica.release)

    def replica_info(self) -> Optional[dict[str, Any]]:
        """The replica lease (a dict as :meth:`info`), or None without one (or after it was lost)."""
        replica = self._replica
        return None if replica is None else replica.info()

    def _lost(self, which: Any, error: BaseException) -> None:
        """Records that `which` (the primary or the replica session) was revoked; the other one
        serves on alone. Raises `error` when no copy is left."""
        with self._switch:
            if which is self._session and self._replica is not None:
                lost, self._session, self._replica = self._session, self._replica, None
            elif which is self._replica:
                lost, self._replica = self._replica, None
            else:
                lost = None
            if lost is not None:
                info = lost.info()
                self.replica_events.append(
                    {
                        "lost": info["id"],
                        "lost_node": info["node"],
                        "reason": str(error),
                        "serving": self._session.info()["id"],
                    }
                )
                return
        raise error

    def _both(self, call: Any) -> None:
        """Runs `call(session)` on the primary and, while there is one, the replica."""
        for session in (self._session, self._replica):
            if session is None:
                continue
            try:
                call(session)
            except LeaseRevoked as e:
                self._lost(session, e)

    def _primary(self, call: Any) -> Any:
        """Runs `call(session)` on the primary; on its revocation, on the replica instead."""
        while True:
            session = self._session
            try:
                return call(session)
            except LeaseRevoked as e:
                self._lost(session, e)

    def read(self, offset: int, n: int) -> bytes:
        self._check_open()
        off, length = _offset(offset), _length(n)
        return self._primary(lambda s: s.read(off, length))

    def readv(self, ranges: Iterable[Tuple[int, int]]) -> list[bytes]:
        self._check_open()
        checked = [(_offset(o), _length(n)) for o, n in ranges]
        return self._primary(lambda s: s.readv(checked))

    def write(self, offset: int, data: Data) -> None:
        self._check_open()
        off, raw = _offset(offset), _bytes(data)
        self._both(lambda s: s.write(off, raw))

    def writev(self, pieces: Iterable[Tuple[int, Data]]) -> None:
        self._check_open()
        checked = [(_offset(o), _bytes(d)) for o, d in pieces]
        self._both(lambda s: s.writev(checked))

    def region_size(self) -> int:
        self._check_open()
        return self._primary(lambda s: s.region_size())

    def close(self) -> None:
        """Releases the lease and its replica. Safe to repeat."""
        super().close()
        if self._release_replica is not None:
            self._release_replica()

    def __repr__(self) -> str:
        try:
            i = self.info()
            copies = " +replica" if self._replica is not None else ""
            return f"<harvest.MemoryLease {i['id']} on {i['node']} {i['memory']['region_mib']} MiB{copies} {i['state']}>"
        except HarvestError:
            return "<harvest.MemoryLease>"
