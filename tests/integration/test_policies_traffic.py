"""Traffic policies doing their job between real Envoys on loopback: a weighted split, header-based routing
to a subset, retries hiding a flaky backend, a request timeout, a health check ejecting and readmitting an
endpoint, and a circuit breaker shedding load.

Tolerance of the split: 400 requests at 80/20; the share of v1 is binomial with a standard deviation of
2 percentage points, and the test accepts 80 +- 8 (4 standard deviations: a false failure about once in
16,000 runs).
"""

from __future__ import annotations

import concurrent.futures
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.test_policies_envoy import ALLOW_ALL, MTLS_MESH, policy_mesh


@pytest.fixture
def pmesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
          app_factory: Callable[..., App]) -> MeshHarness:
    """kuma-cp without default policies; mesh `default` created with skipCreatingInitialPolicies: ['*']."""
    return policy_mesh(cp_factory, envoy_factory, app_factory)


SPLIT_REQUESTS = 400
SPLIT_SHARE = 0.8
SPLIT_TOLERANCE = 4 * math.sqrt(SPLIT_SHARE * (1 - SPLIT_SHARE) / SPLIT_REQUESTS)  # 0.08


def backends(mesh: MeshHarness, versions: tuple[str, ...] = ("v1", "v2")) -> dict[str, int]:
    """One echo app and dataplane per version of `backend`; returns app ports by version."""
    ports = {}
    for v in versions:
        app = mesh.app("echo_http", "--name", f"backend-{v}")
        mesh.dataplane(f"backend-{v}", "backend", app_port=app.port, extra_tags={"version": v})
        ports[v] = app.port
    return ports


def web(mesh: MeshHarness) -> int:
    app = mesh.app("echo_http", "--name", "web")
    return mesh.dataplane("web-1", "web", app_port=app.port, outbounds={"backend": 0}).outbounds["backend"]


def answered_by(port: int, path: str = "/", headers: dict[str, str] | None = None) -> str:
    status, body = http(port, path, headers=headers)
    assert status == 200 and isinstance(body, dict), (status, body)
    return str(body["service"])


def answers(port: int, n: int, path: str = "/", headers: dict[str, str] | None = None) -> Counter[str]:
    """Which backend answered, over `n` requests sent 16 at a time (each is slow on its own: the test app
    writes headers and body separately, so delayed ACKs add ~40 ms per keep-alive request)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        return Counter(pool.map(lambda _: answered_by(port, path, headers), range(n)))


def both_versions_reachable(port: int) -> bool:
    return set(answers(port, 20)) == {"backend-v1", "backend-v2"}


SPLIT = """
type: MeshHTTPRoute
mesh: default
name: backend-split
spec:
  targetRef: {kind: MeshService, name: web}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches:
      - path: {type: PathPrefix, value: /}
      default:
        backendRefs:
        - {kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 80}
        - {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 20}
"""


def test_weighted_split_80_20_with_mtls(pmesh: MeshHarness) -> None:
    mesh = pmesh
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    backends(mesh)
    port = web(mesh)
    eventually(lambda: both_versions_reachable(port), message="round robin over both versions first")
    mesh.apply(SPLIT)
    envoy = mesh.dataplanes["web-1"].envoy
    envoy.wait_for(lambda: "weighted_clusters" in str(envoy.config_dump_of("ListenersConfigDump")),
                   message="the split route")
    counts = answers(port, SPLIT_REQUESTS)
    share = counts["backend-v1"] / SPLIT_REQUESTS
    assert set(counts) == {"backend-v1", "backend-v2"}
    assert abs(share - SPLIT_SHARE) <= SPLIT_TOLERANCE, (counts, share, SPLIT_TOLERANCE)


HEADER_ROUTE = """
type: MeshHTTPRoute
mesh: default
name: canary-by-header
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches:
      - headers: [{type: Exact, name: x-canary, value: "true"}]
      default:
        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]
    - matches:
      - path: {type: PathPrefix, value: /}
      default:
        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v1}}]
"""


def test_header_based_routing_to_a_subset(pmesh: MeshHarness) -> None:
    mesh = pmesh
    backends(mesh)
    port = web(mesh)
    eventually(lambda: both_versions_reachable(port), message="both versions before the route")
    mesh.apply(HEADER_ROUTE)
    eventually(lambda: set(answers(port, 10)) == {"backend-v1"}, message="default to v1")
    assert set(answers(port, 40, "/orders", {"x-canary": "true"})) == {"backend-v2"}
    assert set(answers(port, 40, "/orders", {"x-canary": "false"})) == {"backend-v1"}
    assert set(answers(port, 40)) == {"backend-v1"}


RETRY = """
type: MeshRetry
mesh: default
name: retry-backend
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      http:
        numRetries: 3
        retryOn: ["503"]
        backOff: {baseInterval: 10ms, maxInterval: 50ms}
"""


def test_retries_turn_a_flaky_backends_503s_into_200s(pmesh: MeshHarness) -> None:
    mesh = pmesh
    backends(mesh, ("v1",))
    port = web(mesh)
    eventually(lambda: http(port)[0] == 200, message="traffic")
    # Without a retry policy the first failure reaches the client.
    assert http(port, f"/flaky/2?key={uuid.uuid4()}")[0] == 503
    mesh.apply(RETRY)
    envoy = mesh.dataplanes["web-1"].envoy
    envoy.wait_for(lambda: "retry_policy" in str(envoy.config_dump_of("ListenersConfigDump")), message="retry")
    for _ in range(5):  # two 503s each, retried away
        status, body = http(port, f"/flaky/2?key={uuid.uuid4()}")
        assert status == 200 and isinstance(body, dict) and body["status"] == 200
    assert envoy.stat("cluster.backend.upstream_rq_retry") >= 10
    # More failures than retries: the last 503 is the answer.
    assert http(port, f"/flaky/10?key={uuid.uuid4()}")[0] == 503


TIMEOUT = """
type: MeshTimeout
mesh: default
name: backend-fast
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      http: {requestTimeout: 300ms}
"""


def test_request_timeout_fires(pmesh: MeshHarness) -> None:
    mesh = pmesh
    backends(mesh, ("v1",))
    port = web(mesh)
    eventually(lambda: http(port, "/delay/800")[0] == 200, message="slow request allowed by default (15s)")
    mesh.apply(TIMEOUT)
    envoy = mesh.dataplanes["web-1"].envoy
    envoy.wait_for(lambda: '"0.300s"' in str(envoy.config_dump_of("ListenersConfigDump")).replace("'", '"'),
                   message="request timeout in the route")
    started = time.monotonic()
    status, body = http(port, "/delay/2000")
    elapsed = time.monotonic() - started
    assert status == 504 and "timeout" in str(body), (status, body)
    assert 0.25 <= elapsed < 1.5, elapsed
    assert http(port, "/delay/50")[0] == 200


HEALTH_CHECK = """
type: MeshHealthCheck
mesh: default
name: backend-health
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      interval: 200ms
      timeout: 500ms
      unhealthyThreshold: 1
      healthyThreshold: 1
      healthyPanicThreshold: 0
      http: {path: /healthz}
"""


def test_health_check_ejects_a_dead_endpoint_and_readmits_it(pmesh: MeshHarness) -> None:
    mesh = pmesh
    apps = backends(mesh)
    port = web(mesh)
    eventually(lambda: both_versions_reachable(port), message="both endpoints in rotation")
    mesh.apply(HEALTH_CHECK)
    envoy = mesh.dataplanes["web-1"].envoy
    envoy.wait_for(lambda: "health_checks" in str(envoy.config_dump_of("ClustersConfigDump")), message="checks")
    # v1's application reports unhealthy: Envoy's active check takes it out of rotation.
    assert http(apps["v1"], "/admin/health?state=fail")[0] == 200
    eventually(lambda: set(answers(port, 20)) == {"backend-v2"}, timeout=10, message="v1 ejected")
    assert set(answers(port, 40)) == {"backend-v2"}
    assert envoy.stat("cluster.backend.health_check.failure") >= 1
    # Healthy again: back in rotation.
    assert http(apps["v1"], "/admin/health?state=ok")[0] == 200
    eventually(lambda: both_versions_reachable(port), timeout=10, message="v1 readmitted")


CIRCUIT_BREAKER = """
type: MeshCircuitBreaker
mesh: default
name: backend-limits
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      connectionLimits: {maxConnections: 1, maxPendingRequests: 1, maxRequests: 1}
"""


def test_circuit_breaker_sheds_load(pmesh: MeshHarness) -> None:
    mesh = pmesh
    backends(mesh, ("v1",))
    port = web(mesh)
    eventually(lambda: http(port)[0] == 200, message="traffic")

    def burst() -> Counter[int]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            return Counter(pool.map(lambda _: http(port, "/delay/400", timeout=10)[0], range(12)))

    assert burst() == Counter({200: 12})  # no limits yet: every concurrent request is served
    mesh.apply(CIRCUIT_BREAKER)
    envoy = mesh.dataplanes["web-1"].envoy
    envoy.wait_for(lambda: "max_pending_requests" in str(envoy.config_dump_of("ClustersConfigDump")),
                   message="limits")
    counts = burst()
    assert counts[503] >= 8 and counts[200] >= 1, counts  # one in flight, one pending, the rest shed at once
    assert envoy.stat("cluster.backend.upstream_rq_pending_overflow") >= 8
