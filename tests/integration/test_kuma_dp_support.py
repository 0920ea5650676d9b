"""Helpers for the kuma-dp integration tests (no tests here): a real `kuma-dp run` subprocess
(`python -m agent.cli run`), a real systemd-style NOTIFY_SOCKET listener, and a small mesh around them.

    mesh = DpMesh(cp, tmp_path, app_factory, dp_factory)
    backend = mesh.service("backend", protocol="http")                  # echo_http + its kuma-dp + Envoy
    web = mesh.service("web", outbounds={"backend": 0})                 # outbound port chosen free
    http(web.outbounds["backend"], "/")

`dp_factory(definition | None, name=..., token=..., args=[...], env={...}, notify=True)` starts one kuma-dp and
stops it (SIGTERM, then SIGKILL, then the Envoy it left, by PID) when the test ends, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.apps.runner import App
from tests.integration.api_client import Reply, call
from tests.integration.cp_process import CpProcess
from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

MTLS_MESH = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
"""

ALLOW_ALL = """
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
"""


def unique(prefix: str) -> str:
    """A dataplane name no other test run on this host uses (default runtime dirs are per name)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def pid_gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def http(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, Any]:
    status, body = get(f"http://127.0.0.1:{port}{path}", timeout)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def eventually(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (AssertionError, OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout}s: {message} (last error: {last!r})")


# --- NOTIFY_SOCKET ---------------------------------------------------------------------------------------

class NotifySocket:
    """A datagram socket like systemd's: collects (monotonic time, {KEY: VALUE}) for every message."""

    def __init__(self, path: Path | None = None, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"kuma-dp-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def all(self) -> list[dict[str, str]]:
        with self._lock:
            return [m for _, m in self.messages]

    def values(self, key: str) -> list[str]:
        return [m[key] for m in self.all() if key in m]

    def first(self, key: str, value: str | None = None) -> tuple[int, float] | None:
        """(index, time) of the first message carrying key (=value)."""
        with self._lock:
            for i, (t, m) in enumerate(self.messages):
                if key in m and (value is None or m[key] == value):
                    return i, t
        return None

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0) -> tuple[int, float]:
        return eventually(lambda: self.first(key, value), timeout=timeout,
                          message=f"sd_notify {key}={value or '*'} (got {self.all()})")

    def wait_status(self, fragment: str, timeout: float = 30.0) -> str:
        return str(eventually(lambda: next((s for s in self.values("STATUS") if fragment in s), None),
                              timeout=timeout, message=f"STATUS containing {fragment!r} (got {self.values('STATUS')})"))

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=2)


# --- kuma-dp process ---------------------------------------------------------------------------------------

@dataclass
class DpProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_file: Path
    argv: list[str]
    runtime_dir: Path | None
    notify: NotifySocket | None = None
    envoy_pids: set[int] = field(default_factory=set)
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logs(self, tail: int | None = 80) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines if tail is None else lines[-tail:])

    def own_logs(self) -> str:
        """kuma-dp's own structured lines (Envoy's lines start with '[')."""
        return "\n".join(line for line in self.logs(tail=None).splitlines() if not line.startswith("["))

    def _file(self, name: str) -> Path:
        assert self.runtime_dir is not None, "this kuma-dp runs with the default runtime directory"
        return self.runtime_dir / name

    def envoy_pid(self) -> int:
        pid = int(self._file("envoy.pid").read_text().strip())
        self.envoy_pids.add(pid)
        return pid

    @property
    def readiness_url(self) -> str:
        return f"http://{self._file('readiness-address').read_text().strip()}"

    def admin_url(self) -> str:
        return f"http://{self._file('admin-address').read_text().strip()}"

    def ready_status(self) -> int:
        try:
            return get(self.readiness_url + "/ready", timeout=2)[0]
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"kuma-dp exited with {self.proc.returncode}:\n{self.logs()}")
            return self.ready_status() == 200

        try:
            eventually(ready, timeout=timeout, message=f"kuma-dp {self.name} ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- kuma-dp log ---\n{self.logs()}") from None
        self.envoy_pid()

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"kuma-dp {self.name} still runs after {timeout}s:\n{self.logs()}") from None
        return self.returncode

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def children(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, SIGKILL after `timeout`; then any Envoy it started that still runs, by PID."""
        self.envoy_pids.update(self.children())
        with contextlib.suppress(OSError, ValueError, AssertionError):
            self.envoy_pid()
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Stuck: SIGABRT first, so PYTHONFAULTHANDLER writes every thread's stack into the log.
                self.signal(signal.SIGABRT)
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.signal(signal.SIGKILL)
                    self.proc.wait(timeout=10)
        self.returncode = self.proc.returncode
        for pid in self.envoy_pids:
            if not pid_gone(pid):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
        if self.notify is not None:
            self.notify.close()
        return self.returncode


def dp_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMA_") and k not in (
        "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "RUNTIME_DIRECTORY")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    env.update(extra or {})
    return env


def start_kuma_dp(directory: Path, *, name: str, cp: CpProcess | None = None, definition: Any = None,
                  token: str | None = None, args: list[str] | None = None, env: dict[str, str] | None = None,
                  notify: bool | str = False, runtime_dir: bool = True, cp_address: str | None = None,
                  ca_file: Path | None = None, wrapper: list[str] | None = None) -> DpProcess:
    """Start `python -m agent.cli run` for one dataplane. `definition` (a dict or YAML text) is written to a
    file and passed with --dataplane-file; `token` to a file for --dataplane-token-file; `notify=True` (or
    "abstract") gives it a NOTIFY_SOCKET of its own; `runtime_dir=False` leaves the default one; `wrapper` is a
    command prefix (e.g. `setpriv ...`) it runs under."""
    directory.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "agent.cli", "run"]
    if cp_address or cp is not None:
        argv += ["--cp-address", cp_address or f"https://127.0.0.1:{cp.ports['KUMA_DP_SERVER_PORT']}"]  # type: ignore[union-attr]
    if ca_file or cp is not None:
        argv += ["--ca-cert-file", str(ca_file or cp.ca_file)]  # type: ignore[union-attr]
    if definition is not None:
        path = directory / f"{name}.yaml"
        path.write_text(definition if isinstance(definition, str) else yaml.safe_dump(definition))
        argv += ["--dataplane-file", str(path)]
    if token is not None:
        token_file = directory / f"{name}.token"
        token_file.write_text(token)
        argv += ["--dataplane-token-file", str(token_file)]
    rt: Path | None = None
    if runtime_dir:
        rt = directory / f"run-{name}"
        argv += ["--runtime-dir", str(rt)]
    elif os.geteuid() == 0:
        rt = Path("/run/kuma-dp") / f"default.{name}"  # kuma-dp's default as root (mesh "default")
    argv += list(args or [])
    full_env = dp_env(env)
    # The Envoy version cache (agent/envoy/version_cache.py) of this test's kuma-dp processes, not the user's.
    full_env.setdefault("CACHE_DIRECTORY", str(directory / "cache"))
    notifier = None
    if notify:
        notifier = NotifySocket(directory / f"notify-{name}-{uuid.uuid4().hex[:6]}.sock" if notify != "abstract"
                                else None,
                                abstract=notify == "abstract")
        full_env["NOTIFY_SOCKET"] = notifier.address
    log_file = directory / f"kuma-dp-{name}.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([*(wrapper or []), *argv], env=full_env, cwd=directory, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return DpProcess(name=name, proc=proc, log_file=log_file, argv=argv, runtime_dir=rt, notify=notifier)


@pytest.fixture
def dp_factory(tmp_path: Path) -> Iterator[Callable[..., DpProcess]]:
    started: list[DpProcess] = []

    def factory(**kwargs: Any) -> DpProcess:
        dp = start_kuma_dp(tmp_path / "dp", **kwargs)
        started.append(dp)
        return dp

    try:
        yield factory
    finally:
        for dp in reversed(started):
            status = dp.stop()
            print(f"--- kuma-dp {dp.name} (pid {dp.pid}) exited {status}; log tail ---\n{dp.logs(tail=30)}")


# --- a small mesh ------------------------------------------------------------------------------------------

def dataplane_doc(name: str, service: str, *, app_port: int, inbound_port: int, protocol: str = "http",
                  outbounds: dict[str, int] | None = None, mesh: str = "default") -> dict[str, Any]:
    return {
        "type": "Dataplane", "mesh": mesh, "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": inbound_port, "servicePort": app_port,
                         "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol}}],
            "outbound": [{"port": p, "tags": {"kuma.io/service": svc}} for svc, p in (outbounds or {}).items()],
        },
    }


@dataclass
class Service:
    name: str
    app: App
    dp: DpProcess
    inbound_port: int
    outbounds: dict[str, int]


@dataclass
class DpMesh:
    cp: CpProcess
    app_factory: Callable[..., App]
    dp_factory: Callable[..., DpProcess]
    mesh: str = "default"
    services: dict[str, Service] = field(default_factory=dict)  # by dataplane name

    def dp(self, name: str) -> DpProcess:
        return self.services[name].dp

    def api(self, method: str, path: str, body: Any = None) -> Reply:
        return call(method, self.cp.http_url + path, body)

    def apply(self, text: str) -> None:
        plural = {"Mesh": "meshes", "MeshTrafficPermission": "meshtrafficpermissions"}
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            path = (f"/meshes/{doc['mesh']}/{plural[doc['type']]}/{doc['name']}" if "mesh" in doc
                    else f"/{plural[doc['type']]}/{doc['name']}")
            r = self.api("PUT", path, doc)
            assert r.status in (200, 201), f"apply {doc['type']} {doc['name']}: {r.status} {r.raw!r}"

    def mtls(self) -> None:
        self.apply(MTLS_MESH)
        self.apply(ALLOW_ALL)

    def token(self, name: str) -> str:
        r = self.api("POST", "/tokens/dataplane", {"mesh": self.mesh, "name": name})
        assert r.status == 200, r.raw
        return r.raw.decode()

    def service(self, service: str, *, name: str | None = None, protocol: str = "http",
                outbounds: dict[str, int] | None = None, args: list[str] | None = None,
                env: dict[str, str] | None = None, notify: bool | str = False, wait: bool = True,
                runtime_dir: bool = True) -> Service:
        name = name or f"{service}-1"
        app = self.app_factory("echo_http", "--name", service)
        inbound = free_port()
        chosen = {svc: (p or free_port()) for svc, p in (outbounds or {}).items()}
        doc = dataplane_doc(name, service, app_port=app.port, inbound_port=inbound, protocol=protocol,
                            outbounds=chosen, mesh=self.mesh)
        dp = self.dp_factory(name=name, cp=self.cp, definition=doc, token=self.token(name),
                             args=["--drain-time", "1s", "--envoy-log-level", "warning", *(args or [])],
                             env=env, notify=notify, runtime_dir=runtime_dir)
        svc = Service(service, app, dp, inbound, chosen)
        self.services[name] = svc
        if wait:
            dp.wait_ready()
        return svc
