"""MeshRateLimit between real Envoys on loopback (mTLS): the destination's proxy answers HTTP requests above
the limit with the configured status and headers, and closes TCP connections above the connection rate.

The token buckets refill once an hour, so no refill can happen while the test runs: the counts are exact
whatever the machine's load, with no timing in the assertions.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.test_policies_envoy import ALLOW_ALL, MTLS_MESH, policy_mesh
from tests.integration.test_policies_faults import inspected


@pytest.fixture
def pmesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
          app_factory: Callable[..., App]) -> MeshHarness:
    return policy_mesh(cp_factory, envoy_factory, app_factory)


LIMITS = """
type: MeshRateLimit
mesh: default
name: limits
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default:
      local:
        http:
          requestRate: {num: 3, interval: 1h}
          onRateLimit:
            status: 423
            headers:
              set: [{name: x-kuma-rate-limited, value: "true"}]
---
type: MeshRateLimit
mesh: default
name: db-connections
spec:
  targetRef: {kind: MeshService, name: db}
  from:
  - targetRef: {kind: Mesh}
    default:
      local:
        tcp:
          connectionRate: {num: 2, interval: 1h}
"""


def response_headers(port: int) -> dict[str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            return dict(resp.headers)
    except urllib.error.HTTPError as e:
        return {"status": str(e.code), **dict(e.headers)}


def echoed(port: int) -> bool:
    """A TCP round trip through the mesh: the backend's banner arrives and a line comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        banner = s.recv(64)
        if not banner.startswith(b"db"):
            return False
        s.sendall(b"ping\n")
        return s.recv(64) == b"ping\n"


def test_rate_limits_reject_requests_and_connections_above_the_limit(pmesh: MeshHarness) -> None:
    mesh = pmesh
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    mesh.apply(LIMITS)  # before any connection exists: a changed listener applies to new connections only
    backend = mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    db = mesh.dataplane("db-1", "db", app_port=mesh.app("echo_tcp", "--banner", "db").port, protocol="tcp")
    client = mesh.dataplane("web-1", "web", app_port=mesh.app("echo_http", "--name", "web").port,
                            outbounds={"backend": 0, "db": 0})

    # HTTP: three requests pass (the first of them is the one that finds the route ready), then 423s.
    web = client.outbounds["backend"]
    eventually(lambda: http(web)[0] == 200, message="web reaches backend")
    answers = [http(web)[0] for _ in range(6)]
    assert answers == [200, 200, 423, 423, 423, 423], answers
    headers = response_headers(web)
    assert headers["status"] == "423" and headers["x-kuma-rate-limited"] == "true", headers
    prefix = f"inbound_127_0_0_1_{backend.inbound_port}_rate_limit.http_local_rate_limit"
    assert backend.envoy.stat(f"{prefix}.rate_limited") == 5, backend.envoy.stats(filter="rate_limit")
    assert backend.envoy.stat(f"{prefix}.ok") == 3

    # TCP: two connections are served, every later one is closed before the application sees it.
    port = client.outbounds["db"]
    eventually(lambda: echoed(port), message="web reaches db over TCP")
    results = []
    for _ in range(4):
        try:
            results.append(echoed(port))
        except OSError:
            results.append(False)
    assert results == [True, False, False, False], results
    db_prefix = f"local_rate_limit.inbound_127_0_0_1_{db.inbound_port}_rate_limit"
    assert db.envoy.stat(f"{db_prefix}.rate_limited") == 3, db.envoy.stats(filter="rate_limit")

    # The inspect API shows the merged limits per inbound.
    shown = inspected(mesh, "db-1", "MeshRateLimit")
    assert [p["name"] for p in shown["policies"]] == ["limits", "db-connections"]
    assert shown["inbounds"][0]["conf"]["local"] == {
        "http": {"requestRate": {"num": 3, "interval": "1h"},
                 "onRateLimit": {"status": 423,
                                 "headers": {"set": [{"name": "x-kuma-rate-limited", "value": "true"}]}}},
        "tcp": {"connectionRate": {"num": 2, "interval": "1h"}}}
