"""Cross-zone propagation: a new service registered in zone-2 until a caller's Envoy in zone-1 has its endpoint.

Real processes on loopback: a global and two zone kuma-cp (SQLite), a mesh with mTLS (cross-zone traffic needs
it), a ZoneIngress in zone-2, and in zone-1 a real Envoy that owns its host's VIPs (so it gets a cluster for
every service of the mesh, remote ones included). Each round registers a Dataplane of a new service in zone-2
and follows it hop by hop, polling each process's API every few milliseconds:

  zone-2: the Dataplane -> zone-2's ingress lists the service (availableServices, the zone's upkeep)
  KDS up: zone-2 -> global's copy of the ingress lists it
  KDS down: global -> zone-1's copy lists it
  zone-1: zone-1's topology -> the caller Envoy's cluster has the remote endpoint (its /clusters)

Baseline in the same run: a new service registered in zone-1 itself until the same Envoy has its endpoint
(the single-zone path). Reported: p50/p99 of the total and of each hop, the ratio to the baseline; target
p99 <= 500 ms for the whole path.

    .venv/bin/python bench/bench_crosszone.py [--rounds 20] [--json-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `controlplane` importable

from bench._common import Cleanup, dump_json, install_signal_handlers, render_table, summary, verdict
from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.envoy_harness import EnvoyProcess, start_envoy
from tests.integration.kds_harness import global_env, zone_env
from tests.integration.mesh_harness import MeshHarness
from tests.integration.test_kuma_dp_support import ALLOW_ALL, MTLS_MESH
from tests.ports import free_port

TARGET_P99_MS = 500.0
POLL = 0.003
WAIT = 60.0
HOPS = ("zone-2", "kds-up", "kds-down", "zone-1")


def api(cp: CpProcess, method: str, path: str, body: Any = None) -> Any:
    reply = call(method, cp.http_url + path, body)
    if reply.status >= 300:
        raise RuntimeError(f"{method} {path}: {reply.status} {reply.raw[:300]!r}")
    return reply.json if reply.raw else None


def offers(cp: CpProcess, service: str, zone: str) -> bool:
    """Whether `cp`'s copy of a zone's ingress lists `service`."""
    for ingress in api(cp, "GET", "/zone-ingresses?size=1000")["items"]:
        if ingress.get("zone") == zone and any(s["tags"].get("kuma.io/service") == service
                                               for s in ingress.get("availableServices", [])):
            return True
    return False


def has_endpoint(envoy: EnvoyProcess, service: str) -> bool:
    with urllib.request.urlopen(envoy.admin_url + "/clusters?format=json", timeout=5) as resp:
        doc = json.loads(resp.read())
    for cluster in doc.get("cluster_statuses", []):
        if cluster.get("name") == service and cluster.get("host_statuses"):
            return True
    return False


def wait(check: Callable[[], bool], what: str) -> float:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {WAIT:g}s")
        time.sleep(POLL)
    return time.monotonic()


def dataplane(name: str, service: str) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": free_port(), "servicePort": free_port(),
                     "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}]}}


def run(args: argparse.Namespace, cleanup: Cleanup, tmp: Path) -> dict[str, Any]:
    kds_port = free_port()
    glob = start_cp(tmp / "global", **global_env(kds_port))
    cleanup.push(glob.stop, "global kuma-cp")
    zones = {}
    for name in ("zone-1", "zone-2"):
        zones[name] = start_cp(tmp / name, **zone_env(glob, kds_port, name, tmp))
        cleanup.push(zones[name].stop, f"{name} kuma-cp")
    mesh, allow = yaml.safe_load(MTLS_MESH), yaml.safe_load(ALLOW_ALL)
    api(glob, "PUT", "/meshes/default", mesh)
    api(glob, "PUT", "/meshes/default/meshtrafficpermissions/allow-all", allow)
    for zone in zones.values():
        wait(lambda z=zone: bool((api(z, "GET", "/meshes/default") or {}).get("mtls")), "the mTLS mesh in a zone")
    api(zones["zone-2"], "PUT", "/zone-ingresses/ingress-z2",
        {"type": "ZoneIngress", "name": "ingress-z2", "networking": {"address": "127.0.0.1", "port": free_port()}})

    def envoy_factory(bootstrap: dict[str, Any], name: str) -> EnvoyProcess:
        envoy = start_envoy(bootstrap, tmp / "envoys", name=name, log_level="warning")
        cleanup.push(envoy.stop, f"envoy {name}")
        return envoy

    zone1 = MeshHarness(zones["zone-1"], envoy_factory, app_factory=lambda *a, **k: None)  # type: ignore[arg-type]
    caller = zone1.dataplane("caller", "caller", app_port=free_port(), vip_listeners=True).envoy

    cross: dict[str, list[float]] = {h: [] for h in (*HOPS, "total")}
    local: list[float] = []
    for r in range(args.rounds):
        service = f"remote-{r}"
        t0 = time.monotonic()
        api(zones["zone-2"], "PUT", f"/meshes/default/dataplanes/{service}-1", dataplane(f"{service}-1", service))
        t1 = wait(lambda s=service: offers(zones["zone-2"], s, "zone-2"), f"{service} on zone-2's ingress")
        t2 = wait(lambda s=service: offers(glob, s, "zone-2"), f"{service} on global's copy of the ingress")
        t3 = wait(lambda s=service: offers(zones["zone-1"], s, "zone-2"), f"{service} on zone-1's copy")
        t4 = wait(lambda s=service: has_endpoint(caller, s), f"{service}'s endpoint in the caller's Envoy")
        for hop, (a, b) in zip(HOPS, ((t0, t1), (t1, t2), (t2, t3), (t3, t4)), strict=True):
            cross[hop].append((b - a) * 1000)
        cross["total"].append((t4 - t0) * 1000)
        service = f"local-{r}"
        t0 = time.monotonic()
        api(zones["zone-1"], "PUT", f"/meshes/default/dataplanes/{service}-1", dataplane(f"{service}-1", service))
        local.append((wait(lambda s=service: has_endpoint(caller, s), f"{service} in the caller") - t0) * 1000)
        time.sleep(args.gap)
    total, base = summary(cross["total"]), summary(local)
    return {
        "rounds": args.rounds,
        "crossZoneMs": {h: summary(v) for h, v in cross.items()},
        "localMs": base,
        "ratioToLocal": {"p50": total["p50"] / base["p50"], "p99": total["p99"] / base["p99"]},
        "hopShareOfMedian": {h: summary(cross[h])["p50"] / total["p50"] for h in HOPS},
        "target": {"p99Ms": TARGET_P99_MS, "verdict": verdict(total["p99"], TARGET_P99_MS)},
    }


def table(doc: dict[str, Any]) -> str:
    rows: list[list[Any]] = [["path", "p50 ms", "p99 ms", "share of p50"]]
    for hop in HOPS:
        s = doc["crossZoneMs"][hop]
        rows.append([f"  {hop}", f"{s['p50']:.0f}", f"{s['p99']:.0f}", f"{doc['hopShareOfMedian'][hop]:.0%}"])
    t = doc["crossZoneMs"]["total"]
    rows.append(["cross-zone total", f"{t['p50']:.0f}", f"{t['p99']:.0f}", "100%"])
    rows.append(["local (baseline)", f"{doc['localMs']['p50']:.0f}", f"{doc['localMs']['p99']:.0f}", ""])
    rows.append(["ratio to local", f"{doc['ratioToLocal']['p50']:.1f}x", f"{doc['ratioToLocal']['p99']:.1f}x", ""])
    target = doc["target"]
    return render_table(rows) + f"\n\ncross-zone p99 <= {target['p99Ms']:.0f} ms: {target['verdict']}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between rounds (let the zones settle)")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    install_signal_handlers()
    with tempfile.TemporaryDirectory(prefix="bench-crosszone-") as tmp, Cleanup() as cleanup:
        doc = run(args, cleanup, Path(tmp))
    print(dump_json(doc))
    if not args.json_only:
        print(table(doc))


if __name__ == "__main__":
    main()
