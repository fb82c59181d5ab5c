"""compare-peers' driver for the Python systems: harvest's Python client, or Parsl.

Run by `harvest-experiments compare-peers` (experiments/src/cmd/peers), which builds the work
(experiments/src/cmd/peers/peer.c), makes the virtual environments and merges what this prints:

    peers.py --system harvest --lib libpeer.so --plan plan.json --cpu-roots 1,2,3
    peers.py --system parsl --venv target/parsl-venv --plan plan.json --cpu-roots 1,2,3

The plan (JSON) lists the workloads: `{"name", "function", "payload_bytes", "sequential",
"tasks", "in_flight"}`. For each: `sequential` calls one after another (p50 and p99 of the round
trip), then `tasks` calls with at most `in_flight` outstanding (throughput), and the CPU time the
framework's processes used meanwhile: the process trees rooted at `--cpu-roots` (the cluster's
daemons) and at this process, from /proc (utime + stime of the live processes, cutime + cstime
of what they reaped). Before the first call: the time from nothing (no lease, no Parsl) to the
first result. One JSON object on stdout.

Parsl runs HighThroughputExecutor with SlurmProvider, one block of one node with `--workers`
workers, its defaults otherwise (CurveZMQ encryption on, as a user gets it), usage tracking off;
its `echo` and `kernel` are Python apps doing what peer.c's functions do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import deque
from typing import Any, Callable, Iterable

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(roots: Iterable[int]) -> float:
    """CPU seconds of the process trees under `roots` and under every slurmstepd: every live
    process's utime + stime + cutime + cstime (what a process reaped moves into its parent's
    cutime, so the sum only grows while the trees' processes work); experiments/src/cmd/peers/
    cpu.rs does the same."""
    procs: dict[int, tuple[int, int]] = {}
    steps: list[int] = []  # slurmstepd leaves slurmd's tree; a job's tasks run under it
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(b")") + 2:].split()
        procs[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
        if b"(slurmstepd)" in s:
            steps.append(int(d))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, seen, stack = 0, set(), [r for r in list(roots) + steps if r in procs]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += procs[p][1]
        stack.extend(children.get(p, []))
    return total / TICK


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(call: Callable[[str, bytes], bytes], submit: Callable[[str, bytes], Any],
            plan: list[dict], roots: list[int]) -> list[dict]:
    rows = []
    for w in plan:
        data = bytes([7]) * w["payload_bytes"]
        cpu0, t_all = tree_cpu_s(roots), time.perf_counter()
        rtt = []
        for _ in range(w["sequential"]):
            t = time.perf_counter_ns()
            out = call(w["function"], data)
            rtt.append((time.perf_counter_ns() - t) / 1000)
            if len(out) != len(data):
                raise RuntimeError(f"{w['function']} answered {len(out)} bytes for {len(data)}")
        t0 = time.perf_counter()
        pending: deque = deque()
        done = 0
        for _ in range(w["tasks"]):
            if len(pending) >= w["in_flight"]:
                if len(pending.popleft().result()) != len(data):
                    raise RuntimeError("a concurrent call answered the wrong size")
                done += 1
            pending.append(submit(w["function"], data))
        while pending:
            if len(pending.popleft().result()) != len(data):
                raise RuntimeError("a concurrent call answered the wrong size")
            done += 1
        took = time.perf_counter() - t0
        rows.append({
            "workload": w["name"], "payload_bytes": w["payload_bytes"],
            "sequential": len(rtt), "p50_us": round(percentile(rtt, 0.5), 1),
            "p99_us": round(percentile(rtt, 0.99), 1),
            "tasks": done, "in_flight": w["in_flight"],
            "throughput_per_s": round(done / took, 1),
            "cpu_s_raw": round(tree_cpu_s(roots) - cpu0, 3),
            "wall_s": round(time.perf_counter() - t_all, 3),
        })
        print(f"peers: {w['name']}: p50 {rows[-1]['p50_us']} us, "
              f"{rows[-1]['throughput_per_s']}/s", file=sys.stderr)
    return rows


def run_harvest(a: argparse.Namespace, plan: list[dict], roots: list[int]) -> dict:
    import harvest

    t0 = time.perf_counter()
    with harvest.Lease(lib=a.lib, cores=a.workers, mem=256, lifetime="30m",
                       max_in_flight=max(w["in_flight"] for w in plan)) as lease:
        lease.invoke("echo", b"x")
        first_ms = (time.perf_counter() - t0) * 1000
        rows = measure(lease.invoke, lease.submit, plan, roots)
    return {"first_result_ms": round(first_ms, 1), "workloads": rows,
            "version": f"harvest python client, Python {sys.version.split()[0]}"}


def run_parsl(a: argparse.Namespace, plan: list[dict], roots: list[int]) -> dict:
    import parsl
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import SingleNodeLauncher
    from parsl.providers import SlurmProvider

    @parsl.python_app
    def echo(data: bytes) -> bytes:
        return data

    @parsl.python_app
    def kernel(data: bytes) -> bytes:
        import time as t

        start = t.perf_counter()
        while t.perf_counter() - start < 0.01:
            pass
        return data

    apps = {"echo": echo, "kernel": kernel}
    run_dir = tempfile.mkdtemp(prefix="harvest-peers-parsl-")
    config = Config(
        executors=[HighThroughputExecutor(
            label="htex", address="127.0.0.1", max_workers_per_node=a.workers,
            provider=SlurmProvider(
                partition=None, nodes_per_block=1, init_blocks=1, min_blocks=1, max_blocks=1,
                walltime="00:30:00", exclusive=False, cores_per_node=a.workers,
                scheduler_options=f"#SBATCH -w {a.node}",
                worker_init=f"export PATH={a.venv}/bin:$PATH",
                launcher=SingleNodeLauncher(), cmd_timeout=60,
            ),
        )],
        run_dir=run_dir, usage_tracking=0, strategy="none",
    )
    t0 = time.perf_counter()
    dfk = parsl.load(config)
    try:
        echo(b"x").result()
        first_ms = (time.perf_counter() - t0) * 1000

        def call(fn: str, data: bytes) -> bytes:
            return apps[fn](data).result()

        def submit(fn: str, data: bytes) -> Any:
            return apps[fn](data)

        rows = measure(call, submit, plan, roots)
    finally:
        dfk.cleanup()
        parsl.clear()
    return {"first_result_ms": round(first_ms, 1), "workloads": rows,
            "version": f"parsl {parsl.__version__} HighThroughputExecutor + SlurmProvider, "
                       f"Python {sys.version.split()[0]}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", choices=["harvest", "parsl"], required=True)
    ap.add_argument("--plan", required=True, help="the workloads (JSON), as compare-peers writes it")
    ap.add_argument("--lib", help="harvest: the function library (peer.c)")
    ap.add_argument("--venv", help="parsl: the virtual environment the workers run from")
    ap.add_argument("--node", default="n1", help="parsl: the node its block runs on")
    ap.add_argument("--workers", type=int, default=2, help="cores (harvest) or workers (parsl)")
    ap.add_argument("--cpu-roots", default="", help="pids whose process trees count as the framework")
    a = ap.parse_args()
    with open(a.plan) as f:
        plan = json.load(f)
    roots = [int(p) for p in a.cpu_roots.split(",") if p] + [os.getpid()]
    if a.system == "harvest":
        if not a.lib:
            ap.error("--system harvest needs --lib")
        out = run_harvest(a, plan, roots)
    else:
        if not a.venv:
            ap.error("--system parsl needs --venv")
        out = run_parsl(a, plan, roots)
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
