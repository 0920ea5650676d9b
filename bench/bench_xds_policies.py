"""Traffic policies and the control plane's rebuild cost: a mesh of 200 services with every policy type
present, next to the same mesh with no policies. The generators run in-process, exactly as the reconciler
runs them (topology built once per change, `memo.begin()`, every proxy's snapshot, `memo.end()`), so the
numbers are the control plane's own work, without the network.

Mesh: `--services` services (80% http, 10% tcp, 10% grpc), each with two dataplanes (version v1 and v2),
each dataplane calling the next `--outbounds` services; mTLS on, with an allow-all MeshTrafficPermission.
With policies: Kuma's four default policies (MeshTimeout x2, MeshRetry, MeshCircuitBreaker), a mesh-wide
MeshHealthCheck, and for every tenth service a MeshHTTPRoute 80/20 split by version (or a MeshTCPRoute for
tcp services), a MeshTimeout, a MeshRetry, a MeshCircuitBreaker and a RingHash MeshLoadBalancingStrategy of
its own.

Measured (CPU time of the bench process, median of `--rounds` rounds that interleave the runs without and
with policies; ratios are medians of per-round ratios, so a busy machine skews both sides alike):
- cold build: every proxy's snapshot from an empty memo;
- rebuild after one change: the reconciler's work after one store event. Without policies the change is
  one Dataplane's version tag (the mesh's config for callers unchanged), with policies it is one
  MeshTimeout's request timeout for one service (`svc-010`); plus, with policies, a rebuild where nothing
  changed, to show what computing the policy summaries costs by itself;
- pushes: which proxies' snapshots changed after the policy change (they must be exactly the callers of
  that service: the proxies the policy selects), and the bytes pushed to each (Delta: the changed
  resources; SotW: every resource of each changed type);
- config size per proxy (bytes of its whole snapshot) with and without policies.

Target (issue): policies add no more than 2x to rebuild time, and push only to the proxies they select.
Read ratios, not absolutes: the machine is noisy.

    .venv/bin/python bench/bench_xds_policies.py [--services 200] [--outbounds 10] [--rounds 5] [--json-only]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make the repository importable

from controlplane.policies._defaults import default_policies
from controlplane.resources import Resource, from_wire, load_all
from controlplane.xds.generate.context import Identity, ProxyContext
from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.generate.proxy import generate_snapshot
from controlplane.xds.resources import TYPE_ORDER
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.topology import MeshTopology, build_topology

load_all()
MESH = "bench"
CA = b"-----BEGIN CERTIFICATE-----\nBENCH\n-----END CERTIFICATE-----\n"
CHANGED_SERVICE = "svc-010"


def protocol(i: int) -> str:
    return "tcp" if i % 10 == 3 else "grpc" if i % 10 == 7 else "http"


def dataplanes(services: int, outbounds: int, bump: int = 0) -> list[Resource]:
    out = []
    for i in range(services):
        for v in (1, 2):
            n = 2 * i + v
            tags = {"kuma.io/service": f"svc-{i:03d}", "kuma.io/protocol": protocol(i), "version": f"v{v}"}
            if bump and i == 0 and v == 1:
                tags["build"] = str(bump)  # a change that does not alter what callers get
            out.append(from_wire({
                "type": "Dataplane", "mesh": MESH, "name": f"svc-{i:03d}-v{v}",
                "networking": {
                    "address": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
                    "inbound": [{"port": 8080, "servicePort": 80, "tags": tags}],
                    "outbound": [{"port": 20000 + j, "tags": {"kuma.io/service": f"svc-{(i + j) % services:03d}"}}
                                 for j in range(1, outbounds + 1)],
                },
            }))
    return out


def policy(kind: str, name: str, spec: dict[str, Any]) -> Resource:
    return from_wire({"type": kind, "mesh": MESH, "name": name, "spec": spec})


def policies(services: int, request_timeout: str = "2s") -> list[Resource]:
    mesh = from_wire({"type": "Mesh", "name": MESH})
    out = list(default_policies(mesh))
    out.append(policy("MeshTrafficPermission", "allow-all", {
        "targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}))
    check = {"interval": "10s", "timeout": "2s", "http": {"path": "/health"}}
    out.append(policy("MeshHealthCheck", "health-all", {"targetRef": {"kind": "Mesh"}, "to": [
        {"targetRef": {"kind": "Mesh"}, "default": check}]}))
    for i in range(0, services, 10):
        svc = f"svc-{i:03d}"
        to = {"kind": "MeshService", "name": svc}
        split = [{"kind": "MeshServiceSubset", "name": svc, "tags": {"version": "v1"}, "weight": 80},
                 {"kind": "MeshServiceSubset", "name": svc, "tags": {"version": "v2"}, "weight": 20}]
        if protocol(i) == "tcp":
            out.append(policy("MeshTCPRoute", f"split-{svc}", {"targetRef": {"kind": "Mesh"}, "to": [
                {"targetRef": to, "rules": [{"default": {"backendRefs": split}}]}]}))
        else:
            out.append(policy("MeshHTTPRoute", f"split-{svc}", {"targetRef": {"kind": "Mesh"}, "to": [
                {"targetRef": to, "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                     "default": {"backendRefs": split}},
                    {"matches": [{"headers": [{"name": "x-canary", "value": "true"}]}],
                     "default": {"backendRefs": split[1:]}}]}]}))
        out.append(policy("MeshTimeout", f"timeout-{svc}", {"targetRef": {"kind": "Mesh"}, "to": [
            {"targetRef": to, "default": {"connectionTimeout": "2s",
                                          "http": {"requestTimeout": request_timeout if i == 10 else "3s"}}}]}))
        out.append(policy("MeshRetry", f"retry-{svc}", {"targetRef": {"kind": "Mesh"}, "to": [
            {"targetRef": to, "default": {"http": {"numRetries": 2, "retryOn": ["5xx", "503"]},
                                          "tcp": {"maxConnectAttempt": 2}}}]}))
        out.append(policy("MeshCircuitBreaker", f"cb-{svc}", {"targetRef": {"kind": "Mesh"}, "to": [
            {"targetRef": to, "default": {"outlierDetection": {"detectors": {"totalFailures": {"consecutive": 5}}}}}]}))
        out.append(policy("MeshLoadBalancingStrategy", f"lb-{svc}", {"targetRef": {"kind": "Mesh"}, "to": [
            {"targetRef": to, "default": {"loadBalancer": {"type": "RingHash", "ringHash": {
                "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}]}}}}]}))
    return out


def topology(dps: list[Resource], pols: list[Resource], generation: int) -> MeshTopology:
    mesh = from_wire({"type": "Mesh", "name": MESH, "skipCreatingInitialPolicies": ["*"],
                      "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})
    by_type: dict[str, list[Resource]] = {}
    for p in pols:
        by_type.setdefault(p.type.name, []).append(p)
    return build_topology(mesh, dps, by_type, generation, CA)


IDENTITIES: dict[str, Identity] = {}


def rebuild(dps: list[Resource], pols: list[Resource], generation: int, memo: ResourceMemo
            ) -> tuple[float, dict[str, Snapshot]]:
    """The reconciler's work for one mesh after one change: topology, then every proxy. Returns CPU seconds
    of this process (the work is single-threaded and CPU-bound: CPU time does not count the time other
    processes of a busy machine take) and the snapshots."""
    gc.collect()
    started = time.process_time()
    topo = topology(dps, pols, generation)
    memo.begin()
    snaps = {}
    for name, dp in topo.dataplanes.items():
        identity = IDENTITIES.setdefault(name, Identity(b"CERT " + name.encode(), b"KEY", name))
        snaps[name] = generate_snapshot(ProxyContext(topo, dp, identity, memo))
    memo.end()
    return time.process_time() - started, snaps


def snapshot_bytes(snap: Snapshot) -> int:
    return sum(len(r.body) for t in TYPE_ORDER for r in snap.of_type(t).values())


def pushed(before: dict[str, Snapshot], after: dict[str, Snapshot]) -> dict[str, dict[str, int]]:
    """Per proxy whose config changed: bytes of the changed resources (Delta) and of every resource of the
    changed types (SotW)."""
    out = {}
    for name, snap in after.items():
        old = before[name]
        delta = sotw = 0
        for t in TYPE_ORDER:
            if snap.version(t) == old.version(t):
                continue
            new, prev = snap.of_type(t), old.of_type(t)
            delta += sum(len(r.body) for n, r in new.items() if n not in prev or prev[n].hash != r.hash)
            sotw += sum(len(r.body) for r in new.values())
        if delta or sotw:
            out[name] = {"delta": delta, "sotw": sotw}
    return out


def measure(services: int, outbounds: int, rounds: int) -> dict[str, Any]:
    dps = dataplanes(services, outbounds)
    pols = policies(services)
    proxies = len(dps)

    # Rounds interleave the runs without and with policies, so both see the same machine; ratios are taken
    # per round, then the median.
    cold_plain, cold_pol, change_plain, change_pol, nothing_pol = [], [], [], [], []
    memo_plain, memo_pol = ResourceMemo(), ResourceMemo()
    _, plain = rebuild(dps, [], 0, memo_plain)
    _, with_pol = rebuild(dps, pols, 0, memo_pol)
    before = with_pol
    first_push: dict[str, dict[str, int]] = {}
    for r in range(rounds):
        cold_plain.append(rebuild(dps, [], 1000 + r, ResourceMemo())[0])
        cold_pol.append(rebuild(dps, pols, 1000 + r, ResourceMemo())[0])
        change_plain.append(rebuild(dataplanes(services, outbounds, bump=r + 1), [], 100 + r, memo_plain)[0])
        changed = policies(services, request_timeout=f"{r + 5}s")  # a new value each round: a real change
        t, after = rebuild(dps, changed, 100 + r, memo_pol)
        change_pol.append(t)
        if r == 0:
            first_push = pushed(before, after)
        nothing_pol.append(rebuild(dps, changed, 200 + r, memo_pol)[0])

    def ratio(a: list[float], b: list[float]) -> float:
        return statistics.median(y / x for x, y in zip(a, b, strict=True))

    callers = {dp.meta.name for dp in dps
               if any(o.service == CHANGED_SERVICE for o in dp.spec.networking.outbound)}  # type: ignore[attr-defined]
    got = set(first_push)
    sizes_plain = [snapshot_bytes(s) for s in plain.values()]
    sizes_pol = [snapshot_bytes(s) for s in with_pol.values()]
    return {
        "mesh": {"services": services, "dataplanes": proxies, "outbounds_per_proxy": outbounds,
                 "policies": len(pols), "policy_types": sorted({p.type.name for p in pols})},
        "cpu_seconds": "medians over rounds; ratios are medians of per-round ratios",
        "cold_build_s": {"no_policies": statistics.median(cold_plain), "policies": statistics.median(cold_pol),
                         "ratio": ratio(cold_plain, cold_pol)},
        "rebuild_after_one_change_s": {
            "no_policies": statistics.median(change_plain), "policies": statistics.median(change_pol),
            "ratio": ratio(change_plain, change_pol),
            "policies_nothing_changed": statistics.median(nothing_pol), "target_ratio": 2.0,
            "verdict": "PASS" if ratio(change_plain, change_pol) <= 2.0 else "MISS"},
        "push_after_one_policy_change": {
            "changed": f"MeshTimeout timeout-{CHANGED_SERVICE} requestTimeout",
            "proxies_selected": len(callers), "proxies_pushed": len(got),
            "only_selected": got == callers,
            "verdict": "PASS" if got == callers else "MISS",
            "bytes_per_pushed_proxy_delta": statistics.median([p["delta"] for p in first_push.values()] or [0]),
            "bytes_per_pushed_proxy_sotw": statistics.median([p["sotw"] for p in first_push.values()] or [0]),
        },
        "config_bytes_per_proxy": {"no_policies": statistics.median(sizes_plain),
                                   "policies": statistics.median(sizes_pol),
                                   "ratio": statistics.median(sizes_pol) / statistics.median(sizes_plain)},
    }


def table(result: dict[str, Any]) -> str:
    rebuild_ = result["rebuild_after_one_change_s"]
    push = result["push_after_one_policy_change"]
    size = result["config_bytes_per_proxy"]
    cold = result["cold_build_s"]
    rows: list[Sequence[Any]] = [
        ("measure", "no policies", "every policy type", "ratio", "verdict"),
        ("cold build, all proxies (ms)", f"{cold['no_policies'] * 1000:.0f}", f"{cold['policies'] * 1000:.0f}",
         f"{cold['ratio']:.2f}x", ""),
        ("rebuild after one change (ms)", f"{rebuild_['no_policies'] * 1000:.0f}",
         f"{rebuild_['policies'] * 1000:.0f}", f"{rebuild_['ratio']:.2f}x", f"{rebuild_['verdict']} (<= 2x)"),
        ("rebuild, nothing changed (ms)", "", f"{rebuild_['policies_nothing_changed'] * 1000:.0f}", "", ""),
        ("config per proxy (bytes)", f"{size['no_policies']:.0f}", f"{size['policies']:.0f}",
         f"{size['ratio']:.2f}x", ""),
        ("proxies pushed / selected", "", f"{push['proxies_pushed']} / {push['proxies_selected']}", "",
         push["verdict"]),
        ("bytes pushed per proxy, Delta", "", f"{push['bytes_per_pushed_proxy_delta']:.0f}", "", ""),
        ("bytes pushed per proxy, SotW", "", f"{push['bytes_per_pushed_proxy_sotw']:.0f}", "", ""),
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--outbounds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.services, args.outbounds, args.rounds)
    print(json.dumps(result, indent=2, default=lambda v: round(v, 4) if isinstance(v, float) else v))
    if not args.json_only:
        print()
        print(table(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
