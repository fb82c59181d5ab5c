"""harvest.errors against the CLI's exit codes (harvest_client::cli::exit::code, read from the
extension), and failures that need no cluster raised as the right exception."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import harvest
import pytest
from harvest import _native, errors

#: Exit codes of the CLI that no exception stands for: a bad command line is the CLI's own.
NOT_EXCEPTIONS = {"usage"}


def _classes() -> list[type[harvest.HarvestError]]:
    return [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, harvest.HarvestError) and c is not harvest.HarvestError
    ]


def test_every_exit_code_category_of_the_cli_has_its_exception() -> None:
    codes = _native.exit_codes()
    by_category = {c.category: c for c in _classes()}
    for category, code in codes.items():
        if category in NOT_EXCEPTIONS:
            continue
        assert category in by_category, f"no exception for the CLI's '{category}' ({code})"
        assert by_category[category].exit_code == code, (category, by_category[category], code)
        assert errors.from_code(code, "m").__class__ is by_category[category]
    # And no exception claims a category the CLI does not have.
    assert set(by_category) <= set(codes), set(by_category) - set(codes)
    # Every class is exported from harvest.
    for c in by_category.values():
        assert getattr(harvest, c.__name__) is c


def test_exceptions_carry_the_message_and_form_a_hierarchy() -> None:
    e = errors.from_code(_native.exit_codes()["crashed"], "function 'f' crashed: SIGSEGV")
    assert isinstance(e, harvest.FunctionCrashed)
    assert isinstance(e, harvest.FunctionError) and isinstance(e, harvest.HarvestError)
    assert str(e) == e.message == "function 'f' crashed: SIGSEGV"
    for c in (harvest.FunctionTimeout, harvest.FunctionOutOfMemory, harvest.NoSuchFunction,
              harvest.OutputTooLarge):
        assert issubclass(c, harvest.FunctionError)
    for c in (harvest.LeaseRevoked, harvest.NoResources, harvest.LocalError, harvest.AuthError):
        assert not issubclass(c, harvest.FunctionError)
    # A code the client does not know is still a HarvestError, not a crash of the binding.
    unknown = errors.from_code(200, "new kind of failure")
    assert type(unknown) is harvest.HarvestError and str(unknown) == "new kind of failure"


def test_an_unreadable_library_is_a_local_error_naming_it(tmp_path) -> None:
    missing = tmp_path / "no-such-lib.so"
    with pytest.raises(harvest.LocalError) as e:
        harvest.Lease(lib=missing, scheduler="127.0.0.1:1")
    assert str(missing) in str(e.value)
    assert e.value.exit_code == 1


def _lease_in_child(env: dict[str, str], lib: str) -> subprocess.CompletedProcess:
    """Lease() in a fresh interpreter with exactly ``env``; prints the exception's class and
    code, then its message."""
    code = textwrap.dedent(
        f"""
        import harvest
        try:
            harvest.Lease(lib={lib!r}, cores=1, mem="64M")
        except harvest.HarvestError as e:
            print(type(e).__name__, e.exit_code)
            print(e)
        else:
            print("acquired")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HARVEST_")}


def test_no_scheduler_configured_is_scheduler_unreachable(tmp_path) -> None:
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF not really")
    config = tmp_path / "client.toml"
    config.write_text("")  # a configuration file that names no scheduler
    env = _base_env() | {"HARVEST_CONFIG": str(config)}
    out = _lease_in_child(env, str(lib))
    assert out.returncode == 0, out.stderr
    first, message = out.stdout.split("\n", 1)
    assert first == "SchedulerUnreachable 3", out.stdout
    assert "HARVEST_SCHEDULER" in message, message


def test_a_scheduler_that_does_not_answer_is_scheduler_unreachable(tmp_path) -> None:
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF not really")
    config = tmp_path / "client.toml"
    config.write_text("")
    # A port nothing listens on: bound, never listened to, so the connection is refused.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        env = _base_env() | {"HARVEST_CONFIG": str(config), "HARVEST_SCHEDULER": f"127.0.0.1:{port}"}
        out = _lease_in_child(env, str(lib))
    finally:
        s.close()
    assert out.returncode == 0, out.stderr
    first, message = out.stdout.split("\n", 1)
    assert first == "SchedulerUnreachable 3", out.stdout
    assert f"127.0.0.1:{port}" in message, message
