"""Multi-zone down to the Envoys: one global and two zone kuma-cp processes, a real kuma-dp + Envoy per zone.

A policy applied on global ends up in the Envoy config of each zone's dataplane; the zones' dataplanes (and
their insights) show on global with their zone labels; with global killed, a zone still registers a new
dataplane and configures its Envoy, and global learns of it when it returns.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.kds_harness import api, global_env, wait_for, zone_env
from tests.integration.test_kuma_dp_support import (  # noqa: F401  (dp_factory: fixture)
    ALLOW_ALL,
    MTLS_MESH,
    DpMesh,
    DpProcess,
    dp_factory,
    http,
)
from tests.ports import free_port

# A value no default carries, so finding it in a config dump proves the policy got there.
IDLE = "4321s"
POLICY = {"type": "MeshTimeout", "mesh": "default", "name": "from-global",
          "spec": {"targetRef": {"kind": "Mesh"},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": IDLE}}]}}


def config_dump(dp: DpProcess) -> str:
    with urllib.request.urlopen(dp.admin_url() + "/config_dump", timeout=5) as resp:
        return str(resp.read().decode())


def has_policy(dp: DpProcess) -> bool:
    try:
        return f'"{IDLE}"' in config_dump(dp)
    except OSError:
        return False


def zone_dataplanes(glob: CpProcess, zone: str) -> dict[str, dict[str, Any]]:
    """Global's copies of a zone's dataplanes, by the name they have in the zone."""
    r = api(glob, "GET", "/meshes/default/dataplanes")
    if r.status != 200:
        return {}
    return {i["labels"]["kuma.io/display-name"]: i for i in r.json["items"]
            if i.get("labels", {}).get("kuma.io/zone") == zone}


def zone_insight_names(glob: CpProcess, zone: str) -> set[str]:
    r = api(glob, "GET", "/meshes/default/dataplane-insights")
    if r.status != 200:
        return set()
    return {i["labels"].get("kuma.io/display-name", "") for i in r.json["items"]
            if i.get("labels", {}).get("kuma.io/zone") == zone}


def start_global_and_zones(tmp_path: Path, started: list[CpProcess], *names: str
                           ) -> tuple[CpProcess, dict[str, CpProcess], dict[str, str]]:
    kds_port = free_port()
    env = global_env(kds_port)
    glob = start_cp(tmp_path / "global", **env)
    started.append(glob)
    zones: dict[str, CpProcess] = {}
    for name in names:
        zones[name] = start_cp(tmp_path / name, **zone_env(glob, kds_port, name, tmp_path,
                                                            KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1"))
        started.append(zones[name])
    all_cps = (glob, *zones.values())
    for zone in zones.values():  # the zones have no mesh of their own: global's default arrives over KDS
        wait_for("global's default mesh reaching the zone",
                 lambda z=zone: api(z, "GET", "/meshes/default").status == 200, *all_cps)
    return glob, zones, env


def test_global_policy_reaches_envoys_in_two_zones_and_a_zone_works_while_global_is_down(
        tmp_path: Path, started: list[CpProcess], app_factory: Callable[..., App],
        dp_factory: Callable[..., DpProcess]) -> None:  # noqa: F811
    glob, zones, env = start_global_and_zones(tmp_path, started, "zone-1", "zone-2")
    all_cps = (glob, *zones.values())

    # One caller per zone, with an outbound to a service of its zone, run by a real kuma-dp.
    meshes = {name: DpMesh(zone, app_factory, dp_factory) for name, zone in zones.items()}
    for name, mesh in meshes.items():  # names differ by zone: the kuma-dps share one host here
        mesh.service("backend", name=f"backend-{name}")
        mesh.service("web", name=f"web-{name}", outbounds={"backend": 0})
    assert api(glob, "PUT", "/meshes/default/meshtimeouts/from-global", POLICY).status in (200, 201)
    for name, mesh in meshes.items():
        wait_for(f"the global policy in the Envoy config of the web dataplane in {name}",
                 lambda m=mesh, n=name: has_policy(m.dp(f"web-{n}")), *all_cps)
        got = api(zones[name], "GET", "/meshes/default/meshtimeouts/from-global").json
        assert got["labels"]["kuma.io/origin"] == "global"

    # Each zone's dataplanes are on global, labelled with their zone, and so are their insights.
    for name in zones:
        found = wait_for(f"{name}'s dataplanes on global",
                         lambda n=name: (d := zone_dataplanes(glob, n)) and set(d) == {f"backend-{n}", f"web-{n}"}
                         and d,
                         *all_cps)
        assert all(d["labels"]["kuma.io/origin"] == "zone" and d["name"] != d["labels"]["kuma.io/display-name"]
                   for d in found.values())  # stored under a zone-qualified name
        wait_for(f"{name}'s dataplane insights on global",
                 lambda n=name: {f"backend-{n}", f"web-{n}"} <= zone_insight_names(glob, n), *all_cps)

    # Global killed: zone-1 keeps serving, registers a new dataplane and configures its Envoy.
    os.kill(glob.pid, signal.SIGKILL)
    glob.proc.wait()
    late = meshes["zone-1"].service("late", outbounds={"backend": 0})
    wait_for("the policy (kept by the zone) in a dataplane registered while global is down",
             lambda: has_policy(late.dp), *zones.values())
    assert json.loads(api(zones["zone-1"], "GET", "/meshes/default/dataplanes/late-1").raw)["name"] == "late-1"

    # Global back (same state, same ports): it learns of the new dataplane.
    again = start_cp(tmp_path / "global", **{**{k: str(v) for k, v in glob.ports.items()}, **env})
    started.append(again)
    wait_for("the dataplane registered while global was down reaching it",
             lambda: "late-1" in zone_dataplanes(again, "zone-1"), again, *zones.values())


def secret_data(cp: CpProcess, name: str) -> str | None:
    r = api(cp, "GET", f"/meshes/default/secrets/{name}")
    return r.json["data"] if r.status == 200 else None


def test_one_mesh_has_one_trust_root_in_every_zone(tmp_path: Path, started: list[CpProcess],
                                                  app_factory: Callable[..., App],
                                                  dp_factory: Callable[..., DpProcess]) -> None:  # noqa: F811
    glob, zones, _ = start_global_and_zones(tmp_path, started, "zone-1", "zone-2")
    all_cps = (glob, *zones.values())
    for doc in (MTLS_MESH, ALLOW_ALL):
        body = yaml.safe_load(doc)
        path = "/meshes/default" if body["type"] == "Mesh" else "/meshes/default/meshtrafficpermissions/allow-all"
        assert api(glob, "PUT", path, body).status in (200, 201)
    # The CA is made on global and the same pair reaches both zones (and nothing else of global's secrets).
    cert = wait_for("the mesh CA made on global", lambda: secret_data(glob, "default.ca-builtin-cert-ca-1"), glob)
    key = secret_data(glob, "default.ca-builtin-key-ca-1")
    for name, zone in zones.items():
        wait_for(f"global's CA pair in {name}",
                 lambda z=zone: secret_data(z, "default.ca-builtin-cert-ca-1") == cert
                 and secret_data(z, "default.ca-builtin-key-ca-1") == key, *all_cps)
        held = {i["name"] for i in api(zone, "GET", "/meshes/default/secrets").json["items"]
                if i.get("labels", {}).get("kuma.io/origin") == "global"}
        assert held == {"default.ca-builtin-cert-ca-1", "default.ca-builtin-key-ca-1"}, held
    # mTLS traffic in each zone runs on identities signed by that CA (the zones made none of their own).
    for name, zone in zones.items():
        mesh = DpMesh(zone, app_factory, dp_factory)
        mesh.service("backend", name=f"backend-{name}")
        port = mesh.service("web", name=f"web-{name}", outbounds={"backend": 0}).outbounds["backend"]
        _, body = wait_for(f"web -> backend over mTLS in {name}",
                           lambda p=port: (r := http(p)) and r[0] == 200 and r, *all_cps)
        assert "URI=spiffe://default/web" in body["headers"]["x-forwarded-client-cert"]
        assert "builtin CA created" not in zone.logs(100000)
