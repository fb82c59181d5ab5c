"""harvest.Lease's Python side (argument checks, submit's dispatcher and bound, map, close) over a
recording fake of the extension's Session: no cluster needed. What the extension itself does on
a real cluster is tests/cluster's."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional

import harvest
import pytest
from harvest import _lease, errors

# The fake answers at once: anything slower is a dispatcher that lost a task or a slot.
pytestmark = pytest.mark.timeout(20)


class FakeSession:
    """Stands in for harvest._native.Session: runs "upper" (upper-cases), "fail" (raises
    FunctionCrashed for inputs starting with b'x'), "block" (waits for `gate`)."""

    instances: list["FakeSession"] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[str, list[bytes], Optional[float]]] = []
        self.released = 0
        self.gate = threading.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        FakeSession.instances.append(self)

    @property
    def connections(self) -> int:
        return self.kwargs["connections"] or max(self.kwargs["cores"], 1)

    def _one(self, fn: str, data: bytes) -> Any:
        if fn == "upper":
            return data.upper()
        if fn == "fail":
            if data.startswith(b"x"):
                return errors.FunctionCrashed(f"crashed on {data!r}")
            return data
        if fn == "block":
            assert self.gate.wait(10), "the test never opened the gate"
            return data
        return errors.NoSuchFunction(f"no function {fn!r}")

    def invoke(self, fn: str, data: bytes, timeout_s: Optional[float] = None) -> bytes:
        self.calls.append((fn, [data], timeout_s))
        r = self._one(fn, data)
        if isinstance(r, BaseException):
            raise r
        return r

    def invoke_many(self, fn: str, inputs: list[bytes], timeout_s: Optional[float] = None) -> list:
        assert all(type(i) is bytes for i in inputs), "the extension takes bytes only"
        with self.lock:
            self.calls.append((fn, list(inputs), timeout_s))
            self.in_flight += len(inputs)
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return [self._one(fn, d) for d in inputs]
        finally:
            with self.lock:
                self.in_flight -= len(inputs)

    def release(self) -> None:
        self.released += 1

    # A memory region of 64 bytes, as a memory lease's executor would hold.
    region = bytearray(64)

    def _check(self, offset: int, n: int) -> None:
        assert type(offset) is int and type(n) is int, "the extension takes ints"
        if offset + n > len(self.region):
            raise errors.FunctionError(f"{n} bytes at offset {offset} do not fit in the region")

    def region_size(self) -> int:
        return len(self.region)

    def read(self, offset: int, n: int) -> bytes:
        self._check(offset, n)
        return bytes(self.region[offset : offset + n])

    def write(self, offset: int, data: bytes) -> None:
        assert type(data) is bytes, "the extension takes bytes only"
        self._check(offset, len(data))
        self.region[offset : offset + len(data)] = data

    def readv(self, ranges: list) -> list:
        return [self.read(o, n) for o, n in ranges]

    def writev(self, pieces: list) -> None:
        for o, d in pieces:
            self._check(o, len(d))
        for o, d in pieces:
            self.write(o, d)

    def info(self) -> dict:
        return {"id": "L1", "node": "n1", "cpus": [0], "state": "active"}

    def revocations(self) -> list:
        return []


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeSession]:
    FakeSession.instances = []
    monkeypatch.setattr(_lease._native, "Session", FakeSession)
    return FakeSession


def test_sizes_and_durations_are_read_as_the_cli_reads_them(fake) -> None:
    lease = harvest.Lease(lib=b"\x7fELF", cores=2, mem="1G", lifetime="10m", idle_timeout="90s",
                          timeout="500ms", failover_deadline="1m")
    k = fake.instances[0].kwargs
    assert (k["mem_mib"], k["lifetime_s"], k["idle_timeout_s"]) == (1024, 600.0, 90.0)
    assert (k["default_timeout_s"], k["failover_deadline_s"]) == (0.5, 60.0)
    assert k["lib_bytes"] == b"\x7fELF" and k["lib_path"] is None and k["cores"] == 2
    lease.close()
    # Numbers are MiB and seconds.
    harvest.Lease(lib="/x.so", mem=256, lifetime=30, timeout=1.5).close()
    k = fake.instances[1].kwargs
    assert (k["mem_mib"], k["lifetime_s"], k["default_timeout_s"]) == (256, 30.0, 1.5)
    assert k["lib_path"] == "/x.so"
    assert harvest.Lease(lib="/x.so").max_in_flight == _lease.PIPELINE_DEPTH  # 1 core, 1 connection


def test_hot_is_passed_on_as_the_executors_hot_reads_it(fake) -> None:
    for given, sent in [(None, None), ("always", "always"), ("250us", "250us"), (0.00025, "250us"),
                        (0, "0us"), (2, "2000000us")]:
        harvest.Lease(lib="/x.so", hot=given).close()
        assert fake.instances[-1].kwargs["hot"] == sent, given


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"mem": "lots"}, ValueError, "lots"),
        ({"mem": -5}, ValueError, "positive"),
        ({"mem": True}, TypeError, "mem"),
        ({"mem": 1.5}, TypeError, "mem"),
        ({"lifetime": "soon"}, ValueError, "soon"),
        ({"lifetime": 0}, ValueError, "positive"),
        ({"lifetime": float("nan")}, ValueError, "positive"),
        ({"timeout": [1]}, TypeError, "timeout"),
        ({"connections": 0}, ValueError, "connections"),
        ({"max_in_flight": 0}, ValueError, "max_in_flight"),
        ({"hot": True}, TypeError, "hot"),
        ({"hot": -1}, ValueError, "hot"),
        ({"hot": float("nan")}, ValueError, "hot"),
        ({"hot": float("inf")}, ValueError, "hot"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_asked(fake, kwargs, error, words) -> None:
    with pytest.raises(error, match=words):
        harvest.Lease(lib="/x.so", **kwargs)
    assert fake.instances == [], "a lease was asked for despite a bad argument"


def test_the_extension_checks_what_it_is_given() -> None:
    # The real extension, not the fake: no library, two libraries, no cores.
    with pytest.raises(ValueError, match="exactly one function library"):
        harvest.Lease(cores=1)
    with pytest.raises(ValueError, match="exactly one function library"):
        harvest.Lease(lib="/x.so", lib_on_node="/y.so")
    with pytest.raises(ValueError, match="cores"):
        harvest.Lease(lib=b"x", cores=0)
    with pytest.raises(ValueError, match="hot: .*soon.*always"):
        harvest.Lease(lib=b"x", hot="soon")
    assert harvest._native.parse_mem("256M") == 256
    assert harvest._native.parse_mem("4G") == 4096
    assert harvest._native.parse_duration("10m") == 600.0
    assert harvest._native.parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        harvest._native.parse_mem("-1M")
    with pytest.raises(ValueError):
        harvest._native.parse_duration("10 parsecs")


def test_submit_runs_every_task_and_hands_each_future_its_own_result(fake) -> None:
    with harvest.Lease(lib="/x.so", cores=2) as lease:
        futures = [lease.submit("fail", b"x%d" % i if i % 7 == 0 else b"ok%d" % i)
                   for i in range(1000)]
        for i, f in enumerate(futures):
            if i % 7 == 0:
                e = f.exception(timeout=10)
                assert isinstance(e, harvest.FunctionCrashed) and f"x{i}" in str(e)
            else:
                assert f.result(timeout=10) == b"ok%d" % i
        # Futures are concurrent.futures ones: wait() and as_completed() work on them.
        assert all(isinstance(f, Future) for f in futures)
    session = fake.instances[0]
    sent = [d for fn, batch, _ in session.calls for d in batch]
    assert len(sent) == 1000, "each task is sent exactly once"
    assert session.most_in_flight <= lease.max_in_flight == 2 * _lease.PIPELINE_DEPTH
    assert session.released == 1


def test_submit_blocks_at_max_in_flight_and_goes_on_when_answers_come(fake) -> None:
    lease = harvest.Lease(lib="/x.so", max_in_flight=3)
    session = fake.instances[0]
    futures = [lease.submit("block", b"%d" % i) for i in range(3)]
    fourth: list[Future] = []
    t = threading.Thread(target=lambda: fourth.append(lease.submit("block", b"3")))
    t.start()
    time.sleep(0.3)
    assert not fourth, "a fourth task was taken while three were in flight"
    session.gate.set()
    t.join(10)
    assert fourth, "the fourth task never got in after the first three finished"
    assert [f.result(10) for f in futures + fourth] == [b"0", b"1", b"2", b"3"]
    lease.close()


def test_batches_keep_function_and_timeout_apart(fake) -> None:
    with harvest.Lease(lib="/x.so") as lease:
        session = fake.instances[0]
        futures = [lease.submit("upper", b"a"), lease.submit("upper", b"b", timeout=2),
                   lease.submit("fail", b"c"), lease.submit("upper", b"d")]
        assert [f.result(10) for f in futures] == [b"A", b"B", b"c", b"D"]
    for fn, batch, timeout in session.calls:
        expected = {b"a": ("upper", None), b"b": ("upper", 2.0), b"c": ("fail", None),
                    b"d": ("upper", None)}
        assert all(expected[d] == (fn, timeout) for d in batch), session.calls


def test_a_cancelled_future_is_not_run(fake) -> None:
    lease = harvest.Lease(lib="/x.so", max_in_flight=10)
    session = fake.instances[0]
    first = lease.submit("block", b"first")  # holds the dispatcher until the gate opens
    time.sleep(0.2)
    cancelled = lease.submit("upper", b"cancelled")
    kept = lease.submit("upper", b"kept")
    assert cancelled.cancel()
    session.gate.set()
    assert first.result(10) == b"first" and kept.result(10) == b"KEPT"
    lease.close()
    assert all(b"cancelled" not in batch for _, batch, _ in session.calls)
    # Its slot came back: max_in_flight submits fit again without blocking.
    assert lease._slots._value == 10


def test_map_yields_in_order_in_chunks_and_raises_at_the_failing_input(fake) -> None:
    with harvest.Lease(lib="/x.so", max_in_flight=16) as lease:
        session = fake.instances[0]
        out = list(lease.map("upper", (b"i%d" % i for i in range(100))))
        assert out == [b"I%d" % i for i in range(100)]
        assert max(len(b) for _, b, _ in session.calls) == 16
        # bytearray and memoryview inputs are sent as bytes.
        assert list(lease.map("upper", [bytearray(b"ab"), memoryview(b"cd")])) == [b"AB", b"CD"]
        got = []
        with pytest.raises(harvest.FunctionCrashed, match="x3"):
            for r in lease.map("fail", [b"0", b"1", b"2", b"x3", b"4"]):
                got.append(r)
        assert got == [b"0", b"1", b"2"]
        with pytest.raises(TypeError, match="bytes"):
            list(lease.map("upper", ["text is not bytes"]))


def test_close_waits_for_submitted_tasks_then_releases_once(fake) -> None:
    lease = harvest.Lease(lib="/x.so")
    session = fake.instances[0]
    f = lease.submit("block", b"late")
    threading.Timer(0.3, session.gate.set).start()
    lease.close()
    assert f.done() and f.result() == b"late"
    assert session.released == 1
    lease.close()
    assert session.released == 1
    with pytest.raises(harvest.LocalError, match="closed"):
        lease.invoke("upper", b"a")
    with pytest.raises(harvest.LocalError, match="closed"):
        lease.submit("upper", b"a")
    with pytest.raises(harvest.LocalError, match="closed"):
        lease.map("upper", [b"a"])


def test_the_context_manager_releases_on_an_exception(fake) -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with harvest.Lease(lib="/x.so"):
            raise RuntimeError("inside")
    assert fake.instances[0].released == 1


def test_invoke_raises_the_sessions_exception(fake) -> None:
    with harvest.Lease(lib="/x.so") as lease:
        assert lease.invoke("upper", b"q") == b"Q"
        with pytest.raises(harvest.NoSuchFunction):
            lease.invoke("nope", b"")
        with pytest.raises(TypeError, match="bytes"):
            lease.invoke("upper", "str")  # type: ignore[arg-type]


def test_a_lease_left_open_is_released_when_dropped_or_at_exit(tmp_path) -> None:
    # In a child interpreter: a lease with work submitted and never closed.
    import subprocess
    import sys
    import textwrap

    marker = tmp_path / "released"
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import harvest
        from harvest import _lease
        from test_lease_python_side import FakeSession

        class Recording(FakeSession):
            def release(self):
                open({str(marker)!r}, "a").write("released\\n")

        _lease._native.Session = Recording
        lease = harvest.Lease(lib="/x.so")
        assert lease.submit("upper", b"a").result(10) == b"A"
        closed = harvest.Lease(lib="/x.so")
        closed.close()
        dropped = harvest.Lease(lib="/x.so")
        del dropped  # garbage: released now
        assert open({str(marker)!r}).read() == "released\\n" * 2
        print("exiting without close()")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "exiting without close()" in out.stdout
    # One release for the closed lease, one for the dropped one, one at exit for the open one;
    # none twice.
    assert marker.read_text() == "released\n" * 3


def test_region_methods_pass_offsets_and_bytes_through(fake) -> None:
    fake.region = bytearray(64)
    with harvest.Lease(lib="/x.so") as lease:
        assert lease.region_size() == 64
        lease.write(3, b"abc")
        lease.write(10, bytearray(b"xy"))
        lease.write(20, memoryview(b"mv"))
        assert lease.read(3, 3) == b"abc"
        lease.writev([(40, b"one"), (50, bytearray(b"two"))])
        assert lease.readv([(3, 3), (10, 2), (20, 2), (40, 3), (50, 3)]) == [
            b"abc", b"xy", b"mv", b"one", b"two"
        ]
        assert lease.readv(iter([(0, 0)])) == [b""]
        with pytest.raises(errors.FunctionError, match="do not fit"):
            lease.read(60, 5)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda l: l.read(-1, 1), ValueError, "offset"),
        (lambda l: l.read(1 << 64, 1), ValueError, "offset"),
        (lambda l: l.read(0, -1), ValueError, "length"),
        (lambda l: l.read(0, 1 << 32), ValueError, "length"),
        (lambda l: l.read(1.0, 1), TypeError, "offset"),
        (lambda l: l.read(True, 1), TypeError, "offset"),
        (lambda l: l.write(0, "text"), TypeError, "bytes"),
        (lambda l: l.readv([(0, "1")]), TypeError, "length"),
        (lambda l: l.writev([(-2, b"x")]), ValueError, "offset"),
        (lambda l: l.writev([(0, None)]), TypeError, "bytes"),
    ],
)
def test_bad_region_arguments_are_refused_before_anything_is_sent(fake, call, error, words) -> None:
    fake.region = bytearray(64)
    with harvest.Lease(lib="/x.so") as lease:
        with pytest.raises(error, match=words):
            call(lease)
    assert fake.region == bytearray(64), "something was written despite a bad argument"


def test_region_methods_refuse_a_closed_lease(fake) -> None:
    lease = harvest.Lease(lib="/x.so")
    lease.close()
    with pytest.raises(errors.LocalError, match="closed"):
        lease.read(0, 1)
    with pytest.raises(errors.LocalError, match="closed"):
        lease.write(0, b"x")


def test_a_memory_lease_asks_for_a_region_and_no_core_and_never_fails_over(fake) -> None:
    fake.region = bytearray(64)
    with harvest.MemoryLease(size="2G", lifetime="10m", cpu_millis=250) as region:
        region.write(8, b"abc")
        assert region.read(8, 3) == b"abc"
    kw = fake.instances[0].kwargs
    assert (kw["cores"], kw["region_mib"], kw["cpu_millis"]) == (0, 2048, 250)
    assert kw["failover"] is False, "a region's contents cannot follow a failover"
    assert "lib_path" not in kw and "lib_bytes" not in kw
    assert kw["lifetime_s"] == 600.0
    harvest.MemoryLease(size=64).close()
    assert fake.instances[1].kwargs["region_mib"] == 64


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(size=0), ValueError, "MiB"),
        (dict(size="1G", cpu_millis=5), ValueError, "cpu_millis"),
        (dict(size="1G", cpu_millis=True), ValueError, "cpu_millis"),
        (dict(size="1G", connections=0), ValueError, "connections"),
    ],
)
def test_bad_memory_lease_arguments_say_what_is_wrong(fake, kwargs, error, words) -> None:
    with pytest.raises(error, match=words):
        harvest.MemoryLease(**kwargs)
    assert fake.instances == [], "nothing is acquired for a bad request"


class RegionSession(FakeSession):
    """A memory lease of its own: its own region, node and id; `revoked` makes every call raise
    LeaseRevoked as the extension does for a revoked memory lease."""

    count = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        RegionSession.count += 1
        self.region = bytearray(64)
        self.id = f"M{RegionSession.count}"
        avoid = kwargs.get("avoid_nodes") or []
        self.node = next(n for n in ("n1", "n2", "n3") if n not in avoid)
        self.revoked = False

    def _check(self, offset: int, n: int) -> None:
        if self.revoked:
            raise errors.LeaseRevoked(f"lease {self.id} on {self.node} revoked: reclaimed")
        super()._check(offset, n)

    def info(self) -> dict:
        return {"id": self.id, "node": self.node, "cpus": [], "state": "active",
                "memory": {"region_mib": 1, "cpu_millis": 100}}


def test_a_replica_goes_to_another_node_takes_every_write_and_serves_when_the_primary_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeSession.instances = []
    monkeypatch.setattr(_lease._native, "Session", RegionSession)
    region = harvest.MemoryLease(size=1, replica=True)
    primary, replica = FakeSession.instances
    assert replica.kwargs["avoid_nodes"] == [primary.node]
    assert region.replica_info()["node"] != region.info()["node"]
    region.write(0, b"abc")
    region.writev([(10, b"xy")])
    assert primary.region[:3] == replica.region[:3] == b"abc"
    assert primary.region[10:12] == replica.region[10:12] == b"xy"
    # The primary is reclaimed: reads go to the replica, and the lease says which was lost.
    primary.revoked = True
    assert region.read(0, 3) == b"abc"
    assert region.readv([(10, 2)]) == [b"xy"]
    assert region.info()["id"] == replica.id
    assert region.replica_info() is None
    [event] = region.replica_events
    assert event["lost"] == primary.id and event["lost_node"] == primary.node
    assert event["serving"] == replica.id and "reclaimed" in event["reason"]
    # The last copy gone: the caller is told, nothing is read from elsewhere.
    replica.revoked = True
    with pytest.raises(errors.LeaseRevoked):
        region.read(0, 3)
    region.close()
    assert primary.released == 1 and replica.released == 1


def test_a_lost_replica_is_dropped_and_writes_go_on_to_the_primary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeSession.instances = []
    monkeypatch.setattr(_lease._native, "Session", RegionSession)
    with harvest.MemoryLease(size=1, replica=True) as region:
        primary, replica = FakeSession.instances
        replica.revoked = True
        region.write(5, b"q")
        assert primary.region[5:6] == b"q"
        assert region.replica_info() is None
        assert region.replica_events[0]["lost"] == replica.id
        assert region.replica_events[0]["serving"] == primary.id
    # Without replica=True nothing is asked to avoid any node.
    FakeSession.instances = []
    harvest.MemoryLease(size=1).close()
    assert "avoid_nodes" not in FakeSession.instances[0].kwargs
