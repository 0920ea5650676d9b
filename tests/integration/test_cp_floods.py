"""A real kuma-cp held to 1024 open files (soft = hard, so raising the limit cannot help) under 2,000 idle
connections to its public ports keeps its localhost listeners, kumactl and new dataplanes working, keeps its
log small, and closes the idle connections itself.

The flood comes from 127.0.0.2 and the test's own clients from 127.0.0.1 (both loopback): the caps per source
address then show both sides, the flood refused beyond its share and the legit clients unaffected.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.netguard import ConnectionBudget
from tests.apps.runner import App
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.test_kuma_dp_support import DpMesh, DpProcess, dp_factory  # noqa: F401  (fixture)
from tests.integration.test_kuma_dp_support import eventually as eventually_dp

NOFILE = 1024
FLOOD_SOURCE = "127.0.0.2"
FLOOD_PER_PORT = 1000
HTTPS_HANDSHAKE_TIMEOUT = 20  # seconds: long enough for the checks made while the flood is held
DP_HANDSHAKE_TIMEOUT = 5
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def room_for_the_flood() -> Iterator[None]:
    """The test itself holds 2,000 sockets: raise its own soft limit (a shell's 1024 is too few) for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * FLOOD_PER_PORT + 1024
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.fail(f"the test needs {need} open files and its hard limit is {hard}: raise it (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_idle(port: int, count: int, source: str) -> list[socket.socket]:
    """`count` TCP connections from `source` that never send a byte; returns those the server took (connected,
    or already reset by a server that accepted and refused it)."""
    pending: dict[int, socket.socket] = {}
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((source, 0))
        rc = s.connect_ex(("127.0.0.1", port))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            continue
        pending[s.fileno()] = s
    connected: list[socket.socket] = []
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for fd, _ev in poller.poll(1000):
            s = pending.pop(fd)
            poller.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (0, errno.ECONNRESET):
                connected.append(s)
            else:
                s.close()
    for s in pending.values():
        s.close()
    return connected


def still_open(socks: list[socket.socket]) -> int:
    """How many of these silent connections the server still holds (a closed or reset one is readable)."""
    poller = select.poll()
    for s in socks:
        poller.register(s.fileno(), select.POLLIN | select.POLLRDHUP)
    closed = {fd for fd, _ev in poller.poll(0)}
    return sum(1 for s in socks if s.fileno() not in closed)


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def get_status(url: str, context: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


def metric(cp: CpProcess, series: str) -> float | None:
    with urllib.request.urlopen(f"{cp.diagnostics_url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return None


def kumactl(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "KUMACTL_"))}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "controlplane.kumactl.main", "--config-file",
                           str(home / "kumactl.yaml"), *args], capture_output=True, text=True, timeout=60, env=env,
                          cwd=home)


def test_2000_idle_connections_on_the_public_ports_leave_kuma_cp_serving(
        tmp_path: Path, app_factory: Callable[..., App], dp_factory: Callable[..., DpProcess]) -> None:  # noqa: F811
    budget = ConnectionBudget.from_limit(NOFILE)
    https_per_source = ConnectionBudget.per_source(budget.https_api)
    with start_cp(tmp_path / "cp", nofile=NOFILE, KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1",
                  KUMA_API_SERVER_HTTPS_HANDSHAKE_TIMEOUT=str(HTTPS_HANDSHAKE_TIMEOUT),
                  KUMA_DP_SERVER_HANDSHAKE_TIMEOUT=str(DP_HANDSHAKE_TIMEOUT)) as cp:
        assert "the open files limit is low" in cp.logs(), cp.logs()
        assert "the connection caps add up" not in cp.logs()
        lines_before = len(cp.logs(tail=100_000).splitlines())

        https = open_idle(cp.ports["KUMA_API_SERVER_HTTPS_PORT"], FLOOD_PER_PORT, FLOOD_SOURCE)
        dp = open_idle(cp.ports["KUMA_DP_SERVER_PORT"], FLOOD_PER_PORT, FLOOD_SOURCE)
        try:
            # Every connection reached the server; it kept only its caps' worth.
            assert len(https) + len(dp) == 2 * FLOOD_PER_PORT
            eventually_dp(lambda: still_open(https) <= https_per_source,
                          message=f"HTTPS API holds at most {https_per_source} connections from one address")
            eventually_dp(lambda: still_open(dp) <= budget.dp_server,
                          message=f"dp-server holds at most {budget.dp_server} connections")
            assert open_files(cp.pid) < NOFILE - budget.reserved // 2, open_files(cp.pid)
            refused = 'kuma_cp_connections_refused_total{cap="source",listener="https-api"}'
            eventually_dp(lambda: metric(cp, refused) == FLOOD_PER_PORT - https_per_source,
                          message="every connection beyond the address's cap counted as refused")

            # The localhost listeners have their own descriptors: diagnostics, the HTTP API, kumactl on it.
            assert get_status(f"{cp.diagnostics_url}/ready") == 200
            assert get_status(f"{cp.http_url}/meshes/default") == 200
            # The HTTPS API still answers another address (401: no user token; it served the request).
            tls = ssl.create_default_context(cafile=str(cp.ca_file))
            assert get_status(f"{cp.https_url}/meshes", tls) == 401
            home = tmp_path / "kumactl"
            home.mkdir()
            added = kumactl("config", "control-planes", "add", "--name", "local", "--address", cp.http_url,
                            home=home)
            assert added.returncode == 0, added.stderr
            meshes = kumactl("get", "meshes", home=home)
            assert meshes.returncode == 0 and "default" in meshes.stdout, (meshes.stdout, meshes.stderr)

            # A new dataplane (kuma-dp + Envoy) starts and gets its config: the dp-server's cap sent the flood
            # beyond it away at once, and the handshake timeout frees the rest.
            mesh = DpMesh(cp, app_factory, dp_factory)
            backend = mesh.service("backend", args=["--envoy-log-level", "error"], wait=False)
            # kuma-dp retries with a doubling backoff (up to 15 s) while the flood holds the dp-server's cap.
            backend.dp.wait_ready(timeout=DP_HANDSHAKE_TIMEOUT + 60)

            # The server closes every idle connection itself once the handshake timeouts pass.
            eventually_dp(lambda: still_open(dp) == 0, timeout=DP_HANDSHAKE_TIMEOUT + 30,
                          message="dp-server closed the idle connections")
            eventually_dp(lambda: still_open(https) == 0, timeout=HTTPS_HANDSHAKE_TIMEOUT + 30,
                          message="HTTPS API closed the idle connections")
            assert get_status(f"{cp.diagnostics_url}/ready") == 200
        finally:
            for s in https + dp:
                s.close()

        log = cp.logs(tail=100_000)
        flood_lines = log.splitlines()[lines_before:]
        assert "Traceback" not in log, log[-5000:]
        assert "socket.accept() out of system resource" not in log
        refusals = [line for line in flood_lines if "connection refused" in line]
        # The refusals all come at the flood's start: one line (then a count per 10 s), not one per connection.
        assert 1 <= len(refusals) <= 3, refusals
        assert len(flood_lines) < 300, "\n".join(flood_lines[-50:])



def test_out_of_descriptors_is_a_few_log_lines_and_kuma_cp_recovers(tmp_path: Path) -> None:
    """Caps set above what the limit allows (a misconfiguration): the process does run out of descriptors,
    and then says so once per listener per interval (grpc's own listener once a second) instead of a
    traceback per failed accept, and serves again once the handshake timeouts free the descriptors."""
    timeout = 5
    with start_cp(tmp_path / "cp", nofile=NOFILE, KUMA_DP_SERVER_MAX_CONNECTIONS="5000",
                  KUMA_API_SERVER_HTTPS_MAX_CONNECTIONS="5000",
                  KUMA_API_SERVER_HTTPS_MAX_CONNECTIONS_PER_SOURCE="5000",
                  KUMA_API_SERVER_HTTPS_HANDSHAKE_TIMEOUT=str(timeout),
                  KUMA_DP_SERVER_HANDSHAKE_TIMEOUT=str(timeout)) as cp:
        assert "the connection caps add up to more than the open files limit leaves" in cp.logs()
        # The leader creates the default mesh just after /ready: let that finish before the descriptors run out.
        eventually_dp(lambda: get_status(f"{cp.http_url}/meshes/default") == 200, message="the default mesh")
        lines_before = len(cp.logs(tail=100_000).splitlines())
        started = time.monotonic()
        https = open_idle(cp.ports["KUMA_API_SERVER_HTTPS_PORT"], FLOOD_PER_PORT, FLOOD_SOURCE)
        dp = open_idle(cp.ports["KUMA_DP_SERVER_PORT"], FLOOD_PER_PORT, FLOOD_SOURCE)
        try:
            eventually_dp(lambda: "out of file descriptors" in cp.logs(), timeout=30,
                          message="kuma-cp ran out of descriptors")
            eventually_dp(lambda: still_open(https) + still_open(dp) == 0, timeout=timeout + 60,
                          message="the idle connections closed by the server")
            assert get_status(f"{cp.diagnostics_url}/ready") == 200
            assert get_status(f"{cp.http_url}/meshes/default") == 200
        finally:
            for s in https + dp:
                s.close()
        elapsed = time.monotonic() - started
        flood_lines = cp.logs(tail=100_000).splitlines()[lines_before:]
        assert "Traceback" not in "\n".join(flood_lines), "\n".join(flood_lines[-50:])
        ours = [line for line in flood_lines if "out of file descriptors" in line]
        # One line per listener (HTTPS, HTTP, diagnostics, DNS) per 10 s.
        assert 1 <= len(ours) <= 4 * (elapsed // 10 + 1), ours
        assert len(flood_lines) <= 20 + 2 * elapsed, "\n".join(flood_lines[-50:])
