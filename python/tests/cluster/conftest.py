"""Fixtures for the Python client's tests against the real local cluster (deploy/local-cluster).

pytest runs as root (scripts/test-all's cluster stage); every test body that uses harvest runs in
a child forked from pytest that drops to an unprivileged test user first (harvestd runs functions
only as regular accounts, and who a caller is comes from munge, i.e. the process's uid), as the
Rust system tests run the CLI with runuser. Results and exceptions come back pickled over a pipe.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[3]
FUNCTIONS_C = REPO / "system-tests" / "src" / "functions.c"

#: The test users (regular accounts, created when missing, as system-tests' fixtures do).
USER = "harvest-user"
OTHER_USER = "harvest-victim"


def _cluster_env() -> dict[str, str]:
    out = subprocess.run(
        [str(REPO / "deploy" / "local-cluster"), "env"], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.fail(
            "the local cluster is not up (run `deploy/local-cluster up --nodes 2`): " + out.stderr,
            pytrace=False,
        )
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        if not line.startswith("export ") or "=" not in line:
            continue
        key, value = line[len("export ") :].split("=", 1)
        if key == "PATH":
            # export PATH='dir':"$PATH"
            value = value.split(":", 1)[0].strip("'") + ":" + os.environ.get("PATH", "")
        else:
            value = value.strip("'")
        env[key] = value
    if "HARVEST_SCHEDULER" not in env:
        pytest.fail("`deploy/local-cluster env` names no HARVEST_SCHEDULER", pytrace=False)
    return env


@pytest.fixture(scope="session", autouse=True)
def cluster() -> dict[str, str]:
    """The cluster's environment (SLURM_CONF, HARVEST_SCHEDULER, HARVEST_CA, PATH), set for
    every test and the children it forks."""
    env = _cluster_env()
    os.environ.update(env)
    return env


def regular_user(name: str) -> tuple[int, int]:
    """A regular user's uid and gid, created (no home, /bin/sh) when missing."""
    probe = subprocess.run(["id", "-u", name], capture_output=True, text=True)
    if probe.returncode != 0:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True)
    uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout)
    gid = int(subprocess.run(["id", "-g", name], capture_output=True, text=True, check=True).stdout)
    return uid, gid


@pytest.fixture(scope="session")
def library() -> str:
    """system-tests' C test functions (echo, crash, spin, hog, whereami, burn, ...) built into a
    shared library every user can read."""
    d = tempfile.mkdtemp(prefix="harvest-pytest-")
    os.chmod(d, 0o755)
    lib = os.path.join(d, "libfunctions.so")
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-O1", "-o", lib, str(FUNCTIONS_C)], check=True
    )
    os.chmod(lib, 0o644)
    return lib


class Child:
    """A test body running in a forked child as an unprivileged user."""

    def __init__(self, user: str, fn: Callable[..., Any], *args: Any) -> None:
        uid, gid = regular_user(user)
        self.user = user
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop privileges for good, run, report
            os.close(r)
            status = 0
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                os.environ["HOME"] = "/"
                os.environ["USER"] = user
                os.chdir("/tmp")
                result: Any = ("ok", fn(*args))
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                result = ("err", e, traceback.format_exc())
            try:
                data = pickle.dumps(result)
            except Exception as e:  # noqa: BLE001
                data = pickle.dumps(("err", RuntimeError(repr(e)), traceback.format_exc()))
                status = 1
            with os.fdopen(w, "wb") as f:
                f.write(data)
            os._exit(status)
        os.close(w)
        self.pid = pid
        self.fd = r

    def result(self, timeout: float = 180) -> Any:
        """The body's return value; its exception re-raised (with the child's traceback)."""
        deadline = time.monotonic() + timeout
        chunks = []
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise TimeoutError(f"the test body as {self.user} ran past {timeout} s")
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self.fd)
        os.waitpid(self.pid, 0)
        if not chunks:
            raise RuntimeError(f"the test body as {self.user} died without a result")
        result = pickle.loads(b"".join(chunks))
        if result[0] == "ok":
            return result[1]
        exc, tb = result[1], result[2]
        raise AssertionError(f"as {self.user}:\n{tb}") from exc


def run_as(user: str, fn: Callable[..., Any], *args: Any, timeout: float = 180) -> Any:
    """Runs ``fn(*args)`` as ``user`` in a forked child and returns what it returns."""
    return Child(user, fn, *args).result(timeout)
