"""Multi-zone with real kuma-cp processes on loopback: one global, one zone (sqlite each), joined over KDS."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane.store.postgres_config import PostgresConfig
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.kds_harness import api, global_env, wait_for, zone_env
from tests.integration.test_cp_postgres import is_leader, pg_env
from tests.ports import free_port


def test_a_zone_joins_global_and_resources_flow_both_ways(cp_factory: Callable[..., CpProcess],
                                                          tmp_path: Path) -> None:
    kds_port = free_port()
    glob = cp_factory(**global_env(kds_port))
    zone = cp_factory(**zone_env(glob, kds_port, "zone-1", tmp_path))

    policy = {"type": "MeshTimeout", "mesh": "default", "name": "t1",
              "spec": {"targetRef": {"kind": "Mesh"},
                       "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "7s"}}]}}
    assert api(glob, "PUT", "/meshes/default/meshtimeouts/t1", policy).status in (200, 201)
    got = wait_for("the policy reaching the zone",
                   lambda: (r := api(zone, "GET", "/meshes/default/meshtimeouts/t1")).status == 200 and r.json,
                   glob, zone)
    assert got["labels"]["kuma.io/origin"] == "global"
    assert got["spec"]["to"][0]["default"] == {"idleTimeout": "7s"}
    assert api(glob, "GET", "/zones/zone-1").json["enabled"] is True

    dp = {"type": "Dataplane", "mesh": "default", "name": "backend-1",
          "networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "backend"}}]}}
    assert api(zone, "PUT", "/meshes/default/dataplanes/backend-1", dp).status in (200, 201)

    def zone_dataplanes() -> list[dict[str, Any]]:
        items = api(glob, "GET", "/meshes/default/dataplanes").json["items"]
        return [i for i in items if i.get("labels", {}).get("kuma.io/zone") == "zone-1"]
    [stored] = wait_for("the zone's dataplane reaching global", zone_dataplanes, glob, zone)
    assert stored["name"].startswith("backend-1-") and stored["labels"]["kuma.io/display-name"] == "backend-1"
    assert stored["labels"]["kuma.io/origin"] == "zone"

    # Each side refuses writes of what the other owns, saying where to make them; KDS keeps syncing.
    for method, body in (("PUT", policy), ("DELETE", None)):
        refused = api(zone, method, "/meshes/default/meshtimeouts/t1", body)
        assert refused.status == 400 and "apply it there" in refused.json["details"], refused.raw
    assert api(zone, "PUT", "/meshes/other", {"type": "Mesh", "name": "other"}).status == 400
    for method, body in (("PUT", {**stored, "labels": {}}), ("DELETE", None)):
        refused = api(glob, method, f"/meshes/default/dataplanes/{stored['name']}", body)
        assert refused.status == 400 and "change it in zone 'zone-1'" in refused.json["details"], refused.raw
    assert api(glob, "PUT", "/meshes/default/dataplanes/made-on-global", dp).status == 400

    assert api(glob, "DELETE", "/meshes/default/meshtimeouts/t1").status == 200
    wait_for("the policy's deletion reaching the zone",
             lambda: api(zone, "GET", "/meshes/default/meshtimeouts/t1").status == 404, glob, zone)
    assert api(zone, "DELETE", "/meshes/default/dataplanes/backend-1").status == 200
    wait_for("the dataplane's deletion reaching global", lambda: not zone_dataplanes(), glob, zone)


def zone_timeouts(zone: CpProcess) -> set[str]:
    """Global's MeshTimeouts as the zone has them (global's default mesh brings Kuma's default policies too)."""
    r = api(zone, "GET", "/meshes/default/meshtimeouts")
    if r.status == 404:  # the mesh itself has not arrived yet
        return set()
    assert r.status == 200, r.raw
    return {i["name"] for i in r.json["items"]}


def zone_dataplane_names(glob: CpProcess) -> set[str]:
    items = api(glob, "GET", "/meshes/default/dataplanes").json["items"]
    return {i["labels"]["kuma.io/display-name"] for i in items if i.get("labels", {}).get("kuma.io/zone") == "zone-1"}


def test_a_zone_keeps_working_while_global_is_killed_and_converges_when_it_returns(
        tmp_path: Path, started: list[CpProcess]) -> None:
    kds_port = free_port()
    glob = start_cp(tmp_path / "global", **global_env(kds_port))
    started.append(glob)
    zone = start_cp(tmp_path / "zone", **zone_env(glob, kds_port, "zone-1", tmp_path))
    started.append(zone)
    for name in ("t1", "t2"):
        policy = {"type": "MeshTimeout", "mesh": "default", "name": name,
                  "spec": {"targetRef": {"kind": "Mesh"},
                           "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "7s"}}]}}
        assert api(glob, "PUT", f"/meshes/default/meshtimeouts/{name}", policy).status in (200, 201)

    def dp(name: str) -> dict[str, Any]:
        return {"type": "Dataplane", "mesh": "default", "name": name,
                "networking": {"address": "127.0.0.1",
                               "inbound": [{"port": 8080, "tags": {"kuma.io/service": name}}]}}
    assert api(zone, "PUT", "/meshes/default/dataplanes/old-1", dp("old-1")).status in (200, 201)
    wait_for("the zone's dataplane reaching global", lambda: zone_dataplane_names(glob) == {"old-1"}, glob, zone)
    wait_for("both policies reaching the zone",
             lambda: {"t1", "t2"} <= zone_timeouts(zone), glob, zone)

    os.kill(glob.pid, signal.SIGKILL)
    glob.proc.wait()
    # the zone keeps its store and its API: local registrations and deletions go on
    assert api(zone, "GET", "/meshes/default/meshtimeouts/t1").status == 200
    assert api(zone, "PUT", "/meshes/default/dataplanes/new-1", dp("new-1")).status in (200, 201)
    assert api(zone, "DELETE", "/meshes/default/dataplanes/old-1").status == 200

    # the same global again: same state directory, same ports
    again = start_cp(tmp_path / "global", **{**{k: str(v) for k, v in glob.ports.items()}, **global_env(kds_port)})
    started.append(again)
    wait_for("the zone's changes made while global was down reaching it",
             lambda: zone_dataplane_names(again) == {"new-1"}, again, zone)
    assert api(again, "DELETE", "/meshes/default/meshtimeouts/t2").status == 200
    wait_for("a deletion on the restarted global reaching the zone",
             lambda: "t2" not in zone_timeouts(zone), again, zone)
    assert "t1" in zone_timeouts(zone)


@pytest.mark.postgres
def test_two_zone_instances_on_postgres_only_the_leader_syncs_and_the_other_takes_over(
        postgres_migrated_config: PostgresConfig, tmp_path: Path, started: list[CpProcess]) -> None:
    kds_port = free_port()
    glob = start_cp(tmp_path / "global", **global_env(kds_port))
    started.append(glob)
    env = zone_env(glob, kds_port, "zone-1", tmp_path, **pg_env(postgres_migrated_config))
    a = start_cp(tmp_path / "zone-a", **env)
    started.append(a)
    b = start_cp(tmp_path / "zone-b", **env)
    started.append(b)
    wait_for("a zone leader", lambda: is_leader(a) or is_leader(b), a, b)
    leader, follower = (a, b) if is_leader(a) else (b, a)

    def policy(name: str) -> dict[str, Any]:
        return {"type": "MeshTimeout", "mesh": "default", "name": name,
                "spec": {"targetRef": {"kind": "Mesh"},
                         "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "7s"}}]}}
    assert api(glob, "PUT", "/meshes/default/meshtimeouts/t1", policy("t1")).status in (200, 201)
    wait_for("the policy reaching the zone (both instances read the shared store)",
             lambda: "t1" in zone_timeouts(follower), glob, leader, follower)
    assert "KDS zone client started" in leader.logs(400) and "KDS zone client started" not in follower.logs(400)
    assert "connected again" not in glob.logs(400)  # one stream pair for the zone: only the leader dials

    os.kill(leader.pid, signal.SIGKILL)
    leader.proc.wait()
    wait_for("the other instance taking over the election", lambda: is_leader(follower), glob, follower)
    assert api(glob, "PUT", "/meshes/default/meshtimeouts/t2", policy("t2")).status in (200, 201)
    wait_for("a policy made after the failover reaching the zone", lambda: "t2" in zone_timeouts(follower),
             glob, follower)


def test_a_standalone_zone_joins_global_adopting_its_mesh_and_a_resource_global_cannot_take_is_nacked(
        tmp_path: Path, started: list[CpProcess]) -> None:
    # A zone that ran standalone: its own `default` mesh (with default policies), a mesh global will not
    # have, and a dataplane in each.
    standalone = start_cp(tmp_path / "zone")
    started.append(standalone)

    def dp(name: str, mesh: str) -> dict[str, Any]:
        return {"type": "Dataplane", "mesh": mesh, "name": name,
                "networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": name}}]}}
    assert api(standalone, "PUT", "/meshes/legacy", {"type": "Mesh", "name": "legacy"}).status in (200, 201)
    assert api(standalone, "PUT", "/meshes/legacy/dataplanes/old-app", dp("old-app", "legacy")).status in (200, 201)
    assert api(standalone, "PUT", "/meshes/default/dataplanes/app-1", dp("app-1", "default")).status in (200, 201)
    assert "kuma.io/origin" not in api(standalone, "GET", "/meshes/default").json.get("labels", {})
    standalone.stop()

    kds_port = free_port()
    glob = start_cp(tmp_path / "global",
                    **global_env(kds_port, KUMA_MULTIZONE_GLOBAL_KDS_ZONE_INSIGHT_FLUSH_INTERVAL="1"))
    started.append(glob)
    zone = start_cp(tmp_path / "zone", **zone_env(glob, kds_port, "zone-1", tmp_path,
                                                   **{k: str(v) for k, v in standalone.ports.items()}))
    started.append(zone)

    # The zone's own `default` mesh is global's now (one definition in every zone), and so are the default
    # policies it made for it.
    wait_for("global's default mesh replacing the zone's own",
             lambda: api(zone, "GET", "/meshes/default").json.get("labels", {}).get("kuma.io/origin") == "global",
             glob, zone)
    wait_for("global's default policies replacing the zone's own",
             lambda: (items := api(zone, "GET", "/meshes/default/meshtimeouts").json["items"])
             and all(i.get("labels", {}).get("kuma.io/origin") == "global" for i in items), glob, zone)
    # The mesh global does not have stays in the zone, and so does its dataplane.
    assert api(zone, "GET", "/meshes/legacy/dataplanes/old-app").status == 200
    # The dataplane in `default` reaches global; the one in `legacy` is refused (NACK, with the reason) while
    # the rest of the batch applies.
    wait_for("the zone's dataplane in a mesh global has reaching it",
             lambda: zone_dataplane_names(glob) == {"app-1"}, glob, zone)
    wait_for("the refusal of the dataplane whose mesh global lacks, seen by the zone",
             lambda: "KDS peer rejected resources (NACK)" in zone.logs(400)
             and "mesh 'legacy' does not exist here" in zone.logs(400), glob, zone)
    assert api(glob, "GET", "/meshes/legacy").status == 404
    assert "create the mesh on global" in glob.logs(400)
    # ... and global's ZoneInsight records the rejection with its reason.
    nack = wait_for("the rejection in zone-1's ZoneInsight",
                    lambda: (r := api(glob, "GET", "/zones/zone-1/_overview")).status == 200
                    and r.json["zoneInsight"]["subscriptions"][-1]["status"]["stat"].get("Dataplane", {})
                    .get("resourcesRejected") and r.json["zoneInsight"]["subscriptions"][-1]["status"]["stat"]
                    ["Dataplane"], glob, zone)
    assert "mesh 'legacy' does not exist here" in nack["lastNack"]
    # The fix the refusal names: the mesh made on global. The zone sends the refused dataplane again (after
    # its back-off) although it did not change, and global takes it.
    assert api(glob, "PUT", "/meshes/legacy", {"type": "Mesh", "name": "legacy"}).status in (200, 201)
    wait_for("the refused dataplane reaching global once its mesh exists there",
             lambda: (r := api(glob, "GET", "/meshes/legacy/dataplanes")).status == 200
             and [i["labels"]["kuma.io/display-name"] for i in r.json["items"]] == ["old-app"], glob, zone)


def test_global_serves_no_dataplanes_and_says_where_to_go(cp_factory: Callable[..., CpProcess],
                                                           tmp_path: Path) -> None:
    from tests.integration.test_kuma_dp_support import dataplane_doc, start_kuma_dp

    glob = cp_factory(**global_env(free_port()))
    # A valid token for the dataplane (global can issue one): the refusal is about where kuma-dp connects.
    token = api(glob, "POST", "/tokens/dataplane", {"mesh": "default", "name": "web-1"})
    assert token.status == 200, token.raw
    dp = start_kuma_dp(tmp_path / "dp", name="web-1", cp=glob, token=token.raw.decode(),
                       definition=dataplane_doc("web-1", "web", app_port=free_port(), inbound_port=free_port()))
    try:
        status = dp.wait_exit(60)
        assert status not in (0, None), dp.logs()
        assert "global control plane: it serves no dataplanes" in dp.logs() and "zone control plane" in dp.logs()
    finally:
        dp.stop()
    assert "refused a dataplane call" in glob.logs(200)
    # No DNS server and no VIP allocation on global.
    assert "DNS server listening" not in glob.logs(400) and "vip" not in glob.logs(400).lower()
    assert api(glob, "GET", "/meshes/default/vips").status == 404


def test_zone_status_on_both_sides_zone_insight_and_kumactl_inspect_zones(tmp_path: Path,
                                                                         started: list[CpProcess]) -> None:
    from tests.integration.test_kumactl import failed, kumactl, ok

    kds_port = free_port()
    glob = start_cp(tmp_path / "global",
                    **global_env(kds_port, KUMA_MULTIZONE_GLOBAL_KDS_ZONE_INSIGHT_FLUSH_INTERVAL="1",
                                 KUMA_MULTIZONE_GLOBAL_KDS_ZONE_OFFLINE_GRACE_PERIOD="2"))
    started.append(glob)
    zone = start_cp(tmp_path / "zone", **zone_env(glob, kds_port, "zone-1", tmp_path))
    started.append(zone)
    link = wait_for("the zone connected, in its GET /",
                    lambda: (d := api(zone, "GET", "/").json)["global"]["state"] == "connected" and d, glob, zone)
    assert link["mode"] == "zone" and link["zone"] == "zone-1"
    assert link["global"]["address"] == f"grpcs://127.0.0.1:{kds_port}" and link["global"]["connectedSince"]
    assert api(glob, "GET", "/").json["mode"] == "global"

    def overview() -> dict[str, Any]:
        r = api(glob, "GET", "/zones/zone-1/_overview")
        return r.json if r.status == 200 else {}
    item = wait_for("zone-1 Online on global, with what was synced",
                    lambda: (o := overview()).get("status") == "Online"
                    and (o["zoneInsight"].get("subscriptions") or [{}])[-1].get("status", {}).get("stat", {})
                    .get("Mesh", {}).get("responsesAcknowledged") and o, glob, zone)
    insight = item["zoneInsight"]
    assert insight["environment"] == "universal"
    [sub] = insight["subscriptions"]
    assert sub["globalInstanceId"] and sub["version"]["kumaCp"]["version"] and "disconnectTime" not in sub

    # Metrics on both sides: open streams, responses, and the lag from a change on global to the zone's ACK.
    policy = {"type": "MeshTimeout", "mesh": "default", "name": "lagged",
              "spec": {"targetRef": {"kind": "Mesh"},
                       "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "7s"}}]}}
    assert api(glob, "PUT", "/meshes/default/meshtimeouts/lagged", policy).status in (200, 201)

    def metric(cp: CpProcess, name: str) -> float:
        text = urllib.request.urlopen(cp.diagnostics_url + "/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
    wait_for("the policy's sync lag measured on global",
             lambda: metric(glob, 'kuma_cp_kds_sync_lag_seconds_count{side="global",type="MeshTimeout"}') >= 1,
             glob, zone)
    assert metric(glob, 'kuma_cp_kds_streams_open{side="global"') == 2
    assert metric(zone, 'kuma_cp_kds_streams_open{side="zone"') == 2
    assert metric(zone, 'kuma_cp_kds_responses_received_total{side="zone",type="Mesh"}') >= 1
    assert metric(zone, 'kuma_cp_kds_responses_sent_total{side="zone",type="Dataplane"}') >= 1

    config = tmp_path / "kumactl.yaml"
    ok(kumactl("config", "control-planes", "add", "--name", "global", "--address", glob.http_url, config=config))
    table = ok(kumactl("inspect", "zones", config=config))
    assert "zone-1" in table and "Online" in table and "universal" in table, table
    listed = ok(kumactl("get", "zones", config=config)).splitlines()
    assert listed[0].split()[:3] == ["NAME", "ENABLED", "STATUS"] and listed[1].split()[:3] == ["zone-1", "true",
                                                                                              "Online"], listed
    zone_config = tmp_path / "kumactl-zone.yaml"
    ok(kumactl("config", "control-planes", "add", "--name", "zone", "--address", zone.http_url, config=zone_config))
    assert "known to the global control plane" in failed(kumactl("inspect", "zones", config=zone_config))

    # Deleting the Zone of a connected zone closes its streams and deletes its insight (subscription history
    # included); the zone, still running with a valid token, registers again as a new Zone with a new insight.
    old_ids = {sub["id"] for sub in api(glob, "GET", "/zone-insights/zone-1").json["subscriptions"]}
    assert api(glob, "DELETE", "/zones/zone-1").status == 200
    wait_for("the deleted zone's streams closed", lambda: "was deleted on global" in glob.logs(400), glob, zone)
    wait_for("the zone's old insight deleted", lambda: "deleted the zone's insight with its Zone" in glob.logs(400),
             glob, zone)
    item = wait_for("zone-1 registered again, Online, with a new insight",
                    lambda: (o := overview()).get("status") == "Online" and o, glob, zone)
    assert not {sub["id"] for sub in item["zoneInsight"]["subscriptions"]} & old_ids, item

    # The zone goes away: its subscription ends, and after the grace period the zone is Offline.
    os.kill(zone.pid, signal.SIGKILL)
    zone.proc.wait()
    item = wait_for("zone-1 Offline after the grace period", lambda: (o := overview()).get("status") == "Offline"
                    and o, glob)
    assert item["zoneInsight"]["subscriptions"][-1]["disconnectTime"]
    assert "Offline" in ok(kumactl("inspect", "zones", config=config))
    assert ok(kumactl("get", "zones", config=config)).splitlines()[1].split()[:3] == ["zone-1", "true", "Offline"]

    # Deleting an offline zone's Zone deletes its insight too.
    assert api(glob, "DELETE", "/zones/zone-1").status == 200
    wait_for("the offline zone's insight deleted", lambda: api(glob, "GET", "/zone-insights/zone-1").status == 404,
             glob)
    assert api(glob, "GET", "/zones/zone-1/_overview").status == 404
    assert "zone-1" not in ok(kumactl("inspect", "zones", config=config))
