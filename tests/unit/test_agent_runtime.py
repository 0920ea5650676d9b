"""kuma-dp's small runtime pieces: sd_notify, port choice, the runtime directory, child processes, the admin
client and the loopback HTTP server, the supervisor's judgement of an Envoy exit."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent import ports, rundir
from agent.config import PortRange
from agent.envoy.admin import AdminClient, AdminError
from agent.httpd import listen, serve
from agent.notify import Notifier, child_environment
from agent.proc import process_is, spawn
from agent.readiness import DpState, envoy_hung
from agent.supervisor import EnvoyOptions, describe_exit, rejection_reason

# --- sd_notify ---------------------------------------------------------------------------------------------


def _receiver(tmp_path: Path, abstract: bool) -> tuple[socket.socket, str]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"kuma-dp-unit-{os.getpid()}-{time.monotonic_ns()}"
        s.bind("\0" + name)
        address = "@" + name
    else:
        path = tmp_path / "notify.sock"
        s.bind(str(path))
        address = str(path)
    s.settimeout(2)
    return s, address


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_messages(tmp_path: Path, abstract: bool) -> None:
    sock, address = _receiver(tmp_path, abstract)
    n = Notifier({"NOTIFY_SOCKET": address})
    assert n.enabled
    n.status("waiting for\nthe control plane")
    assert sock.recv(4096) == b"STATUS=waiting for the control plane"
    n.status("waiting for the control plane")  # unchanged: not resent
    n.ready("ready: Envoy live")
    assert sock.recv(4096) == b"READY=1\nSTATUS=ready: Envoy live"
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.stopping("draining")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"
    n.extend_timeout(1.5)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=1500000"
    n.close()
    sock.close()


def test_notify_outside_systemd_does_nothing() -> None:
    n = Notifier({})
    assert not n.enabled and not n.send("READY=1") and n.watchdog_interval is None


def test_watchdog_interval() -> None:
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval == 1.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 1.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None


def test_child_environment_drops_systemd_variables() -> None:
    env = child_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}


# --- ports ---------------------------------------------------------------------------------------------------

def test_derived_port_is_stable_and_in_range() -> None:
    span = PortRange(20000, 20999)
    a = ports.derived("admin:default/web-1", span)
    assert a == ports.derived("admin:default/web-1", span) and 20000 <= a <= 20999
    assert len({ports.derived(f"admin:default/web-{i}", span) for i in range(20)}) > 15


def test_pick_skips_a_taken_port() -> None:
    span = PortRange(21000, 21999)
    first = ports.pick("k", span)
    with socket.socket() as s:
        s.bind(("127.0.0.1", first))
        s.listen(1)
        assert not ports.is_free(first)
        assert ports.pick("k", span) != first
    assert ports.pick("k", span, avoid={first}) != first


def test_bind_listener_holds_its_port() -> None:
    s = ports.bind_listener("readiness:x", PortRange(26000, 26999))
    try:
        port = s.getsockname()[1]
        assert 26000 <= port <= 26999 and not ports.is_free(port)
    finally:
        s.close()


# --- runtime directory -----------------------------------------------------------------------------------

def test_runtime_dir_private_locked_and_cleaned(tmp_path: Path) -> None:
    rt = rundir.prepare(str(tmp_path / "rt"), "default", "web-1", env={})
    assert oct(rt.path.stat().st_mode & 0o777) == "0o700" and not rt.owned
    f = rt.write_private(rundir.BOOTSTRAP, b"{}")
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    rt.lock("dataplane 'web-1'")
    other = rundir.RuntimeDir(rt.path, owned=False)
    with pytest.raises(rundir.RuntimeDirError, match=f"another kuma-dp \\(pid {os.getpid()}\\)"):
        other.lock("dataplane 'web-1'")
    rt.cleanup()
    assert rt.path.exists() and not f.exists()  # given by the operator: kept, our files removed


def test_runtime_dir_from_systemd_and_mode_fixed(tmp_path: Path) -> None:
    given = tmp_path / "systemd"
    given.mkdir(mode=0o755)
    rt = rundir.prepare(None, "default", "web-1", env={"RUNTIME_DIRECTORY": str(given)})
    assert rt.path == given and oct(given.stat().st_mode & 0o777) == "0o700"


def test_runtime_dir_default_is_per_dataplane(tmp_path: Path) -> None:
    a = rundir.prepare(None, "default", "unit-a-" + str(os.getpid()), env={"XDG_RUNTIME_DIR": str(tmp_path)})
    b = rundir.prepare(None, "default", "unit-b-" + str(os.getpid()), env={"XDG_RUNTIME_DIR": str(tmp_path)})
    try:
        assert a.path != b.path and a.owned and b.path.name.endswith(str(os.getpid()))
    finally:
        a.cleanup()
        b.cleanup()
    assert not a.path.exists() and not b.path.exists()


# --- child processes -------------------------------------------------------------------------------------

def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: SIGKILL the parent (no cleanup code runs) and the child goes too."""
    pid_file = tmp_path / "child.pid"
    root = str(Path(__file__).resolve().parents[2])
    script = (f"import sys, time; sys.path.insert(0, {root!r})\nfrom agent.proc import spawn\n"
              f"c = spawn(['sleep', '60'])\nopen({str(pid_file)!r}, 'w').write(str(c.pid))\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child = int(pid_file.read_text())
        assert psutil.Process(child).ppid() == parent.pid
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while True:
            try:
                if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            assert time.monotonic() < deadline, "child survived its parent"
            time.sleep(0.02)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


async def test_child_wait_terminate_and_process_group() -> None:
    child = spawn(["sleep", "30"])
    assert child.alive() and os.getpgid(child.pid) == child.pid  # its own process group
    assert process_is(child.pid, "sleep") is not None and process_is(child.pid, "envoy") is None
    waiters = [asyncio.create_task(child.wait()) for _ in range(2)]  # several waiters, one pidfd
    code = await child.terminate(timeout=2)
    assert code == -signal.SIGTERM and await asyncio.gather(*waiters) == [code, code]
    child.close()
    stubborn = spawn(["sh", "-c", "trap '' TERM; sleep 30 & wait"])
    await asyncio.sleep(0.2)
    descendants = psutil.Process(stubborn.pid).children(recursive=True)
    assert await stubborn.terminate(timeout=0.3) == -signal.SIGKILL
    assert descendants and all(_gone(p.pid) for p in descendants)  # the whole tree, not just the shell
    stubborn.close()


def _gone(pid: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


# --- admin client and the loopback HTTP server -----------------------------------------------------------------

async def test_httpd_and_admin_client_round_trip() -> None:
    state = DpState()

    async def ready() -> tuple[int, str, bytes]:
        ok, reason = state.ready()
        return (200 if ok else 503), "text/plain", reason.encode()

    async def big() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"x" * 200_000

    sock = listen("127.0.0.1", 0)
    server = await serve(sock, {"/ready": ready, "/big": big})
    client = AdminClient("127.0.0.1", sock.getsockname()[1])
    try:
        r = await client.get("/ready")
        assert (r.status, r.text) == (503, "Envoy is not running")
        state.envoy_started(123, 1)
        state.envoy_live = state.workers_started = True
        assert (await client.get("/ready")).text == "Envoy has not connected to the control plane yet"
        state.connected_generation = 1
        assert (await client.get("/ready?x=1")).status == 200
        state.draining = True
        assert (await client.get("/ready")).status == 503
        assert len((await client.get("/big")).body) == 200_000
        assert (await client.get("/nope")).status == 404
        assert (await client.post("/ready")).status == 405
    finally:
        server.close()
    with pytest.raises(AdminError, match="Envoy admin GET /ready"):
        await AdminClient("127.0.0.1", ports.pick("unused", PortRange(33000, 33999)), timeout=1).get("/ready")


async def test_admin_client_reads_chunked_answers() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = await AdminClient("127.0.0.1", port).get("/stats/prometheus")
        assert (r.status, r.body) == (200, b"hello world")
    finally:
        server.close()


# --- the supervisor's judgement ------------------------------------------------------------------------------

def test_describe_exit() -> None:
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(1) == "exited with status 1"


def test_rejection_reason() -> None:
    tail = ["[2026-01-01][1][info][main] starting",
            "[2026-01-01][1][critical][main] error `Protobuf message (bogus_field)` initializing config 'x'"]
    assert "bogus_field" in (rejection_reason(tail) or "")
    assert rejection_reason(["[c][critical][main] error initializing config: cannot bind '127.0.0.1:9901': "
                             "Address already in use"]) is None
    assert rejection_reason(["[info] all good"]) is None


def test_envoy_argv(tmp_path: Path) -> None:
    argv = EnvoyOptions(Path("/bin/envoy"), tmp_path / "b.json", tmp_path / "admin", 2, 30.0, "info",
                        "upstream:debug").argv()
    assert argv[:3] == ["/bin/envoy", "-c", str(tmp_path / "b.json")]
    for part in ("--disable-hot-restart", "--drain-strategy", "--admin-address-path"):
        assert part in argv
    assert argv[argv.index("--drain-time-s") + 1] == "30" and argv[argv.index("--concurrency") + 1] == "2"
    assert argv[-2:] == ["--component-log-level", "upstream:debug"]


# --- pre-start --------------------------------------------------------------------------------------------

def test_prestart_finds_the_binary_the_flags_name(tmp_path: Path) -> None:
    from agent import prestart

    assert prestart._binary_from(["run", "--binary-path", "/x/envoy"], {}) == "/x/envoy"
    assert prestart._binary_from(["run", "--binary-path=/y/envoy"], {}) == "/y/envoy"
    assert prestart._binary_from(["run"], {"KUMA_DATAPLANE_RUNTIME_BINARY_PATH": "/z/envoy"}) == "/z/envoy"


def test_prestarted_version_is_used_only_for_its_binary(tmp_path: Path) -> None:
    from agent import prestart

    fake = tmp_path / "envoy"
    fake.write_text("#!/bin/sh\necho 'envoy  version: abc/1.2.3/Clean/RELEASE/BoringSSL'\n")
    fake.chmod(0o755)
    prestart._version = (str(fake), prestart.start_version(str(fake)))
    assert prestart.take_version(str(tmp_path / "other")) is None  # another binary: discarded
    prestart._version = (str(fake), prestart.start_version(str(fake)))
    proc = prestart.take_version(str(fake))
    assert proc is not None and proc.wait(10) == 0 and proc.stdout is not None
    assert b"1.2.3" in proc.stdout.read()
    proc.stdout.close()
    assert prestart.take_version(str(fake)) is None  # taken once
    prestart.discard()


def test_envoy_hung_verdicts() -> None:
    state = DpState()
    now = time.monotonic()
    state.envoy_started(100, 3)
    assert envoy_hung(state, 3, now, start_timeout=60, liveness_timeout=30) is None  # starting
    assert envoy_hung(state, 3, now - 61, start_timeout=60, liveness_timeout=30) == "not live 60s after it started"
    assert envoy_hung(state, 2, now - 61, start_timeout=60, liveness_timeout=30) is None  # not the current Envoy
    state.live_generation, state.last_live_at = 3, now - 5
    assert envoy_hung(state, 3, now - 600, start_timeout=60, liveness_timeout=30) is None  # live, answered 5s ago
    state.last_live_at = now - 31
    assert envoy_hung(state, 3, now - 600, start_timeout=60,
                      liveness_timeout=30) == "its admin API has not answered LIVE for 30s"


async def test_a_steady_envoy_is_asked_often_enough_never_to_look_hung() -> None:
    """The monitor asks a steady Envoy several times per liveness timeout: asking only once a second would let a
    1 s timeout find a healthy Envoy hung whenever an answer came a little late."""
    import json

    from agent.readiness import Monitor

    async def ready() -> tuple[int, str, bytes]:  # a LIVE, connected Envoy's admin API
        return 200, "text/plain", b"LIVE"

    async def stats() -> tuple[int, str, bytes]:
        body = {"stats": [{"name": "listener_manager.workers_started", "value": 1},
                          {"name": "control_plane.connected_state", "value": 1}]}
        return 200, "application/json", json.dumps(body).encode()

    sock = listen("127.0.0.1", 0)
    server = await serve(sock, {"/ready": ready, "/stats": stats})
    client = AdminClient("127.0.0.1", sock.getsockname()[1])
    state = DpState()
    state.envoy_started(100, 1)
    started = time.monotonic()
    monitor = Monitor(state, lambda: client, on_locally_ready=lambda: None, on_cp_change=lambda *_: None,
                      liveness_timeout=1.0)
    assert monitor.steady_poll <= 0.25
    task = asyncio.create_task(monitor.run())
    try:
        deadline = time.monotonic() + 8.0  # past the first 5 s of fast polls, into the steady interval
        verdicts = []
        while time.monotonic() < deadline:
            verdicts.append(envoy_hung(state, 1, started, start_timeout=60, liveness_timeout=1.0))
            await asyncio.sleep(0.05)
        assert state.live_generation == 1 and state.connected_generation == 1
        assert [v for v in verdicts if v is not None] == []
    finally:
        monitor.stop()
        await task
        server.close()
