"""Global shows a zone's dataplanes online or offline by the zone's instance heartbeat records (ControlPlaneInstance),
synced over KDS with the insights: an idle dataplane stays online though nothing rewrites its insight, and the
dataplanes of a zone control plane killed with -9 (which never writes their disconnects) turn offline on global
once that instance's record, which global keeps, goes stale. Real global and zone kuma-cp processes, a real
kuma-dp + Envoy."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.kds_harness import api, global_env, wait_for, zone_env
from tests.integration.test_kuma_dp_support import DpMesh, DpProcess, dp_factory  # noqa: F401  (fixture)
from tests.ports import free_port

HEARTBEAT = 1  # seconds; both sides judge with it: stale after 3 of these
STALE = 3 * HEARTBEAT


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def overview(cp: CpProcess) -> dict[str, dict[str, Any]]:
    """The mesh's dataplanes on `cp`, by the name their zone gave them."""
    r = api(cp, "GET", "/meshes/default/dataplanes/_overview")
    assert r.status == 200, r.raw
    return {i["dataplane"]["labels"].get("kuma.io/display-name", i["name"]): i for i in r.json["items"]}


def zone_instances(glob: CpProcess, zone: str) -> dict[str, dict[str, Any]]:
    """The zone's instance records on global, by instance id."""
    r = api(glob, "GET", "/control-plane-instances")
    assert r.status == 200, r.raw
    return {i["labels"]["kuma.io/display-name"]: i for i in r.json["items"]
            if i.get("labels", {}).get("kuma.io/zone") == zone}


def test_global_judges_a_zones_dataplanes_by_its_synced_instance_records(
        tmp_path: Path, started: list[CpProcess], app_factory: Callable[..., App],
        dp_factory: Callable[..., DpProcess]) -> None:  # noqa: F811
    beat = {"KUMA_DP_SERVER_HEARTBEAT_INTERVAL": str(HEARTBEAT)}
    kds_port = free_port()
    glob = start_cp(tmp_path / "global", **global_env(kds_port, **beat))
    started.append(glob)
    zone = start_cp(tmp_path / "zone-1", **zone_env(glob, kds_port, "zone-1", tmp_path, **beat))
    started.append(zone)
    wait_for("global's default mesh reaching the zone", lambda: api(zone, "GET", "/meshes/default").status == 200,
             glob, zone)
    DpMesh(zone, app_factory, dp_factory).service("backend")

    # The zone's instance record reaches global, and so does its dataplane, online.
    records = wait_for("the zone's instance record on global", lambda: zone_instances(glob, "zone-1"), glob, zone)
    (instance_id, record), = records.items()
    assert record["mode"] == "zone" and record["zone"] == "zone-1"
    own = api(zone, "GET", f"/control-plane-instances/{instance_id}")  # its own, under its id
    assert own.status == 200, own.raw
    # Kept by the instance itself: not writable through the API (nor kumactl, which uses it).
    for method, body in (("PUT", {**own.json, "lastHeartbeatTime": "2999-01-01T00:00:00Z"}), ("DELETE", None)):
        refused = api(zone, method, f"/control-plane-instances/{instance_id}", body)
        assert refused.status == 405 and "maintained by the control plane" in refused.json["details"], refused.raw
    wait_for("the zone's dataplane online on global",
             lambda: overview(glob).get("backend-1", {}).get("status") == "online", glob, zone)

    # Idle: its insight on global is not written again (a summary carries no heartbeat), yet it stays online
    # while the zone's record keeps beating. Wait until the record is more than a staleness window newer than
    # the insight global holds, then look.
    def insight_on_global() -> dict[str, Any]:
        items = api(glob, "GET", "/meshes/default/dataplane-insights").json["items"]
        return next(i for i in items if i["labels"].get("kuma.io/display-name") == "backend-1")

    def idle_for_a_window() -> bool:
        written = parse(insight_on_global()["modificationTime"])
        beat_at = parse(zone_instances(glob, "zone-1")[instance_id]["lastHeartbeatTime"])
        return (beat_at - written).total_seconds() > 2 * STALE

    wait_for("the zone's record beating past a staleness window of an unchanged insight", idle_for_a_window,
             glob, zone)
    insight = insight_on_global()
    assert all("lastUpdateTime" not in s.get("status", {}) for s in insight["subscriptions"]), insight
    assert overview(glob)["backend-1"]["status"] == "online"

    # The zone control plane killed with -9: no disconnect is ever written, global keeps the open subscription
    # and the zone's last record; once that record is stale, the dataplane shows offline on global.
    os.kill(zone.pid, signal.SIGKILL)
    zone.proc.wait()
    wait_for("the killed zone's dataplane offline on global",
             lambda: overview(glob)["backend-1"]["status"] == "offline", glob)
    last_beat = parse(zone_instances(glob, "zone-1")[instance_id]["lastHeartbeatTime"])
    assert (datetime.now(UTC) - last_beat).total_seconds() > STALE  # judged dead by its record
    assert all("disconnectTime" not in s for s in insight_on_global()["subscriptions"][-1:])
