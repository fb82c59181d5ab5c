"""Squares numbers on idle cores of the cluster with harvest's Python client.

    eval "$(deploy/local-cluster env)"      # HARVEST_SCHEDULER, HARVEST_CA (docs/python.md)
    python3 python/examples/squares.py 1000

Builds a C function (cc), leases 2 cores and 256 MiB for at most 10 minutes, invokes the function
once, then on 1,000 inputs with map() and submit(), and shows what a crash looks like.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile

import harvest

# The function ABI: uint32_t f(void *in, uint32_t in_len, void *out), returning the output's length.
SOURCE = r"""
#include <stdint.h>
#include <string.h>
uint32_t square(void *in, uint32_t len, void *out) {
    double x = 0;
    memcpy(&x, in, len < sizeof x ? len : sizeof x);
    x *= x;
    memcpy(out, &x, sizeof x);
    return sizeof x;
}
uint32_t crash(void *in, uint32_t len, void *out) { return *(volatile uint32_t *)0; }
"""


def build(directory: str) -> str:
    src = os.path.join(directory, "square.c")
    lib = os.path.join(directory, "libsquare.so")
    with open(src, "w") as f:
        f.write(SOURCE)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", lib, src], check=True)
    return lib


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    pack, unpack = struct.Struct("d").pack, struct.Struct("d").unpack
    with tempfile.TemporaryDirectory() as d:
        lib = build(d)
        with harvest.Lease(lib=lib, cores=2, mem="256M", lifetime="10m") as lease:
            print(f"lease {lease.id} on {lease.node}, {lease.connections} connections")
            print("3.0 squared:", unpack(lease.invoke("square", pack(3.0)))[0])
            mapped = sum(unpack(out)[0] for out in lease.map("square", (pack(i) for i in range(n))))
            futures = [lease.submit("square", pack(i)) for i in range(n)]
            submitted = sum(unpack(f.result())[0] for f in futures)
            print(f"sum of squares below {n}: {mapped:.0f} (map), {submitted:.0f} (submit)")
            try:
                lease.invoke("crash")
            except harvest.FunctionCrashed as e:
                print(f"crash: {type(e).__name__} (the CLI's exit code {e.exit_code}): {e}")


if __name__ == "__main__":
    main()
