"""Policies rendered into a real Envoy by kuma-cp: nothing that passes validation is NACKed, each
load-balancing policy is visible in Envoy's config dump, default policies, and the inspect endpoint.

Shared by test_policies_traffic.py: the `pmesh` fixture (a control plane without the default mesh, and a
`default` mesh created with `skipCreatingInitialPolicies: ['*']`, so only the policies a test applies are
in effect), `run_dataplane` (a dataplane with labels, through the bootstrap call, as kuma-dp registers it)
and `expected_versions` (the CDS/LDS versions kuma-cp must send, computed in-process with the same
generators from the same API state, to know when Envoy has the config).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.resources import REGISTRY, Resource, from_wire, load_all
from controlplane.xds.generate.context import Identity, ProxyContext
from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.generate.proxy import generate_snapshot
from controlplane.xds.resources import CLUSTER, LISTENER
from controlplane.xds.topology import build_topology
from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import Dataplane, MeshHarness, eventually
from tests.ports import free_port

load_all()
EXAMPLES = Path(__file__).parent.parent / "unit" / "policy_examples"
VALID_EXAMPLES = sorted(EXAMPLES.glob("*/*.yaml"))

PLAIN_MESH = """
type: Mesh
name: default
skipCreatingInitialPolicies: ['*']
"""

MTLS_MESH = """
type: Mesh
name: default
skipCreatingInitialPolicies: ['*']
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


def policy_mesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
                app_factory: Callable[..., App]) -> MeshHarness:
    # The API's per-client rate limit (100/s, burst 500) is not under test here, and `expected_versions` reads
    # every policy type after each change: the examples tests make thousands of calls from one client.
    cp = cp_factory(KUMA_DEFAULTS_SKIP_MESH_CREATION="true", KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1",
                    KUMA_DP_SERVER_NACK_BACKOFF="1", KUMA_API_SERVER_RATE_LIMIT_RPS="100000",
                    KUMA_API_SERVER_RATE_LIMIT_BURST="100000")
    harness = MeshHarness(cp, envoy_factory, app_factory)
    harness.apply(PLAIN_MESH)
    return harness


@pytest.fixture
def pmesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
          app_factory: Callable[..., App]) -> MeshHarness:
    return policy_mesh(cp_factory, envoy_factory, app_factory)


def dataplane_doc(name: str, service: str, *, port: int, app_port: int, protocol: str = "http",
                  outbounds: dict[str, int] | None = None, extra_tags: dict[str, str] | None = None,
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": port, "servicePort": app_port,
                         "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol, **(extra_tags or {})}}],
            "outbound": [{"port": p, "tags": {"kuma.io/service": svc}} for svc, p in (outbounds or {}).items()],
        },
    }
    if labels:
        doc["labels"] = labels
    return doc


def run_dataplane(mesh: MeshHarness, name: str, service: str, *, app_port: int, protocol: str = "http",
                  outbounds: dict[str, int] | None = None, extra_tags: dict[str, str] | None = None,
                  labels: dict[str, str] | None = None, api_type: str = "sotw") -> Dataplane:
    """Like MeshHarness.dataplane, with labels (for Dataplane targetRefs) and SotW by default (its version
    text is the snapshot version, which `expected_versions` computes)."""
    chosen = {svc: (p or free_port()) for svc, p in (outbounds or {}).items()}
    inbound_port = free_port()
    doc = dataplane_doc(name, service, port=inbound_port, app_port=app_port, protocol=protocol, outbounds=chosen,
                        extra_tags=extra_tags, labels=labels)
    bootstrap = mesh.bootstrap(name, mesh.token(name), doc, api_type=api_type)
    envoy = mesh.envoy_factory(bootstrap, name=name)
    dp = Dataplane(name, service, inbound_port, chosen, envoy, doc)
    mesh.dataplanes[name] = dp
    envoy.wait_listener(f"inbound:127.0.0.1:{inbound_port}", timeout=20)
    for port in chosen.values():
        envoy.wait_listener(f"outbound:127.0.0.1:{port}", timeout=20)
    return dp


def register(mesh: MeshHarness, name: str, service: str, *, protocol: str = "http",
             extra_tags: dict[str, str] | None = None, app_port: int = 0) -> None:
    """A dataplane without an Envoy (an operator-registered one): its inbound is an endpoint of the service."""
    doc = dataplane_doc(name, service, port=free_port(), app_port=app_port or free_port(), protocol=protocol,
                        extra_tags=extra_tags)
    mesh.apply(json.dumps(doc))


def api_state(mesh: MeshHarness) -> tuple[Resource, list[Resource], dict[str, list[Resource]]]:
    mesh_res = from_wire(mesh.api("GET", "/meshes/default").json)
    dps = [from_wire(d) for d in mesh.api("GET", "/meshes/default/dataplanes?size=1000").json["items"]]
    policies: dict[str, list[Resource]] = {}
    for rtype in REGISTRY.all():
        if rtype.is_policy:
            items = mesh.api("GET", f"/meshes/default/{rtype.plural}?size=1000").json["items"]
            if items:
                policies[rtype.name] = [from_wire(d) for d in items]
    return mesh_res, dps, policies


def expected_versions(mesh: MeshHarness, names: list[str]) -> dict[str, tuple[str, str]]:
    """(CDS, LDS) versions kuma-cp sends each named proxy for the current API state."""
    mesh_res, dps, policies = api_state(mesh)
    mtls = bool(getattr(mesh_res.spec, "mtls", None) and mesh_res.spec.mtls.enabled())  # type: ignore[attr-defined]
    topo = build_topology(mesh_res, dps, policies, 1, b"CA" if mtls else None)
    out = {}
    for name in names:
        identity = Identity(b"", b"", name) if mtls else None
        snap = generate_snapshot(ProxyContext(topo, topo.dataplanes[name], identity, ResourceMemo()))
        out[name] = (snap.version(CLUSTER), snap.version(LISTENER))
    return out


def rejected(envoy: EnvoyProcess) -> dict[str, Any]:
    return {k: v for k, v in envoy.stats(filter="update_rejected$").items() if v}


def wait_converged(mesh: MeshHarness, names: list[str], what: str, timeout: float = 15.0) -> None:
    """Until every named Envoy reports the CDS and LDS versions kuma-cp should have sent; fails at once with
    Envoy's and kuma-cp's account when an update was rejected."""
    want = expected_versions(mesh, names)
    deadline = time.monotonic() + timeout
    pending = dict(want)
    while pending:
        for name, (cds, lds) in list(pending.items()):
            envoy = mesh.dataplanes[name].envoy
            bad = rejected(envoy)
            if bad:
                insight = mesh.api("GET", f"/meshes/default/dataplane-insights/{name}").json
                pytest.fail(f"{what}: Envoy {name} rejected config: {bad}; kuma-cp recorded "
                            f"{json.dumps(insight.get('subscriptions', [{}])[-1].get('lastNack'))}\n"
                            f"{envoy.log(tail=20)}")
            stats = envoy.stats(filter="(cds|lds).version_text$")
            if (stats.get("cluster_manager.cds.version_text") == cds
                    and stats.get("listener_manager.lds.version_text") == lds):
                del pending[name]
        if pending and time.monotonic() > deadline:
            pytest.fail(f"{what}: Envoys {sorted(pending)} did not get the expected config within {timeout}s")
        if pending:
            time.sleep(0.05)


def no_nack_recorded(mesh: MeshHarness, name: str) -> bool:
    r = mesh.api("GET", f"/meshes/default/dataplane-insights/{name}")
    assert r.status == 200, r.raw
    subs = r.json.get("subscriptions") or []
    assert subs and "lastNack" not in subs[-1], subs[-1].get("lastNack")
    return True


# --- every example, in a real Envoy ----------------------------------------------------------------------------

SERVICES: list[tuple[str, str, dict[str, str]]] = [
    # (service, protocol, extra tags) of dataplanes without an Envoy: what the examples route and apply to.
    ("backend", "http", {"version": "v1"}), ("backend", "http", {"version": "v2"}),
    ("backend", "http", {"version": "shadow"}), ("batch", "http", {}), ("reports", "http", {}),
    ("cache", "http", {}), ("redis", "tcp", {"version": "v1"}), ("redis", "tcp", {"version": "v2"}),
    ("postgres", "tcp", {}), ("postgres-replica", "tcp", {}), ("billing", "grpc", {}),
    ("streams", "http2", {}), ("payments", "http", {}),
]


def test_every_policy_example_loads_into_envoy_without_nack(pmesh: MeshHarness) -> None:
    mesh = pmesh
    mesh.apply(MTLS_MESH)  # mTLS: transport sockets and RBAC are part of what Envoy must accept
    mesh.apply(ALLOW_ALL)
    for i, (service, protocol, tags) in enumerate(SERVICES):
        register(mesh, f"{service}-{i}", service, protocol=protocol, extra_tags=tags)
    outbounds = {s: 0 for s in dict.fromkeys(s for s, _, _ in SERVICES)}
    run_dataplane(mesh, "frontend-1", "frontend", app_port=free_port(), outbounds=outbounds,
                  extra_tags={"version": "v2", "kuma.io/zone": "east"}, labels={"app": "frontend"})
    run_dataplane(mesh, "cache-client-1", "cache-client", app_port=free_port(), protocol="tcp",
                  outbounds={"redis": 0, "postgres": 0}, labels={"app": "my-app"})
    proxies = ["frontend-1", "cache-client-1"]
    wait_converged(mesh, proxies, "no policies")
    docs = [(path, yaml.safe_load(path.read_text())) for path in VALID_EXAMPLES]
    for path, doc in docs:  # one at a time
        mesh.apply(json.dumps(doc))
        wait_converged(mesh, proxies, str(path.relative_to(EXAMPLES)))
        mesh.delete(REGISTRY.by_name(doc["type"]).plural, doc["name"])  # type: ignore[union-attr]
    for _, doc in docs:  # and all together, merged
        mesh.apply(json.dumps(doc))
    wait_converged(mesh, proxies, "all examples together")
    for name in proxies:
        eventually(lambda name=name: no_nack_recorded(mesh, name), timeout=10, message=f"{name} insight")
        assert not rejected(mesh.dataplanes[name].envoy)


# --- each load balancer, as Envoy has it ------------------------------------------------------------------

LOAD_BALANCERS = """
type: MeshLoadBalancingStrategy
mesh: default
name: every-lb
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: svc-rr}
    default: {loadBalancer: {type: RoundRobin}}
  - targetRef: {kind: MeshService, name: svc-lr}
    default: {loadBalancer: {type: LeastRequest, leastRequest: {choiceCount: 4, activeRequestBias: "1.5"}}}
  - targetRef: {kind: MeshService, name: svc-rh}
    default:
      loadBalancer:
        type: RingHash
        ringHash: {hashFunction: MurmurHash2, minRingSize: 64, maxRingSize: 1024,
                   hashPolicies: [{type: Header, header: {name: x-user}}]}
  - targetRef: {kind: MeshService, name: svc-random}
    default: {loadBalancer: {type: Random}}
  - targetRef: {kind: MeshService, name: svc-maglev}
    default: {loadBalancer: {type: Maglev, maglev: {tableSize: 1009}}}
"""


def test_each_load_balancing_policy_is_in_envoys_config_dump(pmesh: MeshHarness) -> None:
    mesh = pmesh
    services = ["svc-rr", "svc-lr", "svc-rh", "svc-random", "svc-maglev"]
    for s in services:
        register(mesh, f"{s}-1", s)
    client = run_dataplane(mesh, "client-1", "client", app_port=free_port(), outbounds={s: 0 for s in services})
    mesh.apply(LOAD_BALANCERS)
    wait_converged(mesh, ["client-1"], "load balancers")
    clusters = {c["cluster"]["name"]: c["cluster"]
                for c in client.envoy.config_dump_of("ClustersConfigDump")["dynamic_active_clusters"]}
    assert clusters["svc-rr"].get("lb_policy", "ROUND_ROBIN") == "ROUND_ROBIN"
    assert clusters["svc-lr"]["lb_policy"] == "LEAST_REQUEST"
    assert clusters["svc-lr"]["least_request_lb_config"]["choice_count"] == 4
    assert clusters["svc-lr"]["least_request_lb_config"]["active_request_bias"]["default_value"] == 1.5
    assert clusters["svc-rh"]["lb_policy"] == "RING_HASH"
    assert clusters["svc-rh"]["ring_hash_lb_config"] == {
        "minimum_ring_size": "64", "maximum_ring_size": "1024", "hash_function": "MURMUR_HASH_2"}
    assert clusters["svc-random"]["lb_policy"] == "RANDOM"
    assert clusters["svc-maglev"]["lb_policy"] == "MAGLEV"
    assert clusters["svc-maglev"]["maglev_lb_config"]["table_size"] == "1009"
    # The ring hash's hash policy is on the route of the svc-rh outbound.
    listeners = json.dumps(client.envoy.config_dump_of("ListenersConfigDump"))
    assert '"header_name": "x-user"' in listeners


# --- default policies of a new mesh ---------------------------------------------------------------------------

DEFAULT_NAMES = ("mesh-circuit-breaker-all", "mesh-gateways-timeout-all", "mesh-retry-all", "mesh-timeout-all")
DEFAULT_PLURALS = ("meshtimeouts", "meshretries", "meshcircuitbreakers")


def policy_names(mesh: MeshHarness, mesh_name: str) -> set[str]:
    names = set()
    for plural in DEFAULT_PLURALS:
        r = mesh.api("GET", f"/meshes/{mesh_name}/{plural}")
        assert r.status == 200, r.raw
        names.update(item["name"] for item in r.json["items"])
    return names


def defaults_of(mesh_name: str, skip: tuple[str, ...] = ()) -> set[str]:
    kinds = {"mesh-circuit-breaker-all": "MeshCircuitBreaker", "mesh-gateways-timeout-all": "MeshTimeout",
             "mesh-retry-all": "MeshRetry", "mesh-timeout-all": "MeshTimeout"}
    return {f"{n}-{mesh_name}" for n in DEFAULT_NAMES if kinds[n] not in skip}


def test_new_meshes_get_kumas_default_policies_unless_skipped(
        cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
        app_factory: Callable[..., App]) -> None:
    mesh = MeshHarness(cp_factory(KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1"), envoy_factory, app_factory)
    # The default mesh, created on first start, has them.
    eventually(lambda: policy_names(mesh, "default") == defaults_of("default"), message="default mesh defaults")
    mesh.apply("type: Mesh\nname: bare\nskipCreatingInitialPolicies: ['*']")
    mesh.apply("type: Mesh\nname: partial\nskipCreatingInitialPolicies: [MeshRetry]")
    mesh.apply("type: Mesh\nname: demo")
    # Mesh creations are handled in order: once demo has its defaults, bare and partial are settled.
    eventually(lambda: policy_names(mesh, "demo") == defaults_of("demo"), message="demo defaults")
    assert policy_names(mesh, "partial") == defaults_of("partial", skip=("MeshRetry",))
    assert policy_names(mesh, "bare") == set()
    # Defaults are created once: a deleted one stays deleted when the mesh changes.
    assert mesh.api("DELETE", "/meshes/demo/meshretries/mesh-retry-all-demo").status == 200
    mesh.apply("type: Mesh\nname: demo\nmtls: {enabledBackend: ca-1, backends: [{name: ca-1, type: builtin}]}")
    mesh.apply("type: Mesh\nname: sentinel")
    eventually(lambda: policy_names(mesh, "sentinel") == defaults_of("sentinel"), message="sentinel defaults")
    assert "mesh-retry-all-demo" not in policy_names(mesh, "demo")
    # And a proxy of the default mesh loads them (timeouts, retries, circuit breakers) without a NACK.
    register(mesh, "backend-1", "backend")
    run_dataplane(mesh, "web-1", "web", app_port=free_port(), outbounds={"backend": 0})
    wait_converged(mesh, ["web-1"], "default policies")
    routes = json.dumps(mesh.dataplanes["web-1"].envoy.config_dump_of("ListenersConfigDump"))
    assert '"retry_on": "gateway-error,connect-failure,refused-stream"' in routes


# --- inspect: which policies apply, and why ---------------------------------------------------------------------

INSPECTED = """
type: MeshTimeout
mesh: default
name: mesh-wide
spec:
  targetRef: {kind: Mesh}
  to: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 10s}, connectionTimeout: 3s}}]
---
type: MeshTimeout
mesh: default
name: web-to-backend
spec:
  targetRef: {kind: MeshService, name: web}
  to: [{targetRef: {kind: MeshService, name: backend}, default: {http: {requestTimeout: 2s}}}]
---
type: MeshTimeout
mesh: default
name: not-for-web
spec:
  targetRef: {kind: MeshService, name: other}
  to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 1m}}]
---
type: MeshHTTPRoute
mesh: default
name: api-route
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      default: {backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]}
---
type: MeshTimeout
mesh: default
name: api-slow
spec:
  targetRef: {kind: MeshHTTPRoute, name: api-route}
  to: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 30s}}}]
"""


def test_inspect_dataplane_policies_says_what_applies_and_why(pmesh: MeshHarness, tmp_path: Path) -> None:
    import subprocess
    import sys

    mesh = pmesh
    register(mesh, "backend-1", "backend", extra_tags={"version": "v2"})
    mesh.apply(json.dumps(dataplane_doc("web-1", "web", port=free_port(), app_port=free_port(),
                                        outbounds={"backend": free_port()}, labels={"app": "web"})))
    mesh.apply(INSPECTED)
    r = mesh.api("GET", "/meshes/default/dataplanes/web-1/policies")
    assert r.status == 200, r.raw
    by_type = {s["type"]: s for s in r.json["policyTypes"]}
    timeouts = by_type["MeshTimeout"]
    # Lowest precedence first; the policy for another service is not there.
    assert [p["name"] for p in timeouts["policies"]] == ["mesh-wide", "web-to-backend", "api-slow"]
    assert timeouts["policies"][1]["why"] == "MeshService web: the proxy serves kuma.io/service web"
    assert "MeshHTTPRoute api-route" in timeouts["policies"][2]["why"]
    backend = timeouts["outbounds"][0]
    assert backend["service"] == "backend" and backend["origins"] == ["mesh-wide", "web-to-backend"]
    assert backend["conf"] == {"connectionTimeout": "3s", "http": {"requestTimeout": "2s"}}
    assert backend["routes"][0]["conf"]["http"]["requestTimeout"] == "30s"
    assert backend["routes"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/api"}}]
    assert by_type["MeshHTTPRoute"]["outbounds"][0]["conf"]["rules"][0]["default"]["backendRefs"][0]["tags"] == {
        "version": "v2"}
    assert mesh.api("GET", "/meshes/default/dataplanes/nope/policies").status == 404
    # kumactl prints the same.
    config = tmp_path / "kumactl.yaml"
    base = [sys.executable, "-m", "controlplane.kumactl.main", "--config-file", str(config)]
    subprocess.run([*base, "config", "control-planes", "add", "--name", "local", "--address", mesh.cp.http_url],
                   check=True, capture_output=True, timeout=60)
    out = subprocess.run([*base, "inspect", "dataplane", "web-1", "--type", "policies"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "ORDER", "NAME", "TARGETREF", "WHY"]
    assert any(line.split()[:3] == ["MeshTimeout", "2", "web-to-backend"] for line in lines)
    assert any("outbound backend route" in line and "30s" in line for line in lines)
    as_json = subprocess.run([*base, "inspect", "dataplane", "web-1", "-o", "json"], check=True,
                             capture_output=True, text=True, timeout=60).stdout
    assert json.loads(as_json) == r.json
