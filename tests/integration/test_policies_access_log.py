"""MeshAccessLog between real Envoys on loopback: lines in the configured format appear in files the test
reads, for outbound and inbound traffic, HTTP and TCP, with Kuma's placeholders filled in; and, through real
kuma-dp processes (which serve the pipe Envoy writes Tcp-backend lines to), on a TCP listener the test runs."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.test_kuma_dp_support import (
    DpMesh,
    DpProcess,
    dp_factory,  # noqa: F401  (fixture)
    unique,
)
from tests.integration.test_kuma_dp_support import http as dp_http
from tests.integration.test_policies_envoy import policy_mesh
from tests.integration.test_policies_faults import inspected


@pytest.fixture
def pmesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
          app_factory: Callable[..., App]) -> MeshHarness:
    return policy_mesh(cp_factory, envoy_factory, app_factory)


def policy(outbound_log: Path, inbound_log: Path) -> str:
    return f"""
type: MeshAccessLog
mesh: default
name: web-outbound
spec:
  targetRef: {{kind: MeshService, name: web}}
  to:
  - targetRef: {{kind: Mesh}}
    default:
      backends:
      - type: File
        file: {{path: "{outbound_log}"}}
---
type: MeshAccessLog
mesh: default
name: inbound-json
spec:
  targetRef: {{kind: Mesh}}
  from:
  - targetRef: {{kind: Mesh}}
    default:
      backends:
      - type: File
        file:
          path: "{inbound_log}"
          format:
            type: Json
            json:
            - {{key: method, value: "%REQ(:METHOD)%"}}
            - {{key: path, value: "%REQ(:PATH)%"}}
            - {{key: status, value: "%RESPONSE_CODE%"}}
            - {{key: destination, value: "%KUMA_DESTINATION_SERVICE%"}}
            - {{key: direction, value: "%KUMA_TRAFFIC_DIRECTION%"}}
            - {{key: mesh, value: "%KUMA_MESH%"}}
"""


# Envoy flushes access log files every 10 s (its --file-flush-interval-msec default) or when its buffer fills:
# a line may take that long to appear.
FLUSH_WAIT_S = 30.0


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def tcp_round_trip(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        if not s.recv(64).startswith(b"db"):
            return False
        s.sendall(b"ping\n")
        return s.recv(64) == b"ping\n"


def test_access_logs_are_written_in_the_configured_format(pmesh: MeshHarness, tmp_path: Path) -> None:
    mesh = pmesh
    outbound_log, inbound_log = tmp_path / "web-outbound.log", tmp_path / "inbound.json"
    mesh.apply(policy(outbound_log, inbound_log))  # first: listeners changed later apply to new connections only
    mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    mesh.dataplane("db-1", "db", app_port=mesh.app("echo_tcp", "--banner", "db").port, protocol="tcp")
    web = mesh.dataplane("web-1", "web", app_port=mesh.app("echo_http", "--name", "web").port,
                         outbounds={"backend": 0, "db": 0})

    eventually(lambda: http(web.outbounds["backend"], "/ready")[0] == 200, message="web reaches backend")
    assert http(web.outbounds["backend"], "/hello?x=1")[0] == 200
    eventually(lambda: tcp_round_trip(web.outbounds["db"]), message="web reaches db")

    # Outbound HTTP, Kuma's default format: mesh, request line, status, source and destination services.
    http_line = eventually(lambda: next((x for x in lines(outbound_log) if "/hello?x=1" in x), None),
                           timeout=FLUSH_WAIT_S, message=f"outbound line in {outbound_log}")
    assert ' default "GET /hello?x=1 HTTP/1.1" 200 ' in http_line, http_line
    assert '"web" "backend" "127.0.0.1"' in http_line, http_line
    # Outbound TCP, Kuma's default TCP format (written when the connection closes).
    tcp_line = eventually(lambda: next((x for x in lines(outbound_log) if "->" in x), None),
                          timeout=FLUSH_WAIT_S, message=f"outbound TCP line in {outbound_log}")
    assert " default 127.0.0.1(web)->127.0.0.1:" in tcp_line and "(db) took " in tcp_line, tcp_line
    assert tcp_line.endswith("received: 5 bytes"), tcp_line  # "ping\n" from the client
    # Inbound, custom JSON: one object per line, from the backend's proxy (and the db's TCP inbound).
    records = eventually(lambda: [json.loads(x) for x in lines(inbound_log) if '"/hello?x=1"' in x],
                         timeout=FLUSH_WAIT_S, message=f"inbound line in {inbound_log}")
    assert records[0] == {"method": "GET", "path": "/hello?x=1", "status": 200, "destination": "backend",
                          "direction": "INBOUND", "mesh": "default"}, records
    tcp_records = eventually(lambda: [json.loads(x) for x in lines(inbound_log) if '"db"' in x],
                             timeout=FLUSH_WAIT_S, message="db's inbound line")
    assert tcp_records[0]["direction"] == "INBOUND" and tcp_records[0]["mesh"] == "default", tcp_records

    shown = inspected(mesh, "web-1", "MeshAccessLog")
    assert {o["service"] for o in shown["outbounds"]} == {"backend", "db"}


# --- the Tcp backend, through kuma-dp's pipe ------------------------------------------------------------------

class LineCollector(socketserver.ThreadingTCPServer):
    """A TCP log backend on loopback: keeps every line it receives."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _CollectLines)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def received(self) -> list[str]:
        with self.lock:
            return list(self.lines)


class _CollectLines(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, LineCollector)
        for raw in self.rfile:
            with server.lock:
                server.lines.append(raw.decode().rstrip("\n"))


@pytest.fixture
def collector() -> Iterator[LineCollector]:
    server = LineCollector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def dpmesh(cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
           dp_factory: Callable[..., DpProcess]) -> DpMesh:  # noqa: F811
    return DpMesh(cp_factory(KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1"), app_factory, dp_factory)


def test_tcp_backend_lines_reach_a_tcp_listener_through_kuma_dp(dpmesh: DpMesh, collector: LineCollector) -> None:
    mesh = dpmesh
    backend_name, web_name = unique("al-backend"), unique("al-web")  # the pipe is named after the dataplane
    doc = yaml.safe_load(f"""
type: MeshAccessLog
mesh: default
name: tcp-logs
spec:
  targetRef: {{kind: Mesh}}
  to:
  - targetRef: {{kind: Mesh}}
    default:
      backends: [{{type: Tcp, tcp: {{address: "{collector.address}"}}}}]
  from:
  - targetRef: {{kind: Mesh}}
    default:
      backends:
      - type: Tcp
        tcp:
          address: "{collector.address}"
          format:
            type: Json
            json: [{{key: path, value: "%REQ(:PATH)%"}}, {{key: destination, value: "%KUMA_DESTINATION_SERVICE%"}}]
""")
    r = mesh.api("PUT", "/meshes/default/meshaccesslogs/tcp-logs", doc)
    assert r.status in (200, 201), r.raw
    mesh.service("backend", name=backend_name)
    web = mesh.service("web", name=web_name, outbounds={"backend": 0})
    port = web.outbounds["backend"]
    eventually(lambda: dp_http(port, "/ready")[0] == 200, message="web reaches backend")
    assert dp_http(port, "/hello-tcp-log")[0] == 200

    # Outbound (web's Envoy), Kuma's default HTTP format, sent as one line by web's kuma-dp.
    line = eventually(lambda: next((x for x in collector.received() if "/hello-tcp-log" in x and "GET" in x),
                                   None), timeout=FLUSH_WAIT_S, message="the outbound line on the TCP listener")
    assert ' default "GET /hello-tcp-log HTTP/1.1" 200 ' in line and '"web" "backend"' in line, line
    # Inbound (backend's Envoy), custom JSON, sent by backend's kuma-dp.
    record = eventually(lambda: next((json.loads(x) for x in collector.received() if x.startswith("{")
                                      and "/hello-tcp-log" in x), None),
                        timeout=FLUSH_WAIT_S, message="the inbound line on the TCP listener")
    assert record == {"path": "/hello-tcp-log", "destination": "backend"}, record
