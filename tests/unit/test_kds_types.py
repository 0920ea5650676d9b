"""What each side sends over KDS: global never echoes a zone's own resources back, zones send only their own."""

from __future__ import annotations

from controlplane.kds.types import global_sends, global_to_zone_types, policy_types, zone_sends
from controlplane.resources import from_wire
from controlplane.resources.base import Resource


def ingress(name: str, labels: dict[str, str]) -> Resource:
    return from_wire({"type": "ZoneIngress", "name": name, "labels": labels,
                      "networking": {"address": "10.0.0.9", "port": 10001}})


def selector(sends: list, type_name: str):  # type: ignore[no-untyped-def,type-arg]
    select = next(s.select for s in sends if s.rtype.name == type_name)
    return lambda r: select(r.meta)


def test_global_sends_meshes_first_then_policies_then_other_zones_ingresses() -> None:
    names = [t.name for t in global_to_zone_types()]
    assert names[0] == "Mesh" and names[-1] == "ZoneIngress"
    assert {t.name for t in policy_types()} <= set(names) and "MeshTimeout" in names
    assert "Dataplane" not in names and "Zone" not in names and "ZoneInsight" not in names

    to_zone1 = selector(global_sends("zone-1"), "ZoneIngress")
    assert to_zone1(ingress("zi-a", {"kuma.io/origin": "zone", "kuma.io/zone": "zone-2"}))
    assert not to_zone1(ingress("zi-b", {"kuma.io/origin": "zone", "kuma.io/zone": "zone-1"}))  # its own
    assert not to_zone1(ingress("zi-c", {}))  # global runs no ingress of its own
    mesh = selector(global_sends("zone-1"), "Mesh")
    assert mesh(from_wire({"type": "Mesh", "name": "default"}))


def test_a_zone_sends_only_its_own_resources() -> None:
    sends = zone_sends("zone-1")
    # The instances' heartbeat records first: global judges the insights' subscriptions by them.
    assert [s.rtype.name for s in sends] == ["ControlPlaneInstance", "Dataplane", "DataplaneInsight", "ZoneIngress",
                                             "ZoneIngressInsight"]
    own = selector(sends, "ZoneIngress")
    assert own(ingress("zi-1", {}))
    assert not own(ingress("zi-2", {"kuma.io/origin": "zone", "kuma.io/zone": "zone-2"}))  # forwarded by global
    assert not own(ingress("zi-3", {"kuma.io/origin": "global"}))


def test_a_dataplane_insight_goes_to_global_summarised() -> None:
    from controlplane.kds.types import summarise_insight
    from controlplane.resources.base import Meta, Resource
    from controlplane.resources.insights import DATAPLANE_INSIGHT, DataplaneInsightSpec

    def sub(i: int) -> dict[str, object]:
        return {"id": str(i), "controlPlaneInstanceId": "a", "connectTime": f"2026-01-0{i}T00:00:00Z",
                "disconnectTime": None if i == 4 else f"2026-01-0{i}T01:00:00Z", "kumaDpVersion": "1.0",
                "lastNack": {"type": "CDS", "version": "v", "errorDetail": "bad", "time": "2026-01-04T00:00:00Z"},
                "status": {"lastUpdateTime": "2026-01-04T00:00:10Z", "total": {"responsesSent": 99},
                           "cds": {"responsesSent": 50}}}
    spec = DataplaneInsightSpec.model_validate({"subscriptions": [sub(i) for i in (1, 2, 3, 4)],
                                                "mTLS": {"certificateRegenerations": 3}})
    summary = summarise_insight(Resource(DATAPLANE_INSIGHT, Meta(name="web-1", mesh="default"), spec)).spec
    assert isinstance(summary, DataplaneInsightSpec)
    assert [s.id for s in summary.subscriptions] == ["3", "4"]
    newest = summary.subscriptions[-1]
    assert newest.status.total.responses_sent == 0 and newest.status.cds.responses_sent == 0  # counters dropped
    # Nor the last update time: it changes with every push's ACKs; global judges liveness by the instance records.
    assert newest.status.last_update_time is None and newest.last_nack is not None
    assert newest.control_plane_instance_id == "a" and newest.disconnect_time is None
    assert summary.m_tls is not None and summary.m_tls.certificate_regenerations == 3
