"""MeshFaultInjection between real Envoys on loopback (mTLS): the destination's proxy aborts the configured
share of one client's requests and delays every other client's, each client getting only its own rule.

Tolerance of the abort share: 200 requests at 50%; the share is binomial with a standard deviation of 3.5
percentage points, and the test accepts 50 +- 14 (4 standard deviations: a false failure about once in
16,000 runs). Delays are checked by Envoy's own counters and by a lower bound on the elapsed time (a delay
cannot make a request faster; Envoy's timer may fire a few ms early, see TIMER_SLACK_S), never by an upper
bound.
"""

from __future__ import annotations

import concurrent.futures
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.test_policies_envoy import ALLOW_ALL, MTLS_MESH, policy_mesh


@pytest.fixture
def pmesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
          app_factory: Callable[..., App]) -> MeshHarness:
    return policy_mesh(cp_factory, envoy_factory, app_factory)


REQUESTS = 200
SHARE = 0.5
TOLERANCE = 4 * math.sqrt(SHARE * (1 - SHARE) / REQUESTS)  # 0.14
DELAY_S = 0.4
# Envoy arms its delay timer from the event loop's cached "now", taken when the loop iteration began, so the
# timer may fire up to one iteration early (seen: 4 ms); 50 ms covers that and proves the delay all the same.
TIMER_SLACK_S = 0.05

FAULTS = f"""
type: MeshFaultInjection
mesh: default
name: backend-faults
spec:
  targetRef: {{kind: MeshService, name: backend}}
  from:
  - targetRef: {{kind: Mesh}}
    default:
      http:
      - delay: {{value: {int(DELAY_S * 1000)}ms, percentage: 100}}
  - targetRef: {{kind: MeshServiceSubset, name: web}}
    default:
      http:
      - abort: {{httpStatus: 418, percentage: {int(SHARE * 100)}}}
"""


def inspected(mesh: MeshHarness, dataplane: str, policy_type: str) -> dict[str, Any]:
    r = mesh.api("GET", f"/meshes/default/dataplanes/{dataplane}/policies")
    assert r.status == 200, r.raw
    return next(s for s in r.json["policyTypes"] if s["type"] == policy_type)  # type: ignore[no-any-return]


def kumactl_inspect(mesh: MeshHarness, dataplane: str, tmp_path: Path) -> str:
    """`kumactl inspect dataplane NAME --type policies` against the test's control plane (its table)."""
    config = tmp_path / "kumactl.yaml"
    base = [sys.executable, "-m", "controlplane.kumactl.main", "--config-file", str(config)]
    if not config.exists():
        subprocess.run([*base, "config", "control-planes", "add", "--name", "local", "--address", mesh.cp.http_url],
                       check=True, capture_output=True, timeout=60)
    return subprocess.run([*base, "inspect", "dataplane", dataplane, "--type", "policies"], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def statuses(port: int, n: int) -> Counter[int]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        return Counter(pool.map(lambda _: http(port)[0], range(n)))


def test_faults_abort_one_clients_share_and_delay_the_others(pmesh: MeshHarness, tmp_path: Path) -> None:
    mesh = pmesh
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    # The policy goes first: a changed listener applies to new connections only (Envoy drains the old ones
    # over minutes), so no client may hold a connection to the backend from before it.
    mesh.apply(FAULTS)
    app = mesh.app("echo_http", "--name", "backend")
    backend = mesh.dataplane("backend-1", "backend", app_port=app.port)
    envoy = backend.envoy
    assert "envoy.filters.http.fault" in str(envoy.config_dump_of("ListenersConfigDump"))
    web = mesh.dataplane("web-1", "web", app_port=mesh.app("echo_http", "--name", "web").port,
                         outbounds={"backend": 0}).outbounds["backend"]
    other = mesh.dataplane("other-1", "other", app_port=mesh.app("echo_http", "--name", "other").port,
                           outbounds={"backend": 0}).outbounds["backend"]
    # The client identity the fault filters match on, as the backend's proxy forwards it.
    status, body = eventually(lambda: (r := http(web)) and r[0] == 200 and r, message="web reaches backend")
    assert isinstance(body, dict) and "URI=spiffe://default/web" in body["headers"]["x-forwarded-client-cert"]
    prefix = f"http.inbound_127_0_0_1_{backend.inbound_port}.fault"
    aborted_before = envoy.stat(f"{prefix}.aborts_injected")

    counts = statuses(web, REQUESTS)
    assert set(counts) <= {200, 418}, counts
    share = counts[418] / REQUESTS
    assert abs(share - SHARE) <= TOLERANCE, (counts, share, TOLERANCE)
    assert envoy.stat(f"{prefix}.aborts_injected") - aborted_before == counts[418]
    assert envoy.stat(f"{prefix}.delays_injected") == 0, "web's own rule replaces the Mesh rule's list"

    for _ in range(3):
        started = time.monotonic()
        status, _ = http(other)
        assert status == 200
        assert time.monotonic() - started >= DELAY_S - TIMER_SLACK_S
    assert envoy.stat(f"{prefix}.delays_injected") == 3
    assert envoy.stat(f"{prefix}.aborts_injected") - aborted_before == counts[418], "other is never aborted"

    # The inspect API and kumactl show the rule each client gets.
    shown = inspected(mesh, "backend-1", "MeshFaultInjection")
    assert shown["inbounds"][0]["clients"] == [
        {"clients": {"kuma.io/service": "web"}, "conf": {"http": [{"abort": {"httpStatus": 418, "percentage": 50}}]}},
        {"clients": "every other client", "conf": {"http": [{"delay": {"value": "400ms", "percentage": 100}}]}}]
    table = kumactl_inspect(mesh, "backend-1", tmp_path)
    assert any("MeshFaultInjection" in line and '{"kuma.io/service":"web"}' in line and "418" in line
               for line in table.splitlines()), table

    # Deleting the policy removes the filters.
    mesh.delete("meshfaultinjections", "backend-faults")
    envoy.wait_for(lambda: "envoy.filters.http.fault" not in str(envoy.config_dump_of("ListenersConfigDump")),
                   message="fault filters removed")
