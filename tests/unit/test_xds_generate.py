"""Generators: golden files for representative dataplanes, sharing of built resources, consistency.

Golden files live in tests/unit/golden/xds/. After an intended change to the generated config, rewrite
them with `KUMA_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_xds_generate.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyPb

from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.generate.proxy import generate_snapshot
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, SECRET, TYPE_ORDER
from controlplane.xds.snapshot import Snapshot
from tests.unit.xds_fixtures import context, dataplane, mesh, res, topology

GOLDEN = Path(__file__).parent / "golden" / "xds"
UPDATE = os.environ.get("KUMA_UPDATE_GOLDEN") == "1"


def as_json(snapshot: Snapshot) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for type_url in TYPE_ORDER:
        items = {}
        for name, r in sorted(snapshot.of_type(type_url).items()):
            msg = AnyPb(type_url=r.type_url, value=r.body)
            items[name] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        if items:
            out[type_url.rsplit(".", 1)[-1]] = items
    return out


def check_golden(case: str, snapshot: Snapshot) -> None:
    path = GOLDEN / f"{case}.json"
    text = json.dumps(as_json(snapshot), indent=2, sort_keys=True) + "\n"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"{path} is missing: run with KUMA_UPDATE_GOLDEN=1 to create it, then review it")
        path.write_text(text)
    assert text == path.read_text(), f"{case}: generated config differs from {path} (KUMA_UPDATE_GOLDEN=1 to update)"


WEB = dict(port=10001, service_port=8080, protocol="http", outbounds=[(20001, "backend"), (20002, "db")])
BACKEND = dict(port=10002, service_port=8081, protocol="http")
DB = dict(port=10003, service_port=5432)


def demo_dataplanes(address: str = "127.0.0.1") -> list[Any]:
    return [dataplane("web-1", "web", address=address, **WEB),  # type: ignore[arg-type]
            dataplane("backend-1", "backend", address=address, **BACKEND),  # type: ignore[arg-type]
            dataplane("db-1", "db", address=address, **DB)]  # type: ignore[arg-type]


def test_golden_plaintext_mesh() -> None:
    topo = topology(mesh(), demo_dataplanes())
    check_golden("plaintext-web", generate_snapshot(context(topo, "web-1")))
    check_golden("plaintext-db", generate_snapshot(context(topo, "db-1")))


ALLOW_WEB = res("""
type: MeshTrafficPermission
mesh: default
name: allow-web-to-backend
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Allow}
""")

MESH_ALLOW_BUT_DENY_DB = res("""
type: MeshTrafficPermission
mesh: default
name: mesh-wide
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
  - targetRef: {kind: MeshService, name: db}
    default: {action: Deny}
""")


def test_golden_strict_mtls_with_permissions() -> None:
    topo = topology(mesh(mtls="STRICT"), demo_dataplanes(), [ALLOW_WEB, MESH_ALLOW_BUT_DENY_DB])
    check_golden("strict-web", generate_snapshot(context(topo, "web-1")))
    check_golden("strict-backend", generate_snapshot(context(topo, "backend-1")))


def test_golden_strict_mtls_no_permission_denies_all() -> None:
    topo = topology(mesh(mtls="STRICT"), demo_dataplanes())
    check_golden("strict-deny-all-db", generate_snapshot(context(topo, "db-1")))


SHADOW_DENY_DB = res("""
type: MeshTrafficPermission
mesh: default
name: shadow-db
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
  - targetRef: {kind: MeshService, name: db}
    default: {action: AllowWithShadowDeny}
""")


def test_golden_allow_with_shadow_deny_renders_shadow_rules() -> None:
    """db is allowed (the enforced rules), and denied in Envoy's shadow rules: their `shadow_denied` stats show
    what a Deny would refuse before the operator switches to it."""
    topo = topology(mesh(mtls="STRICT"), demo_dataplanes(), [SHADOW_DENY_DB])
    snap = generate_snapshot(context(topo, "backend-1"))
    check_golden("strict-backend-shadow-deny", snap)
    text = json.dumps([json_format.MessageToDict(AnyPb(type_url=r.type_url, value=r.body))
                       for r in snap.of_type(LISTENER).values()])
    assert '"shadowRules"' in text and "spiffe://default/db" in text


def test_golden_permissive() -> None:
    topo = topology(mesh(mtls="PERMISSIVE"), demo_dataplanes(), [MESH_ALLOW_BUT_DENY_DB])
    check_golden("permissive-backend", generate_snapshot(context(topo, "backend-1")))


def test_resources_are_built_once_and_shared() -> None:
    dps = [dataplane(f"web-{i}", "web", address=f"10.0.0.{i}", **WEB) for i in range(1, 6)]  # type: ignore[arg-type]
    dps += demo_dataplanes("10.0.1.1")[1:]
    topo = topology(mesh(mtls="STRICT"), dps)
    memo = ResourceMemo()
    snaps = [generate_snapshot(context(topo, f"web-{i}", memo)) for i in range(1, 6)]
    first = snaps[0]
    for s in snaps[1:]:
        assert s.of_type(CLUSTER)["backend"] is first.of_type(CLUSTER)["backend"]
        assert s.of_type(ENDPOINT)["backend"] is first.of_type(ENDPOINT)["backend"]
        assert s.of_type(SECRET)["mesh_ca:secret:default"] is first.of_type(SECRET)["mesh_ca:secret:default"]
        # The identity is each proxy's own.
        assert s.of_type(SECRET)["identity_cert:secret:default"] is not first.of_type(SECRET)[
            "identity_cert:secret:default"]
    # backend cluster + its endpoints + db cluster + db endpoints + CA: built once for five proxies.
    assert memo.reused >= 4 * 5


def test_unchanged_inputs_give_unchanged_versions() -> None:
    a = generate_snapshot(context(topology(mesh(), demo_dataplanes(), generation=1), "web-1"))
    b = generate_snapshot(context(topology(mesh(), demo_dataplanes(), generation=2), "web-1"))
    for t in TYPE_ORDER:
        assert a.version(t) == b.version(t)


def test_endpoint_change_touches_only_eds() -> None:
    before = topology(mesh(), demo_dataplanes())
    moved = demo_dataplanes()
    moved[1] = dataplane("backend-1", "backend", address="127.0.0.2", **BACKEND)  # type: ignore[arg-type]
    after = topology(mesh(), moved, generation=2)
    memo = ResourceMemo()
    a = generate_snapshot(context(before, "web-1", memo))
    b = generate_snapshot(context(after, "web-1", memo))
    assert a.version(ENDPOINT) != b.version(ENDPOINT)
    assert a.of_type(ENDPOINT)["db"] is b.of_type(ENDPOINT)["db"]
    for t in (CLUSTER, LISTENER):
        assert a.version(t) == b.version(t)


def test_unhealthy_instances_leave_the_endpoints() -> None:
    dps = demo_dataplanes()
    sick = dps[1].spec.model_dump(by_alias=True)
    sick["networking"]["inbound"][0]["health"] = {"ready": False}
    dps[1] = res(json.dumps({"type": "Dataplane", "mesh": "default", "name": "backend-1", **sick}))
    snap = generate_snapshot(context(topology(mesh(), dps), "web-1"))
    cla = json_format.MessageToDict(AnyPb(type_url=ENDPOINT, value=snap.of_type(ENDPOINT)["backend"].body))
    assert "lbEndpoints" not in json.dumps(cla)
    assert "backend" in snap.of_type(CLUSTER)  # the cluster stays, empty, so the listener keeps working


def test_vip_owner_gets_vip_listeners_for_every_service() -> None:
    from dataclasses import replace

    topo = topology(mesh(), demo_dataplanes())
    vips = {"backend": "127.240.0.2", "db": "127.240.0.3", "web": "127.240.0.1"}
    snap = generate_snapshot(replace(context(topo, "db-1"), vips=vips))
    listeners = set(snap.of_type(LISTENER))
    assert {"outbound:127.240.0.2:80", "outbound:127.240.0.2:8081", "outbound:127.240.0.3:80",
            "outbound:127.240.0.3:5432", "outbound:127.240.0.1:80", "outbound:127.240.0.1:8080"} <= listeners
    assert {"backend", "web", "db"} <= set(snap.of_type(CLUSTER))
    # Others do not get them.
    plain = generate_snapshot(context(topo, "db-1"))
    assert not [n for n in plain.of_type(LISTENER) if n.startswith("outbound:127.240.")]
