"""Kuma 2.14's `rules[]` form of MeshAccessLog and MeshFaultInjection between real Envoys on loopback: a rule
aborts every request into the backend with the status it names, and the inbound access logs of two policies'
rules both get the request's line (Kuma 2.14 fans an inbound request out to every rule's backends)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.test_policies_access_log import FLUSH_WAIT_S, lines
from tests.integration.test_policies_envoy import policy_mesh
from tests.integration.test_policies_faults import inspected


@pytest.fixture
def pmesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
          app_factory: Callable[..., App]) -> MeshHarness:
    return policy_mesh(cp_factory, envoy_factory, app_factory)


def policies(mesh_log: Path, backend_log: Path) -> str:
    return f"""
type: MeshAccessLog
mesh: default
name: inbound-everywhere
spec:
  rules:
  - default:
      backends:
      - type: File
        file:
          path: "{mesh_log}"
          format:
            type: Json
            json: [{{key: path, value: "%REQ(:PATH)%"}}, {{key: status, value: "%RESPONSE_CODE%"}}]
---
type: MeshAccessLog
mesh: default
name: inbound-backend
spec:
  targetRef: {{kind: MeshService, name: backend}}
  rules:
  - default:
      backends:
      - type: File
        file:
          path: "{backend_log}"
          format: {{type: Plain, plain: "%REQ(:PATH)% %RESPONSE_CODE% %KUMA_DESTINATION_SERVICE%"}}
---
type: MeshFaultInjection
mesh: default
name: backend-teapot
spec:
  targetRef: {{kind: MeshService, name: backend}}
  rules:
  - default:
      http:
      - abort: {{httpStatus: 418, percentage: 100}}
"""


def test_rules_abort_and_log_to_every_rules_backends(pmesh: MeshHarness, tmp_path: Path) -> None:
    mesh = pmesh
    mesh_log, backend_log = tmp_path / "inbound-everywhere.json", tmp_path / "inbound-backend.log"
    mesh.apply(policies(mesh_log, backend_log))  # first: listeners changed later apply to new connections only
    mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    web = mesh.dataplane("web-1", "web", app_port=mesh.app("echo_http", "--name", "web").port,
                         outbounds={"backend": 0})

    eventually(lambda: http(web.outbounds["backend"], "/ready")[0] == 418, message="the rule aborts with 418")
    assert http(web.outbounds["backend"], "/rules?x=1")[0] == 418

    # Both policies' rules log the backend's inbound request (the mesh-wide one also logs web's inbound, if any).
    records = eventually(lambda: [json.loads(x) for x in lines(mesh_log) if '"/rules?x=1"' in x],
                         timeout=FLUSH_WAIT_S, message=f"inbound line in {mesh_log}")
    assert records[0] == {"path": "/rules?x=1", "status": 418}, records
    line = eventually(lambda: next((x for x in lines(backend_log) if x.startswith("/rules?x=1 ")), None),
                      timeout=FLUSH_WAIT_S, message=f"inbound line in {backend_log}")
    assert line == "/rules?x=1 418 backend", line

    shown = inspected(mesh, "backend-1", "MeshAccessLog")
    assert shown["inbounds"][0]["origins"] == ["inbound-everywhere", "inbound-backend"]
    assert len(shown["inbounds"][0]["conf"]["backends"]) == 2
