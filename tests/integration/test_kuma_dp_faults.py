"""kuma-dp faced with bad input and faults: each has a clear message and a `STATUS=` line, and kuma-dp either
recovers or exits non-zero (2: fix the input; 1: a refusal or a failure systemd's restart may cure)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.envoy.binary import find_envoy, parse_envoy_version
from controlplane.tls import ensure_cp_tls
from tests.apps.runner import App
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.test_kuma_dp_support import (
    DpMesh,
    DpProcess,
    dataplane_doc,
    dp_factory,  # noqa: F401  (fixture)
    eventually,
    get,
    http,
    pid_gone,
)
from tests.ports import free_port

NO_DAC_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                   "--inh-caps", "-dac_override,-dac_read_search", "--"]
VALID = dataplane_doc("web-1", "web", app_port=18080, inbound_port=18081)


@pytest.fixture
def mesh(cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
         dp_factory: Callable[..., DpProcess]) -> DpMesh:  # noqa: F811
    return DpMesh(cp_factory(KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1"), app_factory, dp_factory)


@pytest.fixture
def canary() -> Iterator[socket.socket]:
    """A listener standing in for the control plane: a test asserts nobody connected to it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    try:
        yield s
    finally:
        s.close()


def contacted(s: socket.socket) -> bool:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    tls = ensure_cp_tls(tmp_path / "some-cp")
    path = tmp_path / "ca.crt"
    assert tls.ca_pem is not None
    path.write_bytes(tls.ca_pem)
    return path


def run_bad(dp_factory: Callable[..., DpProcess], canary: socket.socket, ca_file: Path, *,  # noqa: F811
            definition: Any = VALID, token: str | None = "a-token", args: list[str] | None = None,
            env: dict[str, str] | None = None, expect: int = 2, wrapper: list[str] | None = None,
            by_worker: bool = False) -> DpProcess:
    """Run kuma-dp against the canary 'control plane'; it must exit `expect` without contacting it, unless the
    fault is one that only the bootstrap worker's full validation finds (`by_worker`): the bootstrap call does
    not wait for its verdict (the RPC has no side effects), so kuma-dp may have connected to the canary, which
    never answers, and the verdict must end the wait."""
    dp = dp_factory(name="web-1", definition=definition, token=token, notify=True, env=env,
                    cp_address=f"https://127.0.0.1:{canary.getsockname()[1]}", ca_file=ca_file, args=args or [],
                    wrapper=wrapper)
    code = dp.wait_exit(30)
    assert code == expect, dp.logs()
    if not by_worker:
        assert not contacted(canary), "kuma-dp called the control plane before checking its input"
    assert dp.notify is not None
    failed = dp.notify.wait_status("failed: ", timeout=5)
    assert dp.notify.values("STOPPING") == ["1"] and dp.notify.values("READY") == []
    assert failed.startswith("failed: ")
    return dp


# --- bad input: exit 2, no control-plane call --------------------------------------------------------------

def test_malformed_dataplane_file(dp_factory: Callable[..., DpProcess], canary: socket.socket,  # noqa: F811
                                  ca_file: Path) -> None:
    dp = run_bad(dp_factory, canary, ca_file, definition="type: Dataplane\nmesh: default\nname: [web-1\n")
    assert "not valid YAML or JSON at line 4, column 1" in dp.logs()
    assert "while parsing a flow sequence at line 3, column 7" in dp.logs()


def test_invalid_dataplane_names_every_bad_field(dp_factory: Callable[..., DpProcess],  # noqa: F811
                                                 canary: socket.socket, ca_file: Path) -> None:
    bad = dataplane_doc("web-1", "web", app_port=18080, inbound_port=99999)
    bad["networking"]["inbound"].append({"port": 18082, "tags": {"kuma.io/protocol": "smtp"}})
    dp = run_bad(dp_factory, canary, ca_file, definition=bad, by_worker=True)
    logs = dp.logs()
    assert "is not a valid Dataplane" in logs
    for path in ("networking.inbound[0].port", "networking.inbound[1].tags", 'tags["kuma.io/protocol"]'):
        assert path in logs, (path, logs)
    unknown = dataplane_doc("web-1", "web", app_port=18080, inbound_port=18081)
    unknown["networking"]["inbund"] = []
    dp = run_bad(dp_factory, canary, ca_file, definition=unknown, by_worker=True)
    assert "networking.inbund: unknown field" in dp.logs()


def test_wrong_type_and_missing_template_variable(dp_factory: Callable[..., DpProcess],  # noqa: F811
                                                  canary: socket.socket, ca_file: Path) -> None:
    dp = run_bad(dp_factory, canary, ca_file, definition={**VALID, "type": "Mesh"})
    assert "type: is 'Mesh'" in dp.logs()
    template = "type: Dataplane\nmesh: default\nname: {{ name }}\nnetworking:\n  address: {{ address }}\n"
    dp = run_bad(dp_factory, canary, ca_file, definition=template, args=["--dataplane-var", "name=web-1"])
    assert "no value for {{ address }} (line 5)" in dp.logs() and "--dataplane-var address=" in dp.logs()


def test_missing_token_file(dp_factory: Callable[..., DpProcess], canary: socket.socket,  # noqa: F811
                            ca_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.token"
    dp = run_bad(dp_factory, canary, ca_file, token=None, args=["--dataplane-token-file", str(missing)])
    assert f"--dataplane-token-file {missing}: no such file" in dp.logs()
    assert "kumactl generate dataplane-token --mesh default --name web-1" in dp.logs()


@pytest.mark.parametrize("problem", ["missing", "garbage", "directory", "unreadable"])
def test_unreadable_ca(dp_factory: Callable[..., DpProcess], canary: socket.socket,  # noqa: F811
                       tmp_path: Path, problem: str) -> None:
    ca = tmp_path / f"ca-{problem}.crt"
    expected = {"missing": "no such file", "garbage": "not a PEM certificate", "directory": "cannot read it",
                "unreadable": "permission denied"}[problem]
    if problem == "garbage":
        ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        expected = "not a usable CA certificate"
    elif problem == "directory":
        ca.mkdir()
    wrapper = None
    if problem == "unreadable":
        ca.write_text("x")
        ca.chmod(0)
        if os.geteuid() == 0:
            # Root reads any file through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: run kuma-dp without them, so the
            # mode-0 file is as unreadable to it as to the packaged unit's user `kuma`.
            wrapper = NO_DAC_OVERRIDE
    dp = run_bad(dp_factory, canary, ca, token="a-token", wrapper=wrapper)
    assert f"--ca-cert-file {ca}: {expected}" in dp.logs(), dp.logs()


@pytest.mark.parametrize("problem", ["missing", "not-executable", "not-envoy"])
def test_envoy_binary_unusable(dp_factory: Callable[..., DpProcess], canary: socket.socket,  # noqa: F811
                               ca_file: Path, tmp_path: Path, problem: str) -> None:
    binary = tmp_path / "envoy"
    if problem == "not-executable":
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o644)
    elif problem == "not-envoy":
        binary.write_text("#!/bin/sh\necho hello\n")
        binary.chmod(0o755)
    dp = run_bad(dp_factory, canary, ca_file, args=["--binary-path", str(binary)])
    expected = {"missing": "does not exist", "not-executable": "is not executable",
                "not-envoy": "cannot parse an Envoy version"}[problem]
    assert expected in dp.logs() and str(binary) in dp.logs()


def test_bad_flag_and_env_values(dp_factory: Callable[..., DpProcess], canary: socket.socket,  # noqa: F811
                                 ca_file: Path) -> None:
    dp = dp_factory(name="web-1", definition=VALID, token="t", ca_file=ca_file,
                    cp_address=f"https://127.0.0.1:{canary.getsockname()[1]}",
                    env={"KUMA_DATAPLANE_DRAIN_TIME": "soon"}, args=["--proxy-type", "gateway"])
    assert dp.wait_exit(20) == 2
    logs = dp.logs()
    assert "$KUMA_DATAPLANE_DRAIN_TIME: 'soon' is not a duration" in logs
    assert "--proxy-type: 'gateway' is not one of dataplane, ingress" in logs
    assert not contacted(canary)


# --- the control plane refuses: exit 1 with its reason --------------------------------------------------------

def test_bad_token_wrong_ca_and_rejected_dataplane(mesh: DpMesh, tmp_path: Path) -> None:
    app = mesh.app_factory("echo_http")
    doc = dataplane_doc("web-1", "web", app_port=app.port, inbound_port=free_port())
    dp = mesh.dp_factory(name="web-1", cp=mesh.cp, definition=doc, token="not-a-token", notify=True)
    assert dp.wait_exit(30) == 1
    assert "the control plane rejected the dataplane token" in dp.logs()
    assert dp.notify is not None and dp.notify.wait_status("failed: the control plane rejected the dataplane token")

    dp = mesh.dp_factory(name="web-1", cp=mesh.cp, definition=doc, token=mesh.token("other"), notify=True)
    assert dp.wait_exit(30) == 1
    assert "the dataplane token may not run this dataplane" in dp.logs()

    other_ca = ensure_cp_tls(tmp_path / "another-cp").ca_pem
    assert other_ca is not None
    (tmp_path / "other-ca.crt").write_bytes(other_ca)
    dp = mesh.dp_factory(name="web-1", cp=mesh.cp, definition=doc, token=mesh.token("web-1"), notify=True,
                         ca_file=tmp_path / "other-ca.crt")
    assert dp.wait_exit(30) == 1
    assert "presented a certificate that the CA in --ca-cert-file" in dp.logs()
    assert "does not trust" in dp.logs()

    dp = mesh.dp_factory(name="web-1", cp=mesh.cp, definition={**doc, "mesh": "nope"}, token=mesh.token("web-1"))
    assert dp.wait_exit(30) == 1
    # Before the token is verified nothing may tell whether mesh nope exists; the token itself says why it fails.
    assert "the token was issued for mesh 'default' but is used in mesh 'nope'" in dp.logs()


# --- the control plane comes and goes -------------------------------------------------------------------------

def restart_cp(cp: CpProcess) -> CpProcess:
    """A control plane on the same work dir (CA, store, signing keys) and the same ports."""
    env = {k: v for k, v in cp.env.items() if k.startswith("KUMA_")}
    return start_cp(cp.work_dir.parent, **env)


def test_cp_down_at_start_retries_with_status_then_starts(mesh: DpMesh) -> None:
    cp = mesh.cp
    token = mesh.token("backend-1")
    app = mesh.app_factory("echo_http", "--name", "backend")
    doc = dataplane_doc("backend-1", "backend", app_port=app.port, inbound_port=free_port())
    cp.stop()
    dp = mesh.dp_factory(name="backend-1", cp=cp, definition=doc, token=token, notify=True,
                         env={"KUMA_CONTROL_PLANE_RETRY_BACKOFF": "200ms"}, args=["--drain-time", "1s"])
    notify = dp.notify
    assert notify is not None
    waiting = notify.wait_status("waiting for the control plane: cannot connect")
    assert "connection refused" in waiting and "next in" in waiting
    eventually(lambda: len([s for s in notify.values("STATUS") if "waiting for" in s]) >= 2,
               message="more than one attempt")
    assert dp.ready_status() == 503 and dp.alive()
    assert notify.values("READY") == []
    again = restart_cp(cp)
    try:
        notify.wait_for("READY", "1", timeout=40)
        dp.wait_ready()
        inbound = doc["networking"]["inbound"][0]["port"]
        eventually(lambda: http(inbound)[0] == 200, message="traffic through the inbound")
        assert dp.stop() == 0
    finally:
        again.stop()


def test_cp_restart_while_running(mesh: DpMesh) -> None:
    mesh.service("backend")
    web = mesh.service("web", outbounds={"backend": 0}, notify=True)
    port = web.outbounds["backend"]
    notify = web.dp.notify
    assert notify is not None
    eventually(lambda: http(port)[0] == 200, message="traffic")
    mesh.cp.stop()
    lost = notify.wait_status("connection to the control plane")
    assert "lost, reconnecting" in lost and "serves with its last config" in lost
    # The dataplane stays ready and keeps serving while the control plane is away.
    assert web.dp.ready_status() == 200
    for _ in range(3):
        status, body = http(port)
        assert status == 200, body
    again = restart_cp(mesh.cp)
    try:
        notify.wait_status("(reconnected)", timeout=60)
        assert web.dp.ready_status() == 200
        # Traffic right after the control plane's restart can see a moment of 503 while both Envoys
        # reconnect and the control plane rebuilds their endpoints: that is the control plane's business.
        eventually(lambda: http(port)[0] == 200, timeout=15, message="traffic after the restart")
        _, metrics = get(web.dp.readiness_url + "/metrics")
        assert "kuma_dp_control_plane_disconnects_total 1.0" in metrics
    finally:
        mesh.dp("web-1").stop()
        mesh.dp("backend-1").stop()
        again.stop()


# --- Envoy misbehaves --------------------------------------------------------------------------------------

def test_envoy_crashing_repeatedly_exits_non_zero(mesh: DpMesh) -> None:
    svc = mesh.service("backend", notify=True, env={"KUMA_DATAPLANE_RUNTIME_ENVOY_MAX_RESTARTS": "2",
                                                    "KUMA_DATAPLANE_RUNTIME_ENVOY_RESTART_BACKOFF": "100ms"})
    dp = svc.dp
    killed: list[int] = []
    done = threading.Event()

    def crash_every_envoy() -> None:
        while not done.is_set() and dp.alive():
            with contextlib.suppress(OSError, ValueError, AssertionError, psutil.Error):
                pid = dp.envoy_pid()
                if pid not in killed and not pid_gone(pid):
                    # SIGKILL, not SIGSEGV: Envoy's SIGSEGV handler symbolises a backtrace before dying, which
                    # can take a minute on a loaded machine (this test once waited 60 s for it).
                    psutil.Process(pid).send_signal(signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    crasher = threading.Thread(target=crash_every_envoy)
    crasher.start()
    try:
        code = dp.wait_exit(60)
    finally:
        done.set()
        crasher.join(5)
    assert code == 1
    assert len(killed) == 3, killed  # the first run and two restarts
    logs = dp.own_logs()
    assert "died 3 times in a row (limit 2): giving up" in logs
    assert dp.notify is not None
    assert "failure 2 of at most 2" in " ".join(dp.notify.values("STATUS"))
    assert dp.notify.wait_status("failed: Envoy killed by SIGKILL")
    assert all(pid_gone(pid) for pid in killed)


def test_a_stopped_envoy_is_found_hung_killed_and_restarted(mesh: DpMesh) -> None:
    """A SIGSTOPped (or deadlocked) Envoy keeps its process and sockets: only its silent admin API shows it."""
    svc = mesh.service("backend", notify=True, env={"KUMA_DATAPLANE_RUNTIME_ENVOY_LIVENESS_TIMEOUT": "1s",
                                                    "KUMA_DATAPLANE_RUNTIME_ENVOY_RESTART_BACKOFF": "100ms"})
    dp = svc.dp
    old = dp.envoy_pid()
    eventually(lambda: dp.ready_status() == 200, message="ready before")
    psutil.Process(old).send_signal(signal.SIGSTOP)
    eventually(lambda: pid_gone(old), timeout=20, message="the stopped Envoy killed")
    new = eventually(lambda: (p := dp.envoy_pid()) != old and p, message="a new Envoy")
    eventually(lambda: dp.ready_status() == 200, timeout=30, message="ready again with the new Envoy")
    assert dp.alive() and psutil.Process(new).ppid() == dp.pid
    logs = dp.own_logs()
    assert "Envoy is hung; killing it" in logs and "has not answered LIVE for 1s" in logs
    assert dp.notify is not None and dp.notify.wait_status("was hung (its admin API has not answered LIVE for 1s)")


def test_an_envoy_that_never_gets_live_is_restarted_then_given_up(mesh: DpMesh, tmp_path: Path) -> None:
    wrapper = tmp_path / "envoy-that-stops-itself"
    envoy = find_envoy()
    wrapper.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && exec {envoy} \"$@\"\n"
                       f"kill -STOP $$\nexec {envoy} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    svc = mesh.service("backend", notify=True, wait=False, args=["--binary-path", str(wrapper)],
                       env={"KUMA_DATAPLANE_RUNTIME_ENVOY_START_TIMEOUT": "1s",
                            "KUMA_DATAPLANE_RUNTIME_ENVOY_MAX_RESTARTS": "1",
                            "KUMA_DATAPLANE_RUNTIME_ENVOY_RESTART_BACKOFF": "100ms"})
    assert svc.dp.wait_exit(30) == 1
    logs = svc.dp.own_logs()
    assert "not live 1s after it started" in logs and "restarting" in logs
    assert "it died 2 times in a row (limit 1): giving up" in logs
    assert svc.dp.notify is not None and svc.dp.notify.wait_status("failed: Envoy hung (not live 1s after it started)")
    assert all(pid_gone(pid) for pid in svc.dp.envoy_pids)


def test_envoy_config_rejected_exits_at_once(mesh: DpMesh, tmp_path: Path) -> None:
    wrapper = tmp_path / "envoy-with-bad-config"
    wrapper.write_text(f"#!/bin/sh\nexec {find_envoy()} \"$@\" --config-yaml '{{\"bogus_field\": 1}}'\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    svc = mesh.service("backend", notify=True, wait=False, args=["--binary-path", str(wrapper)])
    code = svc.dp.wait_exit(30)
    assert code == 1
    logs = svc.dp.own_logs()
    assert "Envoy rejected its configuration (exited with status 1)" in logs and "bogus_field" in logs
    assert "restarting" not in logs  # the same bootstrap would be rejected again: no restart loop
    assert svc.dp.notify is not None and svc.dp.notify.wait_status("failed: Envoy rejected its configuration")


def test_envoy_version_is_asked_once_per_binary_file(mesh: DpMesh, tmp_path: Path) -> None:
    """The second kuma-dp with the same Envoy binary (and cache) does not run `envoy --version`; another binary
    file (an upgrade) is asked again."""
    calls = tmp_path / "version-calls"
    wrapper = tmp_path / "envoy-counting-version"
    envoy = find_envoy()
    wrapper.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && echo x >> {calls}\nexec {envoy} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    cache = tmp_path / "cache"
    env = {"CACHE_DIRECTORY": str(cache)}
    first = mesh.service("backend", args=["--binary-path", str(wrapper)], env=env)
    second = mesh.service("backend", name="backend-2", args=["--binary-path", str(wrapper)], env=env)
    assert calls.read_text().count("x") == 1
    # Both sent the same version in their bootstrap requests (kuma-dp's "starting" line names it).
    version = parse_envoy_version(subprocess.run([envoy, "--version"], capture_output=True, text=True).stdout)
    assert all(f"{wrapper} {version}" in svc.dp.own_logs() for svc in (first, second))
    assert first.dp.alive() and second.dp.alive()
    wrapper.write_text(wrapper.read_text() + "# rebuilt\n")  # another file now: asked again
    mesh.service("backend", name="backend-3", args=["--binary-path", str(wrapper)], env=env)
    assert calls.read_text().count("x") == 2
