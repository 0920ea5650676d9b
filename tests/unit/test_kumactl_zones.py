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
