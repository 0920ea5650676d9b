"""Multi-zone ownership of writes (controlplane/api/ownership.py): every mode x origin x kind of type."""

from __future__ import annotations

import pytest

from controlplane.api.ownership import Ownership
from controlplane.resources import load_all

REG = load_all()
GLOBAL = Ownership("global")
ZONE = Ownership("zone", federated=True, zone="zone-1")
STANDALONE = Ownership("zone")
FROM_GLOBAL = {"kuma.io/origin": "global"}
FROM_ZONE_1 = {"kuma.io/origin": "zone", "kuma.io/zone": "zone-1"}
FROM_ZONE_2 = {"kuma.io/origin": "zone", "kuma.io/zone": "zone-2"}


def t(name: str):  # type: ignore[no-untyped-def]
    rtype = REG.by_name(name)
    assert rtype is not None
    return rtype


@pytest.mark.parametrize(("who", "type_name", "labels", "allowed"), [
    # global owns meshes and policies, and anything it does not store as a zone's copy
    (GLOBAL, "Mesh", None, True),
    (GLOBAL, "MeshTimeout", None, True),
    (GLOBAL, "Secret", None, True),
    (GLOBAL, "Zone", None, True),
    (GLOBAL, "Dataplane", None, False),
    (GLOBAL, "ZoneIngress", None, False),
    (GLOBAL, "Dataplane", FROM_ZONE_1, False),
    (GLOBAL, "Secret", FROM_ZONE_1, False),
    # a zone under global: its dataplanes and ingresses, its own secrets; not meshes, policies or global's copies
    (ZONE, "Dataplane", None, True),
    (ZONE, "ZoneIngress", None, True),
    (ZONE, "Secret", None, True),
    (ZONE, "Mesh", None, False),
    (ZONE, "MeshTrafficPermission", None, False),
    (ZONE, "MeshTimeout", FROM_GLOBAL, False),
    (ZONE, "Secret", FROM_GLOBAL, False),
    (ZONE, "ZoneIngress", FROM_ZONE_2, False),  # another zone's ingress, forwarded by global
    (ZONE, "ZoneIngress", FROM_ZONE_1, True),
    # a standalone zone owns everything
    (STANDALONE, "Mesh", None, True),
    (STANDALONE, "MeshTimeout", FROM_GLOBAL, True),
    (STANDALONE, "Dataplane", None, True),
])
def test_who_may_write_what(who: Ownership, type_name: str, labels: dict[str, str] | None, allowed: bool) -> None:
    refusal = who.refusal(t(type_name), labels)
    assert (refusal is None) == allowed, refusal


def test_refusals_say_where_to_make_the_change() -> None:
    on_zone = ZONE.refusal(t("MeshTimeout"))
    assert on_zone and "zone control plane 'zone-1'" in on_zone and "global control plane" in on_zone
    on_global = GLOBAL.refusal(t("Dataplane"), FROM_ZONE_2)
    assert on_global and "change it in zone 'zone-2'" in on_global


def test_a_zone_stores_its_dataplanes_with_its_zone_tag() -> None:
    from controlplane.api.checks import WriteChecks
    from controlplane.resources import from_wire

    doc = {"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
        "address": "10.0.0.1", "inbound": [{"port": 10001, "tags": {"kuma.io/service": "web", "kuma.io/zone": "x"}},
                                           {"port": 10002, "tags": {"kuma.io/service": "api"}}]}}
    dp = from_wire(doc)
    stored = WriteChecks(None, None, ownership=ZONE).prepare(dp)  # type: ignore[arg-type]
    assert [i.tags["kuma.io/zone"] for i in stored.spec.networking.inbound] == ["zone-1", "zone-1"]
    assert WriteChecks(None, None, ownership=STANDALONE).prepare(dp) is dp  # no zone name: as written
    assert WriteChecks(None, None, ownership=GLOBAL).prepare(dp) is dp
    mesh = from_wire({"type": "Mesh", "name": "default"})
    assert WriteChecks(None, None, ownership=ZONE).prepare(mesh) is mesh  # type: ignore[arg-type]
