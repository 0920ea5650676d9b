"""MeshAccessLog between real Envoys on loopback: lines in the configured format appear in files the test
reads, for outbound and inbound traffic, HTTP and TCP, with Kuma's placeholders filled in."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
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
