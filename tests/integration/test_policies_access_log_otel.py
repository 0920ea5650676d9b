"""MeshAccessLog's OpenTelemetry backend between real Envoys on loopback: the callee's Envoy sends a record
per inbound request and the caller's a record per outbound request to a gRPC OTLP collector the test runs
(tests/integration/otlp_receiver.py), with the body and attributes the policy says and Kuma's placeholders
filled in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.test_policies_envoy import policy_mesh


@pytest.fixture
def pmesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
          app_factory: Callable[..., App]) -> MeshHarness:
    return policy_mesh(cp_factory, envoy_factory, app_factory)


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def policy(port: int) -> str:
    return f"""
type: MeshAccessLog
mesh: default
name: otel
spec:
  targetRef: {{kind: Mesh}}
  from:
  - targetRef: {{kind: Mesh}}
    default:
      backends:
      - type: OpenTelemetry
        openTelemetry:
          endpoint: "127.0.0.1:{port}"
          body:
            kvlistValue:
              values:
              - key: mesh
                value: {{stringValue: "%KUMA_MESH%"}}
              - key: path
                value: {{stringValue: "%REQ(:PATH)%"}}
          attributes:
          - {{key: direction, value: "%KUMA_TRAFFIC_DIRECTION%"}}
          - {{key: destination, value: "%KUMA_DESTINATION_SERVICE%"}}
  to:
  - targetRef: {{kind: Mesh}}
    default:
      backends:
      - type: OpenTelemetry
        openTelemetry:
          endpoint: "127.0.0.1:{port}"
          attributes:
          - {{key: direction, value: "%KUMA_TRAFFIC_DIRECTION%"}}
          - {{key: source, value: "%KUMA_SOURCE_SERVICE%"}}
"""


def test_access_log_records_reach_an_otlp_collector(pmesh: MeshHarness, otlp: OtlpReceiver) -> None:
    mesh = pmesh
    mesh.apply(policy(otlp.port))
    mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    web = mesh.dataplane("web-1", "web", app_port=mesh.app("echo_http", "--name", "web").port,
                         outbounds={"backend": 0})
    port = web.outbounds["backend"]
    eventually(lambda: http(port, "/logged")[0] == 200, message="web reaches backend")

    def both() -> tuple[dict[str, Any], dict[str, Any]]:
        records = otlp.snapshot_logs()
        inbound = [r for r in records if r["attributes"].get("direction") == "INBOUND"
                   and isinstance(r["body"], dict) and r["body"].get("path") == "/logged"]
        outbound = [r for r in records if r["attributes"].get("direction") == "OUTBOUND"]
        assert inbound and outbound, records
        return inbound[0], outbound[0]

    inbound, outbound = eventually(both, timeout=20, message="inbound and outbound records at the collector")
    assert inbound["body"] == {"mesh": "default", "path": "/logged"}
    assert inbound["attributes"]["destination"] == "backend"
    assert outbound["attributes"]["source"] == "web"
    # Without a body, Kuma's default HTTP line is the record's body.
    assert isinstance(outbound["body"], str) and '"GET /logged HTTP/1.1" 200' in outbound["body"], outbound
