"""Invocation round trip of the Python client beside the Rust client's, in the same run.

    cargo build --profile wheel -p harvest-python --example rust_baseline
    eval "$(deploy/local-cluster env)"
    runuser -u harvest-user -- target/python-venv/bin/python python/bench/latency.py \\
        --rust target/wheel/examples/rust_baseline --out /tmp/latency.json

Both sides lease 1 core and 128 MiB for the same library (system-tests' echo, built here), warm
up, then time sequential invocations of `echo` over one connection; the rounds alternate Rust,
Python, Rust, ... so that both see the same cluster. Prints p50 and p99 per client and payload
size, and the Python/Rust ratio (the goal: within 2x). The Python figures include everything a
Python caller pays (argument checks, the binding, the GIL released and taken back).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harvest

REPO = Path(__file__).resolve().parents[2]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def python_round(lib: str, size: int, warmup: int, count: int) -> list[float]:
    data = bytes([7]) * size
    out = []
    with harvest.Lease(lib=lib, cores=1, mem=128, lifetime="5m", connections=1) as lease:
        for i in range(warmup + count):
            t = time.perf_counter_ns()
            got = lease.invoke("echo", data)
            took = time.perf_counter_ns() - t
            if len(got) != size:
                raise RuntimeError(f"echo answered {len(got)} bytes for {size}")
            if i >= warmup:
                out.append(took / 1000)
    return out


def rust_round(binary: str, lib: str, size: int, warmup: int, count: int) -> list[float]:
    p = subprocess.run(
        [binary, lib, "echo", str(size), str(warmup), str(count)],
        capture_output=True, text=True, timeout=300,
    )
    if p.returncode != 0:
        raise RuntimeError(f"{binary} failed ({p.returncode}): {p.stderr.strip()}")
    return [ns / 1000 for ns in json.loads(p.stdout)["rtt_ns"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rust", required=True, help="the rust_baseline example binary")
    ap.add_argument("--sizes", default="1,65536", help="payload sizes in bytes, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per client")
    ap.add_argument("--count", type=int, default=2000, help="timed invocations per round")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--out", help="write the summary as JSON here")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        lib = os.path.join(d, "libfunctions.so")
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", lib,
                        str(REPO / "system-tests" / "src" / "functions.c")], check=True)
        results = []
        for size in sizes:
            rtt: dict[str, list[float]] = {"rust": [], "python": []}
            for _ in range(a.rounds):
                rtt["rust"] += rust_round(a.rust, lib, size, a.warmup, a.count)
                rtt["python"] += python_round(lib, size, a.warmup, a.count)
            row = {"payload_bytes": size}
            for client, v in rtt.items():
                row[client] = {"p50_us": round(percentile(v, 0.5), 1),
                               "p99_us": round(percentile(v, 0.99), 1),
                               "mean_us": round(statistics.fmean(v), 1), "n": len(v)}
            row["python_over_rust_p50"] = round(row["python"]["p50_us"] / row["rust"]["p50_us"], 2)
            row["python_over_rust_p99"] = round(row["python"]["p99_us"] / row["rust"]["p99_us"], 2)
            results.append(row)
            print(f"{size:>8} B  rust p50 {row['rust']['p50_us']:>8} us  p99 {row['rust']['p99_us']:>8} us"
                  f"  | python p50 {row['python']['p50_us']:>8} us  p99 {row['python']['p99_us']:>8} us"
                  f"  | python/rust p50 {row['python_over_rust_p50']}x  p99 {row['python_over_rust_p99']}x")
    summary = {"python": sys.version.split()[0], "rounds": a.rounds, "count": a.count,
               "warmup": a.warmup, "results": results}
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
