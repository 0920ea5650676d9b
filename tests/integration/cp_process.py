"""A real `kuma-cp run` process for integration tests (a pytest plugin: load it with `pytest_plugins`).

    start_cp(tmp_path, **env) -> CpProcess     start one (KUMA_* overrides as keyword arguments); the caller
                                               stops it (`cp.stop()`, or use it as a context manager)
    cp_process   (fixture, session scope)      one shared sqlite-backed control plane for the session
    cp_factory   (fixture, function scope)     `cp_factory(**env)` starts private ones, all stopped afterwards

A `CpProcess` has: `http_url`, `https_url`, `diagnostics_url`, `work_dir`, `ca_file` (`<work_dir>/tls/ca.crt`),
`env` (the full environment it runs with), `ports`, `pid`, `log_file`, `stop()` and `logs()`.

Every server listens on its own free loopback port; the process runs in its own session and is stopped by
its PID only (SIGTERM, then SIGKILL after a timeout), and `stop()` checks that it exited.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ports import claim_vip_cidr, free_port, give_back_vip_cidr, take_vip_cidr
from tests.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

PORT_VARS = (
    "KUMA_API_SERVER_HTTP_PORT",
    "KUMA_API_SERVER_HTTPS_PORT",
    "KUMA_DP_SERVER_PORT",
    "KUMA_DIAGNOSTICS_SERVER_PORT",
    "KUMA_DNS_SERVER_PORT",
    "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT",
    "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT",
)


class CpStartError(RuntimeError):
    pass


@dataclass
class CpProcess:
    work_dir: Path
    env: dict[str, str]
    ports: dict[str, int]
    proc: subprocess.Popen[bytes]
    log_file: Path
    _stopped: bool = field(default=False, repr=False)
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['KUMA_API_SERVER_HTTP_PORT']}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['KUMA_API_SERVER_HTTPS_PORT']}"

    @property
    def diagnostics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['KUMA_DIAGNOSTICS_SERVER_PORT']}"

    @property
    def ca_file(self) -> Path:
        return self.work_dir / "tls" / "ca.crt"

    def logs(self, tail: int = 60) -> str:
        """The last lines of the process's combined stdout/stderr."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-tail:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM by PID, SIGKILL after `timeout`; returns the exit status. Safe to call twice."""
        if self._stopped:
            assert self.returncode is not None
            return self.returncode
        self._stopped = True
        self.returncode = stop_process(self.proc, timeout)
        give_back_vip_cidr(self.env.get("KUMA_DNS_SERVER_CIDR", ""))
        return self.returncode

    def __enter__(self) -> CpProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _nofile_limit(nofile: int | None) -> Callable[[], None] | None:
    if nofile is None:
        return None
    limit = nofile

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def start_cp(tmp_path: Path, *, timeout: float = START_TIMEOUT, nofile: int | None = None, **env: str) -> CpProcess:
    """Start `python -m controlplane.cli run` with its state in `tmp_path` and wait until /ready answers 200.

    Keyword arguments are KUMA_* settings that override the defaults chosen here (sqlite store, free ports,
    HTTPS on 127.0.0.1). `nofile` sets both the soft and hard RLIMIT_NOFILE of the process (so kuma-cp cannot
    raise it). On failure the process is stopped and the error carries its log.
    """
    tmp_path = Path(tmp_path)
    work_dir = tmp_path / "kuma-cp"
    work_dir.mkdir(parents=True, exist_ok=True)
    taken: set[int] = set()
    ports = {name: free_port(taken=taken) for name in PORT_VARS}
    full_env = dict(os.environ)
    full_env = {k: v for k, v in full_env.items() if not k.startswith("KUMA_")}
    full_env.update({
        "HOME": str(tmp_path),
        "KUMA_GENERAL_WORK_DIR": str(work_dir),
        "KUMA_STORE_TYPE": "sqlite",
        "KUMA_API_SERVER_HTTP_INTERFACE": "127.0.0.1",
        "KUMA_API_SERVER_HTTPS_INTERFACE": "127.0.0.1",
        "KUMA_DIAGNOSTICS_INTERFACE": "127.0.0.1",
        "KUMA_MONITORING_ASSIGNMENT_SERVER_INTERFACE": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
        **{name: str(port) for name, port in ports.items()},
    })
    full_env.update({k: str(v) for k, v in env.items()})
    # Its own VIP range: proxies bind VIP:80, which another test session's control plane may also hand out.
    if "KUMA_DNS_SERVER_CIDR" in env:
        claim_vip_cidr(full_env["KUMA_DNS_SERVER_CIDR"])
    elif full_env.get("KUMA_STORE_TYPE") == "postgres":  # instances of one database share their VIPs
        full_env["KUMA_DNS_SERVER_CIDR"] = take_vip_cidr(store="/".join(full_env.get(f"KUMA_STORE_POSTGRES_{k}", "")
                                                                        for k in ("HOST", "PORT", "DB_NAME")))
    else:
        full_env["KUMA_DNS_SERVER_CIDR"] = take_vip_cidr()
    for name in PORT_VARS:
        ports[name] = int(full_env[name])
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p)
    log_file = tmp_path / "kuma-cp.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "run"], env=full_env, cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_nofile_limit(nofile))
    cp = CpProcess(work_dir=work_dir, env=full_env, ports=ports, proc=proc, log_file=log_file)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise CpStartError(f"kuma-cp exited with status {proc.returncode} before it was ready:\n"
                                   f"{cp.logs()}")
            if _ready(f"{cp.diagnostics_url}/ready"):
                return cp
            if time.monotonic() > deadline:
                raise CpStartError(f"kuma-cp (pid {proc.pid}) was not ready within {timeout:g}s "
                                   f"({cp.diagnostics_url}/ready):\n{cp.logs()}")
            time.sleep(0.1)
    except BaseException:
        cp.stop()
        raise


@pytest.fixture(scope="session")
def cp_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CpProcess]:
    """One control plane for the whole session (sqlite store)."""
    try:
        cp = start_cp(tmp_path_factory.mktemp("cp"))
    except CpStartError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield cp
    finally:
        status = cp.stop()
        # SIGTERM is the normal way to stop it: 0 (or -SIGTERM if it did not handle the signal).
        assert status in (0, -signal.SIGTERM), f"kuma-cp exited with {status}:\n{cp.logs()}"


@pytest.fixture
def cp_factory(tmp_path: Path) -> Iterator[Callable[..., CpProcess]]:
    """`cp_factory(**KUMA_env)`: a private control plane per call, all stopped at the end of the test."""
    started: list[CpProcess] = []

    def factory(**env: str) -> CpProcess:
        try:
            # nofile named, so that env (KUMA_* strings only) is not read as a candidate for it
            cp = start_cp(tmp_path / f"cp{len(started)}", timeout=START_TIMEOUT, nofile=None, **env)
        except CpStartError as e:
            pytest.fail(str(e), pytrace=False)
        started.append(cp)
        return cp

    try:
        yield factory
    finally:
        for cp in started:
            cp.stop()


@pytest.fixture
def started() -> Iterator[list[CpProcess]]:
    """Control planes a test started itself with start_cp (a state directory it restarts from, chosen ports):
    stopped at the end of the test."""
    cps: list[CpProcess] = []
    yield cps
    for cp in cps:
        cp.stop()
