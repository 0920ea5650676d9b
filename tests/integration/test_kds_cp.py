"""Multi-zone with real kuma-cp processes on loopback: one global, one zone (sqlite each), joined over KDS."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.api_client import Reply, call
from tests.integration.cp_process import CpProcess
from tests.ports import free_port

WAIT = 60.0  # a bound on a hung test (two processes on a shared 2-core machine), not a timing assertion


def wait_for(what: str, check: Callable[[], Any], *cps: CpProcess) -> Any:
    """Poll another process's API until `check()` is truthy; there is no event to wait on across processes."""
    deadline = time.monotonic() + WAIT
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            logs = "\n\n".join(cp.logs(40) for cp in cps)
            raise AssertionError(f"{what} did not happen within {WAIT:g}s:\n{logs}")
        time.sleep(0.2)


def api(cp: CpProcess, method: str, path: str, body: Any = None) -> Reply:
    return call(method, cp.http_url + path, body)


def test_a_zone_joins_global_and_resources_flow_both_ways(cp_factory: Callable[..., CpProcess],
                                                          tmp_path: Path) -> None:
    kds_port = free_port()
    glob = cp_factory(KUMA_MODE="global", KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT=str(kds_port),
                      KUMA_MULTIZONE_GLOBAL_KDS_INTERFACE="127.0.0.1")
    r = api(glob, "POST", "/tokens/zone", {"zone": "zone-1", "scope": ["cp"]})
    assert r.status == 200, r.raw
    token_file = tmp_path / "zone-1.token"
    token_file.write_bytes(r.raw)
    zone = cp_factory(KUMA_MULTIZONE_ZONE_NAME="zone-1",
                      KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS=f"grpcs://127.0.0.1:{kds_port}",
                      KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE=str(glob.ca_file),
                      KUMA_MULTIZONE_ZONE_KDS_AUTH_CP_TOKEN_PATH=str(token_file))

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

    assert api(glob, "DELETE", "/meshes/default/meshtimeouts/t1").status == 200
    wait_for("the policy's deletion reaching the zone",
             lambda: api(zone, "GET", "/meshes/default/meshtimeouts/t1").status == 404, glob, zone)
    assert api(zone, "DELETE", "/meshes/default/dataplanes/backend-1").status == 200
    wait_for("the dataplane's deletion reaching global", lambda: not zone_dataplanes(), glob, zone)
