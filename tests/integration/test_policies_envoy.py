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
from tests.apps.runner import App, free_port
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import Dataplane, MeshHarness, eventually

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
    cp = cp_factory(KUMA_DEFAULTS_SKIP_MESH_CREATION="true", KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1",
                    KUMA_DP_SERVER_NACK_BACKOFF="1")
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
