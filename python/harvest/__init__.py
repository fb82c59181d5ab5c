"""harvest's Python client: leases on idle cores of an HPC cluster, and C-ABI functions run there.

    import harvest

    with harvest.Lease(lib="./libf.so", cores=2, mem="256M", lifetime="10m") as lease:
        out = lease.invoke("square", b"\\x03")
        futures = [lease.submit("square", bytes([i])) for i in range(100)]
        outputs = list(lease.map("square", (bytes([i]) for i in range(1000))))

    with harvest.MemoryLease(size="1G", lifetime="10m") as region:
        region.write(0, b"hello")
        assert region.read(0, 5) == b"hello"

See docs/python.md.
"""

from ._lease import Lease, MemoryLease
from .errors import (
    AuthError,
    ExecutorUnreachable,
    FunctionCrashed,
    FunctionError,
    FunctionOutOfMemory,
    FunctionTimeout,
    HarvestError,
    LeaseRevoked,
    LocalError,
    NoResources,
    NoSuchFunction,
    OutputTooLarge,
    Refused,
    SchedulerUnreachable,
)

__all__ = [
    "Lease",
    "MemoryLease",
    "HarvestError",
    "LocalError",
    "SchedulerUnreachable",
    "AuthError",
    "NoResources",
    "Refused",
    "ExecutorUnreachable",
    "FunctionError",
    "FunctionCrashed",
    "FunctionTimeout",
    "FunctionOutOfMemory",
    "NoSuchFunction",
    "OutputTooLarge",
    "LeaseRevoked",
]
