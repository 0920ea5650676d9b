"""`kumactl get zones` on global: the Zone's columns with the STATUS its overview gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controlplane.kumactl.tables import zones_table


def test_get_zones_shows_status_from_the_overview_and_offline_without_one() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    created = (now - timedelta(minutes=5)).isoformat()
    zones = [{"name": "zone-1", "creationTime": created}, {"name": "zone-2", "enabled": False,
                                                           "creationTime": created}]
    lines = zones_table(zones, {"zone-1": {"name": "zone-1", "status": "Online"}}, now).splitlines()
    assert lines[0].split() == ["NAME", "ENABLED", "STATUS", "AGE"]
    assert lines[1].split()[:3] == ["zone-1", "true", "Online"]
    assert lines[2].split()[:3] == ["zone-2", "false", "Offline"]


def test_inspect_zoneingresses_marks_services_of_meshes_without_mtls() -> None:
    from controlplane.kumactl.tables import zone_ingress_overview_table

    item = {"name": "ingress-1", "status": "online", "meshesWithoutMtls": ["plain"], "zoneIngress": {
        "zone": "zone-2", "networking": {"address": "10.0.0.1", "port": 10001, "advertisedAddress": "203.0.113.1",
                                         "advertisedPort": 443},
        "availableServices": [{"mesh": "default", "tags": {"kuma.io/service": "billing"}},
                              {"mesh": "plain", "tags": {"kuma.io/service": "web"}}]}}
    table = zone_ingress_overview_table([item])
    header, row = table.splitlines()[0], table.splitlines()[-1]
    assert header.split() == ["NAME", "ZONE", "ADDRESS", "ADVERTISED", "STATUS", "SERVICES"]
    assert "10.0.0.1:10001" in row and "203.0.113.1:443" in row and "online" in row
    assert "default/billing,plain/web (mesh without mTLS: not routed)" in row
