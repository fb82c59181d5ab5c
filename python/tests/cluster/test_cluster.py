"""The Python client against the real local cluster: every body runs as an unprivileged user
(conftest.run_as). Run by scripts/test-all's cluster stage."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import harvest
import pytest

from conftest import OTHER_USER, REPO, USER, Child, regular_user, run_as


def _whereami(lease: harvest.Lease) -> dict[str, str]:
    out = lease.invoke("whereami", b"").decode()
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# -- invoke ------------------------------------------------------------------------------------


def _invoke(lib: str) -> dict:
    with harvest.Lease(lib=lib, cores=1, mem="128M", lifetime="2m") as lease:
        info = lease.info()
        echoed = lease.invoke("echo", b"hello from python")
        big = os.urandom(1 << 20)
        big_back = lease.invoke("echo", bytearray(big))
        where = _whereami(lease)
    return {"info": info, "echoed": echoed, "big_ok": big_back == big, "where": where}


def test_invoke_runs_the_function_as_the_caller_on_the_leased_cpus(library: str) -> None:
    uid, _ = regular_user(USER)
    r = run_as(USER, _invoke, library)
    assert r["echoed"] == b"hello from python"
    assert r["big_ok"], "a 1 MiB payload did not come back intact"
    assert r["info"]["state"] == "active", r["info"]
    assert int(r["where"]["uid"]) == uid, r["where"]
    cpus = {int(c) for c in r["where"]["cpus"].split(",")}
    assert cpus <= set(r["info"]["cpus"]), (cpus, r["info"])


def _executor_hot(lease_id: str) -> list:
    """The --hot of the harvest-executor processes whose arguments name the lease (its activity
    file): the supervisor and its workers, forked with the same arguments."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = [a.decode() for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if args and args[0].endswith("harvest-executor") and any(lease_id in a for a in args):
            found.add(args[args.index("--hot") + 1] if "--hot" in args else None)
    return sorted(found, key=str)


def _hot_and_warm(lib: str) -> dict:
    out = {}
    for hot, spin in (("always", True), (None, False)):
        with harvest.Lease(lib=lib, cores=1, mem="128M", lifetime="2m", hot=hot, spin=spin) as lease:
            answers = [lease.invoke("echo", b"%d" % i) for i in range(200)]
            out[str(hot)] = {
                "answers_ok": answers == [b"%d" % i for i in range(200)],
                "executor_hot": _executor_hot(lease.id),
            }
    return out


def test_hot_asks_for_a_busy_polling_executor_and_spinning_calls_are_answered(library: str) -> None:
    r = run_as(USER, _hot_and_warm, library)
    assert r["always"]["answers_ok"] and r["None"]["answers_ok"], r
    # The lease's own executor (one per lease) runs as asked; the default is warm.
    assert r["always"]["executor_hot"] == ["always"], r
    assert r["None"]["executor_hot"] == ["warm"], r


def _released_lease_refuses(lib: str) -> str:
    lease = harvest.Lease(lib=lib, cores=1, mem="128M")
    lease.close()
    try:
        lease.invoke("echo", b"x")
    except harvest.LocalError as e:
        return str(e)
    raise AssertionError("a closed lease still invoked")


def test_a_closed_lease_refuses_invocations(library: str) -> None:
    assert "closed" in run_as(USER, _released_lease_refuses, library)


# -- submit and map ----------------------------------------------------------------------------


def _many(lib: str) -> dict:
    n = 1000
    with harvest.Lease(lib=lib, cores=2, mem="128M", lifetime="2m", max_in_flight=64) as lease:
        futures = [lease.submit("echo", f"task {i}".encode()) for i in range(n)]
        submitted = [f.result(timeout=60) for f in futures]
        mapped = list(lease.map("echo", (f"item {i}".encode() for i in range(n))))
        connections = lease.connections
    return {"submitted": submitted, "mapped": mapped, "connections": connections}


def test_submit_and_map_run_1000_tasks_in_order(library: str) -> None:
    r = run_as(USER, _many, library)
    assert r["submitted"] == [f"task {i}".encode() for i in range(1000)]
    assert r["mapped"] == [f"item {i}".encode() for i in range(1000)]
    assert r["connections"] == 2


def _gil_released(lib: str) -> float:
    import threading

    with harvest.Lease(lib=lib, cores=1, mem="128M") as lease:
        ticks = 0
        stop = False

        def count() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                time.sleep(0.001)

        t = threading.Thread(target=count)
        t.start()
        lease.invoke("burn", b"500")  # 0.5 s in the function
        stop = True
        t.join()
    return ticks


def test_the_gil_is_released_while_a_function_runs(library: str) -> None:
    # Another Python thread keeps running during a 500 ms invocation: with the GIL held it
    # would count nothing until the call returned.
    assert run_as(USER, _gil_released, library) >= 100


# -- errors ------------------------------------------------------------------------------------


def _errors(lib: str) -> dict:
    got = {}
    with harvest.Lease(lib=lib, cores=1, mem="64M", lifetime="2m") as lease:
        for name, fn, data, timeout in [
            ("crash", "crash", b"", None),
            ("timeout", "spin", b"", 0.5),
            ("oom", "hog", b"512", None),
            ("missing", "no_such_function", b"", None),
        ]:
            try:
                lease.invoke(fn, data, timeout=timeout)
                got[name] = None
            except harvest.HarvestError as e:
                got[name] = (type(e).__name__, e.exit_code, str(e))
        # The lease serves on after its function failed.
        got["after"] = lease.invoke("echo", b"still here")
        # In submit and map, a failure belongs to its own task only.
        futs = [lease.submit("echo", b"a"), lease.submit("crash", b""), lease.submit("echo", b"b")]
        outcome = []
        for f in futs:
            e = f.exception(timeout=60)
            outcome.append(type(e).__name__ if e else f.result())
        got["futures"] = outcome
        it = lease.map("echo", [b"1", b"2"])
        got["map"] = list(it)
        try:
            list(lease.map("crash", [b""]))
            got["map_crash"] = None
        except harvest.FunctionCrashed as e:
            got["map_crash"] = e.category
    return got


def test_crash_timeout_and_oom_are_exceptions_with_the_clis_categories(library: str) -> None:
    got = run_as(USER, _errors, library)
    assert got["crash"][:2] == ("FunctionCrashed", 10), got
    assert got["timeout"][:2] == ("FunctionTimeout", 11), got
    assert got["oom"][:2] == ("FunctionOutOfMemory", 12), got
    assert got["missing"][:2] == ("NoSuchFunction", 13), got
    assert got["after"] == b"still here"
    assert got["futures"] == [b"a", "FunctionCrashed", b"b"], got
    assert got["map"] == [b"1", b"2"]
    assert got["map_crash"] == "crashed"
    assert issubclass(harvest.FunctionCrashed, harvest.FunctionError)
    assert issubclass(harvest.FunctionError, harvest.HarvestError)


def _no_resources(lib: str) -> tuple:
    try:
        harvest.Lease(lib=lib, cores=64, mem="128M")
    except harvest.HarvestError as e:
        return (type(e).__name__, e.exit_code)
    return ("acquired", 0)


def test_a_lease_no_node_can_hold_is_no_resources(library: str) -> None:
    assert run_as(USER, _no_resources, library) == ("NoResources", 5)


# -- failover ----------------------------------------------------------------------------------


def _failover(lib: str) -> dict:
    env = dict(os.environ)
    with harvest.Lease(lib=lib, cores=1, mem="128M", lifetime="5m") as lease:
        first = lease.info()
        fut = lease.submit("burn", b"4000", timeout=60)
        time.sleep(0.5)
        # A batch job that takes the whole node the lease is on (any user may submit one).
        job = subprocess.run(
            ["sbatch", "--parsable", "-w", first["node"], "--exclusive", "--output=/dev/null",
             "--chdir=/tmp", "--wrap", "sleep 60"],
            capture_output=True, text=True, env=env,
        )
        assert job.returncode == 0, job.stderr
        job_id = job.stdout.strip().split(";")[0]
        try:
            out = fut.result(timeout=90)
            after = lease.info()
            revocations = lease.revocations
            again = lease.invoke("echo", b"on the new lease")
        finally:
            subprocess.run(["scancel", job_id], env=env)
    return {"out": out, "first": first, "after": after, "revocations": revocations,
            "job": job_id, "again": again}


def test_failover_when_a_batch_job_takes_the_leases_cpu(library: str) -> None:
    r = run_as(USER, _failover, library, timeout=240)
    assert r["out"] == b"done"
    assert r["revocations"], r
    rev = r["revocations"][0]
    assert rev["lease"] == r["first"]["id"] and rev["cause"] == "reclaimed", rev
    assert f"job {r['job']}" in rev["reason"], rev
    assert r["after"]["id"] != r["first"]["id"]
    assert r["after"]["node"] != r["first"]["node"], r
    assert r["again"] == b"on the new lease"


def _no_failover(lib: str) -> tuple:
    env = dict(os.environ)
    with harvest.Lease(lib=lib, cores=1, mem="128M", failover=False) as lease:
        node = lease.node
        fut = lease.submit("burn", b"4000", timeout=60)
        time.sleep(0.5)
        job = subprocess.run(
            ["sbatch", "--parsable", "-w", node, "--exclusive", "--output=/dev/null",
             "--chdir=/tmp", "--wrap", "sleep 60"],
            capture_output=True, text=True, env=env,
        )
        assert job.returncode == 0, job.stderr
        try:
            e = fut.exception(timeout=90)
        finally:
            subprocess.run(["scancel", job.stdout.strip().split(";")[0]], env=env)
    return (type(e).__name__, e.exit_code if e else None, str(e))


def test_without_failover_a_revocation_is_lease_revoked(library: str) -> None:
    name, code, message = run_as(USER, _no_failover, library, timeout=240)
    assert (name, code) == ("LeaseRevoked", 15), message
    assert "reclaimed by job" in message


# -- memory leases ----------------------------------------------------------------------------


def _memory_replica(lib: str) -> dict:
    import json

    env = dict(os.environ)
    nodes = json.loads(
        subprocess.run(["harvest", "nodes", "--json"], capture_output=True, text=True,
                       env=env, check=True).stdout
    )
    total = {n["name"]: n["memory_mib"]["total"] for n in nodes}
    with harvest.MemoryLease(size="2G", lifetime="3m", replica=True) as region:
        first, replica = region.info(), region.replica_info()
        data = os.urandom(3 << 20)
        region.write(4096, data)
        same = region.read(4096, len(data)) == data
        # A job on the primary's node that needs the memory the region holds.
        need = total[first["node"]] - first["memory_mib"] + 1024
        job = subprocess.run(
            ["sbatch", "--parsable", "-w", first["node"], f"--mem={need}M", "--output=/dev/null",
             "--chdir=/tmp", "--wrap", "sleep 1"],
            capture_output=True, text=True, env=env,
        )
        assert job.returncode == 0, job.stderr
        deadline = time.monotonic() + 60
        back = None
        while time.monotonic() < deadline:
            back = region.read(4096, len(data))
            if region.replica_events:
                break
            time.sleep(0.5)
        return {
            "first": first,
            "replica": replica,
            "same": same,
            "after_reclaim_same": back == data,
            "events": region.replica_events,
            "serving": region.info(),
        }


def test_a_memory_lease_with_a_replica_survives_a_job_that_takes_the_primarys_memory(
    library: str,
) -> None:
    r = run_as(USER, _memory_replica, library, timeout=240)
    assert r["first"]["memory"]["region_mib"] == 2048, r["first"]
    assert r["replica"]["node"] != r["first"]["node"], r
    assert r["same"], "the region did not read back what was written"
    assert r["events"], f"the primary was never revoked: {r}"
    event = r["events"][0]
    assert event["lost"] == r["first"]["id"] and event["lost_node"] == r["first"]["node"], event
    assert "memory" in event["reason"], event
    assert event["serving"] == r["replica"]["id"] == r["serving"]["id"], r
    assert r["after_reclaim_same"], "the replica does not hold what was written"


# -- two users ---------------------------------------------------------------------------------


def _hold_lease(lib: str, to_parent: int, from_parent: int) -> dict:
    import json

    with harvest.Lease(lib=lib, cores=1, mem="128M", lifetime="2m") as lease:
        info = lease.info()
        os.write(to_parent, json.dumps(info).encode() + b"\n")
        os.read(from_parent, 1)  # the other user is done
        return {"info": info, "where": _whereami(lease)}


def _intrude(lib: str, address: str) -> dict:
    """As the other user: a lease of one's own works; the first user's executor answers a
    connection without the lease's secret with Unauthorized and nothing else."""
    with harvest.Lease(lib=lib, cores=1, mem="128M", lifetime="2m") as lease:
        mine = lease.info()
        where = _whereami(lease)
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    challenge = b""
    while len(challenge) < 4 + 9 + 32:
        chunk = s.recv(4 + 9 + 32 - len(challenge))
        if not chunk:
            break
        challenge += chunk
    # A guessed proof, then an INVOKE of whereami right behind it.
    name = b"whereami"
    s.sendall(struct.pack("<IBQ", 9 + 32, 5, 0) + b"\x00" * 32)
    s.sendall(struct.pack("<IBQIHB", 9 + 4 + 2 + 1 + len(name), 1, 1, 0, len(name), 0) + name)
    answer = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    except OSError:
        pass
    s.close()
    kinds = []
    while len(answer) >= 13:
        (length,) = struct.unpack_from("<I", answer)
        kinds.append((answer[4], answer[13] if answer[4] == 3 and length > 9 else None))
        answer = answer[4 + length :]
    return {"mine": mine, "where": where, "challenge_kind": challenge[4], "kinds": kinds}


def test_two_users_leases_are_kept_apart(library: str) -> None:
    uid_a, _ = regular_user(USER)
    uid_b, _ = regular_user(OTHER_USER)
    to_parent_r, to_parent_w = os.pipe()
    from_parent_r, from_parent_w = os.pipe()
    a = Child(USER, _hold_lease, library, to_parent_w, from_parent_r)
    os.close(to_parent_w)
    os.close(from_parent_r)
    import json

    line = b""
    with os.fdopen(to_parent_r, "rb") as f:
        line = f.readline()
    assert line, "the first user's lease never came up"
    info_a = json.loads(line)
    try:
        b = run_as(OTHER_USER, _intrude, library, info_a["executor_address"])
    finally:
        os.write(from_parent_w, b"x")
        os.close(from_parent_w)
    got_a = a.result()
    assert int(got_a["where"]["uid"]) == uid_a
    assert int(b["where"]["uid"]) == uid_b
    assert b["mine"]["id"] != info_a["id"]
    assert b["mine"]["uid"] == uid_b and info_a["uid"] == uid_a
    if b["mine"]["node"] == info_a["node"]:
        assert not set(b["mine"]["cpus"]) & set(info_a["cpus"]), (b["mine"], info_a)
    # The intruder got the challenge, then only an Unauthorized error (code 9), never a RESULT.
    assert b["challenge_kind"] == 4
    assert b["kinds"] and all(k == (3, 9) for k in b["kinds"]), b["kinds"]


# -- the documented example ----------------------------------------------------------------------


def test_the_example_in_the_docs_runs(library: str) -> None:
    example = REPO / "python" / "examples" / "squares.py"
    n = 500
    uid, gid = regular_user(USER)
    out = subprocess.run(
        ["runuser", "-u", USER, "--", sys.executable, str(example), str(n)],
        capture_output=True, text=True, timeout=180, cwd="/tmp",
    )
    assert out.returncode == 0, out.stderr
    total = (n - 1) * n * (2 * n - 1) // 6
    assert f"sum of squares below {n}: {total} (map), {total} (submit)" in out.stdout, out.stdout
    assert "3.0 squared: 9.0" in out.stdout, out.stdout
    assert "crash: FunctionCrashed (the CLI's exit code 10)" in out.stdout, out.stdout
