"""The real-Envoy harness and the test apps: traffic through Envoy reaches the apps, the admin helpers read
Envoy's state, and nothing outlives a test."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.apps.runner import App, start_app
from tests.integration.envoy_harness import (
    EnvoyProcess,
    EnvoyStartError,
    http_get,
    http_listener,
    start_envoy,
    static_bootstrap,
    static_cluster,
    tcp_proxy_listener,
)
from tests.ports import free_port

AppFactory = Callable[..., App]
EnvoyFactory = Callable[..., EnvoyProcess]


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def get_json(url: str, **kwargs: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, body = http_get(url, **kwargs)
    return status, headers, json.loads(body) if body else {}


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def test_http_and_tcp_through_envoy(app_factory: AppFactory, envoy_factory: EnvoyFactory) -> None:
    web = app_factory("echo_http", "--name", "web")
    tcp = app_factory("echo_tcp", "--banner", "tcp-backend-1")
    http_port, tcp_port = free_port(), free_port()
    envoy = envoy_factory(static_bootstrap(
        [http_listener("inbound_http", http_port, "web"), tcp_proxy_listener("inbound_tcp", tcp_port, "tcp")],
        [static_cluster("web", [web.address]), static_cluster("tcp", [("127.0.0.1", tcp.port)])],
    ))

    # HTTP: the app answers with its identity and the headers Envoy forwarded.
    status, headers, body = get_json(f"http://127.0.0.1:{http_port}/some/path?q=1",
                                     headers={"x-test-header": "hello"})
    assert status == 200
    assert body["service"] == "web" and body["instance"] == web.address
    assert body["path"] == "/some/path" and body["query"] == "q=1" and body["method"] == "GET"
    assert body["headers"]["x-test-header"] == "hello"
    assert "x-request-id" in body["headers"]  # added by Envoy's HTTP connection manager
    assert headers["server"] == "envoy" and headers["x-echo-instance"] == web.address

    # TCP: the banner names the backend, and bytes are echoed over the same connection.
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as sock:
        assert read_line(sock) == b"tcp-backend-1\n"
        for i in range(3):
            sock.sendall(f"ping {i}\n".encode())
            assert read_line(sock) == f"ping {i}\n".encode()

    # Admin views.
    assert envoy.listeners() == {"inbound_http": f"127.0.0.1:{http_port}", "inbound_tcp": f"127.0.0.1:{tcp_port}"}
    assert envoy.wait_listener(f"127.0.0.1:{tcp_port}") == ("inbound_tcp", f"127.0.0.1:{tcp_port}")
    dumped = envoy.config_dump_of("ListenersConfigDump")
    assert {lst["listener"]["name"] for lst in dumped["static_listeners"]} == {"inbound_http", "inbound_tcp"}
    full = envoy.config_dump(include_eds=True)
    assert any(c["@type"].endswith("EndpointsConfigDump") for c in full["configs"])
    clusters = envoy.clusters()
    assert {"web", "tcp"} <= set(clusters)
    web_hosts = [h["address"]["socket_address"] for h in clusters["web"]["host_statuses"]]
    assert web_hosts == [{"address": "127.0.0.1", "port_value": web.port}]
    assert envoy.wait_stat("cluster.web.upstream_rq_200", lambda v: v >= 1) >= 1
    assert envoy.stat("cluster.tcp.upstream_cx_total") == 1
    assert envoy.stat("no.such.stat") is None
    assert envoy.stat("server.state") == 0  # LIVE
    assert envoy.server_info()["state"] == "LIVE"
    assert "starting main dispatch loop" in envoy.log()

    pid = envoy.pid
    shm = Path("/dev/shm") / f"envoy_shared_memory_{int(envoy.base_id_file.read_text()) * 10}"
    assert shm.exists()
    assert envoy.stop() == 0
    assert pid_gone(pid)
    assert not shm.exists()  # Envoy leaves its hot-restart shared memory behind; the harness removes it
    assert envoy.stop() == 0  # idempotent


def test_round_robin_and_app_special_paths(app_factory: AppFactory, envoy_factory: EnvoyFactory) -> None:
    backends = [app_factory("echo_http", "--name", "backend") for _ in range(2)]
    port = free_port()
    routes: list[dict[str, Any]] = [
        {"match": {"prefix": "/flaky/"}, "route": {
            "cluster": "backend",
            "retry_policy": {"retry_on": "5xx", "num_retries": 3, "per_try_timeout": "2s"}}},
        {"match": {"prefix": "/delay/"}, "route": {"cluster": "backend", "timeout": "0.3s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ]
    envoy = envoy_factory(static_bootstrap([http_listener("in", port, "backend", routes=routes)],
                                           [static_cluster("backend", [b.address for b in backends])]))
    url = f"http://127.0.0.1:{port}"

    seen = {get_json(f"{url}/who")[2]["instance"] for _ in range(6)}
    assert seen == {b.address for b in backends}

    assert http_get(f"{url}/status/418")[0] == 418
    # /flaky/1 fails once per key on each instance (round robin: A 503, B 503, A 200); retries hide that.
    status, _, body = get_json(f"{url}/flaky/1?key=k1")
    assert status == 200 and body["status"] == 200
    assert envoy.stat("cluster.backend.upstream_rq_retry") >= 1
    # The route timeout cuts a slow answer short; a fast one passes.
    assert http_get(f"{url}/delay/2000")[0] == 504
    assert http_get(f"{url}/delay/10")[0] == 200
    status, headers, raw = http_get(f"{url}/anything", method="HEAD")
    assert status == 200 and raw == b"" and headers["x-echo-service"] == "backend"
    status, _, body = get_json(f"{url}/post", method="POST", data=b"payload")
    assert body["method"] == "POST" and body["body"] == "payload"


def test_app_health_switch_and_flaky_keys(app_factory: AppFactory) -> None:
    app = app_factory("echo_http", "--name", "h")
    base = f"http://{app.address}"
    assert http_get(f"{base}/healthz")[0] == 200
    assert http_get(f"{base}/admin/health?state=fail")[0] == 200
    assert http_get(f"{base}/healthz")[0] == 503
    assert http_get(f"{base}/admin/health?state=ok")[0] == 200
    assert http_get(f"{base}/healthz")[0] == 200
    assert [http_get(f"{base}/flaky/1?key=a")[0] for _ in range(2)] == [503, 200]
    assert http_get(f"{base}/flaky/1?key=b")[0] == 503  # counted per key
    assert http_get(f"{base}/status/204")[0] == 204
    pid = app.pid
    app.stop()
    assert pid_gone(pid)


def test_two_envoys_coexist_and_admin_port_is_picked(tmp_path: Path, app_factory: AppFactory) -> None:
    tcp = app_factory("echo_tcp", "--banner", "shared")
    ports = [free_port(), free_port()]
    bootstrap = static_bootstrap([], [static_cluster("tcp", [tcp.address])])
    del bootstrap["admin"]  # no admin address at all: the harness binds 127.0.0.1 on a free port
    envoys = []
    try:
        for port in ports:
            b = dict(bootstrap, static_resources={"listeners": [tcp_proxy_listener("in", port, "tcp")],
                                                  "clusters": bootstrap["static_resources"]["clusters"]})
            envoys.append(start_envoy(b, tmp_path, log_level="warning"))
        assert envoys[0].admin_url != envoys[1].admin_url
        assert envoys[0].dir != envoys[1].dir
        for port in ports:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                assert read_line(sock) == b"shared\n"
        assert "admin" not in bootstrap  # the caller's dict is not modified
    finally:
        for envoy in envoys:
            envoy.stop()
    assert all(pid_gone(e.pid) for e in envoys)


def test_bad_bootstrap_raises_with_log(tmp_path: Path) -> None:
    bad = static_bootstrap([tcp_proxy_listener("in", free_port(), "no-such-cluster")])
    bad["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["bogus_field"] = 1
    with pytest.raises(EnvoyStartError) as err:
        start_envoy(bad, tmp_path, timeout=20)
    assert "exited with status" in str(err.value)
    assert "bogus_field" in str(err.value)


def test_wait_for_times_out_with_log(envoy_factory: EnvoyFactory) -> None:
    envoy = envoy_factory(static_bootstrap())
    with pytest.raises(AssertionError, match="listener nope"):
        envoy.wait_listener("nope", timeout=0.3)
    assert envoy.wait_for(lambda: 42, timeout=1) == 42


def test_runner_context_manager_stops_the_app() -> None:
    with start_app("tests.apps.echo_tcp") as app:
        with socket.create_connection(("127.0.0.1", app.port), timeout=5) as sock:
            assert read_line(sock) == f"echo-tcp 127.0.0.1:{app.port}\n".encode()
        pid = app.pid
        assert app.log_file.exists()
    assert pid_gone(pid)
    assert app.returncode == 0
    assert not app.log_file.parent.exists()  # its own temporary log directory is removed
