"""Every Kuma docs example kuma-vm accepts for MeshTrace, MeshMetric, MeshAccessLog, MeshFaultInjection and
MeshRateLimit (tests/unit/kuma_docs/) loads into real Envoys without a NACK, one at a time and all together.

The proxies carry the tags and labels the examples select (app: backend/frontend, version: canary, the
zone...), so each example that shapes Envoy config does change it (checked: an example that selected nothing
would prove nothing). MeshMetric shapes what kuma-dp serves, not Envoy: it only has to be accepted here.
"""

from __future__ import annotations

import json

from controlplane.resources import REGISTRY
from tests.integration.mesh_harness import MeshHarness, eventually
from tests.integration.test_policies_envoy import (
    ALLOW_ALL,
    MTLS_MESH,
    expected_versions,
    no_nack_recorded,
    pmesh,  # noqa: F401  (fixture)
    register,
    rejected,
    run_dataplane,
    wait_converged,
)
from tests.ports import free_port
from tests.unit.test_kuma_docs_examples import accepted

PROXIES = ["backend-1", "frontend-1"]


def test_every_accepted_docs_example_loads_into_envoy(pmesh: MeshHarness) -> None:  # noqa: F811
    mesh = pmesh
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    register(mesh, "backend-2", "backend", extra_tags={"app": "backend"})
    run_dataplane(mesh, "backend-1", "backend", app_port=free_port(),
                  extra_tags={"app": "backend", "framework": "example-web-framework", "prometheus": "main",
                              "kuma.io/zone": "west"}, labels={"app": "backend"})
    run_dataplane(mesh, "frontend-1", "frontend", app_port=free_port(), outbounds={"backend": 0},
                  extra_tags={"app": "frontend", "version": "canary"}, labels={"app": "frontend"})
    wait_converged(mesh, PROXIES, "no policies")
    baseline = expected_versions(mesh, PROXIES)
    docs = accepted()
    for name, doc in docs:  # one at a time
        mesh.apply(json.dumps(doc))
        if doc["type"] != "MeshMetric":
            assert expected_versions(mesh, PROXIES) != baseline, f"{name} selects nothing here: it proves nothing"
        wait_converged(mesh, PROXIES, name)
        mesh.delete(REGISTRY.by_name(doc["type"]).plural, doc["name"])  # type: ignore[union-attr]
    for _, doc in docs:  # and all together, merged
        mesh.apply(json.dumps(doc))
    wait_converged(mesh, PROXIES, "all docs examples together")
    for name in PROXIES:
        eventually(lambda name=name: no_nack_recorded(mesh, name), timeout=10, message=f"{name} insight")
        assert not rejected(mesh.dataplanes[name].envoy)
    listeners = json.dumps(mesh.dataplanes["backend-1"].envoy.config_dump_of("ListenersConfigDump"))
    for filter_name in ("envoy.filters.http.fault", "envoy.filters.http.local_ratelimit", "envoy.tracers."):
        assert filter_name in listeners, filter_name
