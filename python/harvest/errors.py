"""harvest's exceptions: one class per category of the ``harvest`` CLI's exit codes (docs/cli.md).

Every exception is a :class:`HarvestError`; ``exit_code`` is the code the CLI exits with for the
same failure, ``category`` its name. Catch a class to handle a category::

    try:
        lease.invoke("f", b"...")
    except harvest.FunctionCrashed as e:   # the function itself died (a signal, exit())
        ...
    except harvest.LeaseRevoked as e:      # a batch job took the lease back and failover failed
        ...
"""

from __future__ import annotations


class HarvestError(Exception):
    """A harvest operation failed; the subclass says which kind of failure."""

    exit_code: int = 16
    category: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LocalError(HarvestError):
    """A local problem: unreadable library, bad configuration, a released lease."""

    exit_code = 1
    category = "local"


class SchedulerUnreachable(HarvestError):
    """No scheduler configured ($HARVEST_SCHEDULER), or it cannot be reached."""

    exit_code = 3
    category = "unreachable"


class AuthError(HarvestError):
    """No munge credential could be made, the scheduler refused it, or the executor refused the
    lease secret (the lease is not the caller's)."""

    exit_code = 4
    category = "auth"


class NoResources(HarvestError):
    """No node has the idle cores, memory or GPUs asked for."""

    exit_code = 5
    category = "no_resources"


class Refused(HarvestError):
    """The scheduler refused otherwise (bad request, cap reached, executor did not start)."""

    exit_code = 6
    category = "refused"


class ExecutorUnreachable(HarvestError):
    """The lease's executor could not be reached or stopped answering."""

    exit_code = 7
    category = "executor"


class FunctionError(HarvestError):
    """The function ran and failed (the base of crash, timeout, OOM and the others below)."""

    exit_code = 16
    category = "remote"


class FunctionCrashed(FunctionError):
    """The function crashed (a signal such as SIGSEGV, or it called exit())."""

    exit_code = 10
    category = "crashed"


class FunctionTimeout(FunctionError):
    """The function ran past its timeout and was killed."""

    exit_code = 11
    category = "timeout"


class FunctionOutOfMemory(FunctionError):
    """The function exceeded the lease's memory and the kernel killed it."""

    exit_code = 12
    category = "out_of_memory"


class NoSuchFunction(FunctionError):
    """The library has no function of that name."""

    exit_code = 13
    category = "no_such_function"


class OutputTooLarge(FunctionError):
    """The function's output did not fit its buffer."""

    exit_code = 14
    category = "output_too_large"


class LeaseRevoked(HarvestError):
    """The lease was revoked while the function ran (a batch job took its resources, its node
    went down, ...) and failover, if on, found no new lease in time."""

    exit_code = 15
    category = "revoked"


_BY_CODE: dict[int, type[HarvestError]] = {
    c.exit_code: c
    for c in (
        LocalError,
        SchedulerUnreachable,
        AuthError,
        NoResources,
        Refused,
        ExecutorUnreachable,
        FunctionCrashed,
        FunctionTimeout,
        FunctionOutOfMemory,
        NoSuchFunction,
        OutputTooLarge,
        LeaseRevoked,
        FunctionError,
    )
}


def from_code(code: int, message: str) -> HarvestError:
    """The exception for a failure the CLI would exit with ``code`` for."""
    return _BY_CODE.get(code, HarvestError)(message)


__all__ = [c.__name__ for c in _BY_CODE.values()] + ["HarvestError", "from_code"]
