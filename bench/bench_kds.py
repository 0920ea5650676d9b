"""KDS: global -> zone sync of many resources, one change's latency, and what a reconnect re-sends.

In-process on loopback, over real gRPC with TLS and a real zone token: global's KdsServer and a zone's
KdsClient, each with its own SQLite store in a temp dir (the same code kuma-cp runs; one process keeps the
timing free of process start-up and lets the bench read both stores' change events directly).

- initial: global holds N resources (meshes and MeshTimeout policies) and the zone holds D Dataplanes; the
  time from the zone client's start until the zone store holds all of global's and global holds all of the
  zone's dataplanes, wall and CPU (both sides run in this one process and share its interpreter lock, so the
  CPU time is the work of both; on a busy machine it is the steadier figure). The floor beside it: the same
  resources copied between two SQLite stores in-process (list, then one create_all), as a ratio. Before the
  sync the process freezes what setup made out of the garbage collector's full passes, as kuma-cp's runtime
  does once started (`--no-freeze`: not, as this bench did before).
- change: one policy updated on global -> its new version in the zone store (the zone store's change event),
  p50/p99 over rounds. Target p99 <= 100 ms.
- reconnect: the zone's connection drops, global changes C policies, the same zone process connects again:
  resources global sends on the new stream (target: exactly C, only what changed) and the time to converge.
  (A restarted zone process declares what its store holds, with the versions global gives them, too.)

    .venv/bin/python bench/bench_kds.py [--resources 10000] [--dataplanes 5000] [--rounds 30] [--changes 100]
                                       [--quick] [--json-only] [--no-freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `controlplane` importable

from bench._common import dump_json, listen_port, render_table, summary, verdict
from controlplane.kds.client import KdsClient
from controlplane.kds.server import KdsServer
from controlplane.resources import Resource, from_wire, load_all
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.mesh import MESH
from controlplane.store.base import ListQuery, ResourceStore
from controlplane.store.sqlite import SqliteStore
from controlplane.tls import ensure_cp_tls
from controlplane.tokens import TokenService

MESHES = 10
WAIT = 600.0


def policy(i: int, idle: str = "5s") -> Resource:
    return from_wire({"type": "MeshTimeout", "name": f"t-{i}", "mesh": f"m-{i % MESHES}",
                      "spec": {"targetRef": {"kind": "Mesh"},
                               "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": idle}}]}})


def dataplane(i: int) -> Resource:
    return from_wire({"type": "Dataplane", "name": f"dp-{i}", "mesh": f"m-{i % MESHES}",
                      "networking": {"address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                                     "inbound": [{"port": 8080, "tags": {"kuma.io/service": f"svc-{i % 50}"}}]}})


async def count(store: ResourceStore, rtype: Any) -> int:
    """The store's count (one page of one row): listing and parsing 10,000 resources on every check put the
    bench's own bookkeeping (~0.8 s) inside the initial sync it measures."""
    return (await store.list(rtype, ListQuery(size=1))).total


async def until(store: ResourceStore, check: Any, timeout: float = WAIT) -> None:
    """Re-check after each burst of changes of the store (no polling): the events already queued are taken
    together, so a transaction of 1,000 creates costs one check, not 1,000 count queries competing with the sync
    for the store's thread."""
    async def wait() -> None:
        async with store.watch() as events:
            while not await check():
                await events.get()
                while not events.empty():
                    events.get_nowait()
    await asyncio.wait_for(wait(), timeout)


async def floor_copy(src: ResourceStore, dst: ResourceStore, types: list[Any]) -> tuple[float, float]:
    """(wall, CPU) seconds."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for rtype in types:
        items = (await src.list(rtype, ListQuery())).items
        await dst.create_all([r.with_meta(version=0) for r in items])
    return time.perf_counter() - started, time.process_time() - cpu_started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_all()
    mesh_timeout = policy(0).type
    policies = max(0, args.resources - MESHES)
    with tempfile.TemporaryDirectory(prefix="bench-kds-") as tmp_dir:
        tmp = Path(tmp_dir)
        glob, zone = SqliteStore(tmp / "global.db"), SqliteStore(tmp / "zone.db")
        for s in (glob, zone):
            await s.start()
        tls = ensure_cp_tls(tmp / "tls")
        assert tls.ca_file is not None
        tokens = TokenService(glob)
        token_file = tmp / "zone.token"
        token_file.write_text(await tokens.issue_zone_token("zone-1", scope=["cp"]))
        server = KdsServer(glob, tokens, interface="127.0.0.1", port=listen_port(set()),
                           key_cert_pairs=tls.grpc_key_cert_pairs(), instance="global-1")
        await server.start()
        meshes = [from_wire({"type": "Mesh", "name": f"m-{i}"}) for i in range(MESHES)]
        await glob.create_all(meshes)
        await glob.create_all([policy(i) for i in range(policies)])
        await zone.create_all(meshes)  # the zone's dataplanes need their meshes (the zone had them from global)
        await zone.create_all([dataplane(i) for i in range(args.dataplanes)])
        # Those meshes are global's: labelled as KDS would have written them, so the sync adopts nothing.
        for m in (await zone.list(MESH, ListQuery())).items:
            await zone.update(m.with_meta(labels={"kuma.io/origin": "global"}))

        def client() -> KdsClient:
            return KdsClient(zone, zone="zone-1", global_address=f"grpcs://127.0.0.1:{server.bound_port}",
                             ca_file=tls.ca_file, token_file=token_file, backoff_first=0.05, backoff_max=0.5)

        if args.freeze:
            # What kuma-cp's runtime does once started (controlplane/runtime.py): what start-up made (modules,
            # pydantic schemas, protobuf descriptors, TLS, the stores) is kept out of the collector's full passes.
            # Without it, each full collection inside the sync re-scans all of that, which kuma-cp never does.
            gc.collect()
            gc.freeze()

        # --- initial sync ---------------------------------------------------------------------------------
        kds = client()
        started, cpu_started = time.perf_counter(), time.process_time()
        task = asyncio.create_task(kds.run())

        async def zone_has_all() -> bool:
            return await count(zone, mesh_timeout) >= policies

        async def global_has_all() -> bool:
            return await count(glob, DATAPLANE) >= args.dataplanes
        await until(zone, zone_has_all)
        to_zone = time.perf_counter() - started
        await until(glob, global_has_all)
        initial = time.perf_counter() - started
        initial_cpu = time.process_time() - cpu_started

        # the floor: the same rows copied store to store in-process
        fa, fb = SqliteStore(tmp / "floor-a.db"), SqliteStore(tmp / "floor-b.db")
        for s in (fa, fb):
            await s.start()
        await fa.create_all(meshes)
        await fa.create_all([policy(i) for i in range(policies)])
        await fa.create_all([dataplane(i) for i in range(args.dataplanes)])
        floor, floor_cpu = await floor_copy(fa, fb, [MESH, mesh_timeout, DATAPLANE])
        for s in (fa, fb):
            await s.close()

        # --- one change's latency ------------------------------------------------------------------------
        latencies: list[float] = []
        for r in range(args.rounds):
            target = policy(r % max(policies, 1), idle=f"{10 + r}s")
            current = await glob.get(mesh_timeout, target.meta.name, target.meta.mesh)
            async with zone.watch() as events:
                t0 = time.perf_counter()
                await glob.update(target.with_meta(version=current.meta.version, labels=current.meta.labels))
                while True:
                    e = await asyncio.wait_for(events.get(), 30)
                    if e.type == mesh_timeout.name and e.name == target.meta.name:
                        latencies.append(time.perf_counter() - t0)
                        break
            await asyncio.sleep(0.05)

        # --- reconnect after C changes ------------------------------------------------------------------
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.2)
        changed = []
        for i in range(min(args.changes, policies)):
            p = policy(i * 7 % policies, idle=f"{1000 + i}s")
            cur = await glob.get(mesh_timeout, p.meta.name, p.meta.mesh)
            await glob.update(p.with_meta(version=cur.meta.version, labels=cur.meta.labels))
            changed.append(p)
        t0 = time.perf_counter()
        task = asyncio.create_task(kds.run())  # the same zone process connecting again

        async def converged() -> bool:
            for p in changed[-5:]:
                got = await zone.get(mesh_timeout, p.meta.name, p.meta.mesh)
                if got.spec != p.spec:
                    return False
            return True
        await until(zone, converged)
        reconnect_s = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # let the last responses be counted
        resent = sum(s["types"].get(mesh_timeout.name, {}).get("resources_sent", 0)
                     for s in server.zone_status().get("zone-1", {}).values())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        for s in (glob, zone):
            await s.close()

    lat = summary(latencies)
    return {
        "resources": args.resources, "dataplanes": args.dataplanes, "rounds": args.rounds, "changes": len(changed),
        "gc_freeze_after_setup": args.freeze,
        "initial_sync_s": initial, "initial_to_zone_s": to_zone, "floor_copy_s": floor,
        "initial_ratio_to_floor": initial / floor if floor else None,
        # CPU seconds of this process (both sides, all threads): steadier than wall time on a busy machine.
        "initial_sync_cpu_s": initial_cpu, "floor_copy_cpu_s": floor_cpu,
        "initial_cpu_ratio_to_floor": initial_cpu / floor_cpu if floor_cpu else None,
        "change_latency_s": lat, "reconnect_resent": resent, "reconnect_s": reconnect_s,
        "verdicts": {
            "initial_sync<=2s": verdict(initial, 2.0),
            "change_p99<=100ms": verdict(lat["p99"], 0.1),
            "reconnect_resends_only_changes": "PASS" if resent == len(changed) else "MISS",
        },
    }


def table(doc: dict[str, Any]) -> str:
    lat = doc["change_latency_s"]
    rows = [
        ["initial sync (both directions)", f"{doc['initial_sync_s']:.2f} s",
         f"{doc['initial_ratio_to_floor']:.1f}x floor ({doc['floor_copy_s']:.2f} s)",
         doc["verdicts"]["initial_sync<=2s"]],
        ["  of which global -> zone", f"{doc['initial_to_zone_s']:.2f} s", "", ""],
        ["initial sync CPU (both sides)", f"{doc['initial_sync_cpu_s']:.2f} s",
         f"{doc['initial_cpu_ratio_to_floor']:.1f}x floor ({doc['floor_copy_cpu_s']:.2f} s)", ""],
        ["one change -> zone store p50", f"{lat['p50'] * 1000:.1f} ms", "", ""],
        ["one change -> zone store p99", f"{lat['p99'] * 1000:.1f} ms", "", doc["verdicts"]["change_p99<=100ms"]],
        [f"reconnect after {doc['changes']} changes: re-sent", str(doc["reconnect_resent"]),
         f"converged in {doc['reconnect_s']:.2f} s", doc["verdicts"]["reconnect_resends_only_changes"]],
    ]
    return render_table([["figure", "value", "beside it", "target"], *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=10_000, help="meshes + policies on global")
    parser.add_argument("--dataplanes", type=int, default=5_000, help="dataplanes in the zone")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="500 resources, 200 dataplanes, 5 rounds, 20 changes")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--no-freeze", dest="freeze", action="store_false",
                        help="leave the start-up objects in the collector's full passes (before the runtime's freeze "
                             "was mirrored here: compare with older runs)")
    args = parser.parse_args()
    if args.quick:
        args.resources, args.dataplanes, args.rounds, args.changes = 500, 200, 5, 20
    logging.basicConfig(level=logging.WARNING)
    doc = asyncio.run(run(args))
    print(dump_json(doc))
    if not args.json_only:
        print(table(doc))


if __name__ == "__main__":
    main()
