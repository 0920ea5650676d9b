"""Store backends side by side: memory, sqlite (temp dir), postgres (a throwaway server, or KUMA_TEST_PG_*).

For each: create N Dataplanes in one mesh (writes/s), get each (reads/s), list all, page through all,
update each, change-event latency (write start -> event dequeued by a watcher; for postgres the watcher
is a second store instance, so the event crosses LISTEN/NOTIFY), and deleting the mesh (cascade).

Throughputs are medians over 10 equal chunks; every figure also comes as a ratio to the memory backend
measured in the same run ("x memory": how many times slower), because this machine is noisy and
absolute numbers mean little. No pass/fail.

    .venv/bin/python bench/bench_store.py [--count 10000] [--backends memory,sqlite,postgres] [--json-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `tests` importable

from controlplane.resources import Resource, from_wire, load_all
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.mesh import MESH
from controlplane.store.base import ChangeEvent, ListQuery, ResourceStore

MESH_NAME = "bench"
CHUNKS = 10


def dataplanes(count: int) -> list[Resource]:
    out = []
    for i in range(count):
        out.append(from_wire({
            "type": "Dataplane", "mesh": MESH_NAME, "name": f"dp-{i:06d}",
            "labels": {"kuma.io/zone": f"zone-{i % 3}", "team": f"team-{i % 7}"},
            "networking": {
                "address": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                "inbound": [{"port": 8080, "servicePort": 80,
                             "tags": {"kuma.io/service": f"svc-{i % 100}", "kuma.io/protocol": "http",
                                      "version": "v1"}}],
                "outbound": [{"port": 10000 + j, "tags": {"kuma.io/service": f"svc-{j}"}} for j in range(3)],
            },
        }))
    return out


async def run_chunks(items: Sequence[Any], op: Callable[[Any], Awaitable[Any]],
                     concurrency: int) -> tuple[list[Any], dict[str, float]]:
    """Run `op` over items, `concurrency` in flight; rate per chunk -> median, plus the overall rate."""
    results: list[Any] = [None] * len(items)
    size = max(1, len(items) // CHUNKS)
    rates = []
    start = time.perf_counter()
    for c0 in range(0, len(items), size):
        chunk = range(c0, min(c0 + size, len(items)))
        t0 = time.perf_counter()
        it = iter(chunk)

        async def worker(it: Iterator[int] = it) -> None:
            for i in it:
                results[i] = await op(items[i])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rates.append(len(chunk) / (time.perf_counter() - t0))
    total = time.perf_counter() - start
    return results, {"median_per_s": statistics.median(rates), "overall_per_s": len(items) / total,
                     "seconds": total}


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def event_latency(writer: ResourceStore, watcher: ResourceStore, stored: list[Resource],
                        samples: int) -> dict[str, float]:
    """Write start -> the watcher dequeues that write's event; sequential writes."""
    loop = asyncio.get_running_loop()
    waiting: dict[tuple[str, int], asyncio.Future[float]] = {}

    async def consume(q: asyncio.Queue[ChangeEvent]) -> None:
        while True:
            e = await q.get()
            fut = waiting.pop((e.name, e.version), None)
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter())

    latencies = []
    async with watcher.watch() as q:
        task = asyncio.create_task(consume(q))
        try:
            for i in range(samples):
                r = stored[i % len(stored)]
                fut = loop.create_future()
                waiting[(r.meta.name, r.meta.version + 1)] = fut
                t0 = time.perf_counter()
                r = await writer.update(r)
                stored[i % len(stored)] = r
                latencies.append((await asyncio.wait_for(fut, 10)) - t0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    latencies.sort()
    return {"median_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "samples": len(latencies)}


async def bench_one(store: ResourceStore, watcher: ResourceStore, dps: list[Resource], concurrency: int,
                    event_samples: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await store.create(from_wire({"type": "Mesh", "name": MESH_NAME}))
    stored, out["create"] = await run_chunks(dps, store.create, concurrency)
    _, out["get"] = await run_chunks(dps, lambda r: store.get(DATAPLANE, r.meta.name, MESH_NAME), concurrency)

    async def list_all() -> None:
        result = await store.list(DATAPLANE, ListQuery(mesh=MESH_NAME))
        assert result.total == len(dps), result.total

    async def page_through(size: int = 100) -> None:
        offset: int | None = 0
        seen = 0
        while offset is not None:
            page = await store.list(DATAPLANE, ListQuery(mesh=MESH_NAME, size=size, offset=offset))
            seen += len(page.items)
            offset = page.next_offset
        assert seen == len(dps), seen

    out["list_all_s"] = await timed(list_all)
    out["list_paginated_s"] = await timed(page_through)
    out["list_one_page_s"] = await timed(
        lambda: store.list(DATAPLANE, ListQuery(mesh=MESH_NAME, size=100, offset=len(dps) // 2)), repeat=5)
    out["list_label_filter_s"] = await timed(
        lambda: store.list(DATAPLANE, ListQuery(mesh=MESH_NAME, labels={"team": "team-3"})))
    stored, out["update"] = await run_chunks(stored, store.update, concurrency)
    out["event_latency"] = await event_latency(store, watcher, stored, event_samples)
    t0 = time.perf_counter()
    await store.delete(MESH, MESH_NAME)
    out["delete_mesh_cascade_s"] = time.perf_counter() - t0
    return out


@contextlib.asynccontextmanager
async def backend(name: str, pg_fsync: bool) -> AsyncIterator[tuple[ResourceStore, ResourceStore, dict[str, Any]]]:
    """(writer store, watcher store, notes)."""
    if name == "memory":
        from controlplane.store.memory import MemoryStore

        mem = MemoryStore()
        yield mem, mem, {}
    elif name == "sqlite":
        from controlplane.store.sqlite import SqliteStore

        with tempfile.TemporaryDirectory(prefix="kuma-bench-") as d:
            sq = SqliteStore(Path(d) / "kuma.db")
            await sq.start()
            try:
                yield sq, sq, {"file": "temp dir", "synchronous": "NORMAL (WAL)"}
            finally:
                await sq.close()
    elif name == "postgres":
        from controlplane.store.postgres import PostgresStore, migrate_up
        from tests.postgres_server import fresh_database, running_server

        with running_server(fsync=pg_fsync) as server, fresh_database(server) as cfg:
            migrate_up(cfg)
            a, b = PostgresStore(cfg, instance="bench-writer"), PostgresStore(cfg, instance="bench-watcher")
            await a.start()
            await b.start()
            try:
                yield a, b, {"server": server.version, "fsync": pg_fsync,
                             "watcher": "second instance (LISTEN/NOTIFY)"}
            finally:
                await a.close()
                await b.close()
    else:
        raise SystemExit(f"unknown backend {name!r}")


def ratios(results: dict[str, dict[str, Any]]) -> None:
    """Add `x_memory` (how many times slower than memory) next to every figure."""
    mem = results.get("memory")
    if not mem or "error" in mem:
        return
    for r in results.values():
        if "error" in r:
            continue
        x: dict[str, float] = {}
        for op in ("create", "get", "update"):
            x[op] = mem[op]["median_per_s"] / r[op]["median_per_s"]
        for key in ("list_all_s", "list_paginated_s", "list_one_page_s", "list_label_filter_s",
                    "delete_mesh_cascade_s"):
            x[key.removesuffix("_s")] = r[key] / mem[key] if mem[key] else float("nan")
        x["event_latency_median"] = r["event_latency"]["median_ms"] / mem["event_latency"]["median_ms"]
        r["x_memory"] = {k: round(v, 2) for k, v in x.items()}


def table(results: dict[str, dict[str, Any]], count: int) -> str:
    rows = [("", *results.keys())]

    def add(label: str, fmt: Callable[[dict[str, Any]], str]) -> None:
        rows.append((label, *(fmt(r) if "error" not in r else "error" for r in results.values())))

    def x(r: dict[str, Any], key: str) -> str:
        v = r.get("x_memory", {}).get(key)
        return f" ({v:.1f}x)" if v is not None else ""

    def rate(op: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{r[op]['median_per_s']:,.0f}{x(r, op)}"

    def millis(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{r[key] * 1000:,.1f}{x(r, key.removesuffix('_s'))}"

    for op in ("create", "get", "update"):
        add(f"{op} /s (median)", rate(op))
    for key, label in (("list_all_s", f"list all {count}"), ("list_paginated_s", "page through (100/page)"),
                       ("list_one_page_s", "one page of 100"), ("list_label_filter_s", "label filter"),
                       ("delete_mesh_cascade_s", "delete mesh (cascade)")):
        add(f"{label} ms", millis(key))
    add("event latency median ms", lambda r: f"{r['event_latency']['median_ms']:.3f}{x(r, 'event_latency_median')}")
    add("event latency p99 ms", lambda r: f"{r['event_latency']['p99_ms']:.3f}")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                     strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(Nx) = N times slower than memory in this run"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="Dataplanes to create (default 10000)")
    parser.add_argument("--backends", default="memory,sqlite,postgres")
    parser.add_argument("--concurrency", type=int, default=8, help="operations in flight (create/get/update)")
    parser.add_argument("--event-samples", type=int, default=500)
    parser.add_argument("--pg-fsync", action=argparse.BooleanOptionalAction, default=True,
                        help="throwaway postgres with fsync/synchronous_commit on (default) or off")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_all()
    t0 = time.perf_counter()
    dps = dataplanes(args.count)
    build_s = time.perf_counter() - t0
    results: dict[str, dict[str, Any]] = {}
    for name in args.backends.split(","):
        try:
            async with backend(name, args.pg_fsync) as (store, watcher, notes):
                results[name] = await bench_one(store, watcher, list(dps), args.concurrency,
                                                min(args.event_samples, args.count))
                results[name]["notes"] = notes
        except (OSError, RuntimeError) as e:  # e.g. no PostgreSQL binaries on this machine
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    ratios(results)
    doc = {"count": args.count, "concurrency": args.concurrency, "validate_build_s": round(build_s, 3),
           "backends": results}
    print(json.dumps(doc, indent=2, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))
    if not args.json_only:
        print()
        print(table(results, args.count))


if __name__ == "__main__":
    asyncio.run(main())
