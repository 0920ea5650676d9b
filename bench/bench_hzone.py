"""Horizontal zone control planes: one kuma-cp versus two on the same PostgreSQL, 1000 simulated clients.

Both setups run in the same bench run, each on a fresh database of one PostgreSQL server (a throwaway cluster
with fsync on, or KUMA_TEST_PG_*), with the same clients in the same two client processes (bench_xds.py's
`--worker`: grpc.aio, one TLS connection each, the real Delta/SotW protocol, every response ACKed, each
registering its Dataplane through node metadata as Envoy does with kuma-dp's bootstrap):
- single: one kuma-cp; both client processes connect to it;
- dual: kuma-cp A and B (B presents A's dp-server certificate, as an operator gives both instances the same
  KUMA_GENERAL_TLS_* files); client process 1 connects to A, 2 to B: the clients are split evenly. The
  leader does the leader-only work (VIPs, GC, default resources); both serve dataplanes.

A round adds or removes one endpoint of `backend` (called by every client) through an instance's API (dual:
A, A, B, B, ...: add and remove through each) and lasts until the LAST client of both processes has the new
ClusterLoadAssignment (client-side CLOCK_MONOTONIC, shared by the processes). Reported per setup: p50/p99 of
that time, also split by where the client is (dual: behind the instance whose API took the change, or
behind the other one, which learns it over LISTEN/NOTIFY), and each instance's CPU per change (until the last
client, and all-in over the rounds); the dual/single ratios are the figures to read on a shared machine.

    .venv/bin/python bench/bench_hzone.py [--clients 1000] [--rounds 12] [--api delta] [--quick] [--json-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make the repository importable

from bench._common import Cleanup, PySpy, cpu_seconds, dump_json, profile_breakdown, render_table, summary, wait_quiet
from bench.bench_xds import (
    BACKEND_PORTS,
    BACKENDS,
    GROUPS,
    PROFILE_CATEGORIES,
    Api,
    Worker,
    bounded,
    client_service_ports,
    dataplane,
    kuma_client_change,
    log,
    process_rss,
)

SETUPS = {"single": 1, "dual": 2}  # instances per setup
# bench_xds's categories, then what only a postgres-backed instance has (the first match in a stack wins).
HZONE_PROFILE_CATEGORIES = [
    ("paced full GC", ("CollectionPacer.collect",)),
    *PROFILE_CATEGORIES,
    ("postgres: change notifications in", ("PostgresStore._listen_loop", "PostgresStore._dispatch")),
    ("postgres: queries (psycopg)", ("PostgresStore.get", "PostgresStore.list", "PostgresStore._conn")),
    ("leader election", ("PostgresLeaderElector._run",)),
]
WORKERS = 2  # client processes, in both setups


# --- control planes -------------------------------------------------------------------------------------------------

def start_instances(count: int, pg: Any, directory: Path, args: argparse.Namespace, cleanup: Cleanup) -> list[Any]:
    """`count` kuma-cp zone instances on one database; the second and later present the first's certificate."""
    from tests.integration.cp_process import start_cp
    from tests.integration.test_cp_postgres import pg_env  # what an operator sets on every instance

    env = {**pg_env(pg), "KUMA_DP_SERVER_API_TYPE": args.api, "KUMA_DNS_SERVER_INTERFACE": "127.0.0.1",
           # the bench writes faster than an operator: no API rate limit in the way
           "KUMA_API_SERVER_RATE_LIMIT_RPS": "1000000", "KUMA_API_SERVER_RATE_LIMIT_BURST": "1000000",
           **dict(e.split("=", 1) for e in args.cp_env)}
    cps: list[Any] = []
    for i in range(count):
        extra: dict[str, str] = {}
        if cps:
            tls = cps[0].work_dir / "tls"
            extra = {"KUMA_GENERAL_TLS_CERT_FILE": str(tls / "server.crt"),
                     "KUMA_GENERAL_TLS_KEY_FILE": str(tls / "server.key"),
                     "KUMA_GENERAL_TLS_CA_FILE": str(tls / "ca.crt")}
        cp = start_cp(directory / f"cp-{'AB'[i]}", **env, **extra)
        cleanup.push(cp.stop, f"kuma-cp {'AB'[i]} pid {cp.pid}")
        cps.append(cp)
        log(f"kuma-cp {'AB'[i]} pid {cp.pid} ready")
    return cps


async def wait_default_mesh(api: Api, timeout: float = 30.0) -> None:
    """The leader creates the default mesh shortly after /ready."""
    deadline = time.monotonic() + timeout
    while True:
        async with api.session.get("/meshes/default") as r:
            if r.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no default mesh within {timeout:g}s: did an instance win the leader election?")
        await asyncio.sleep(0.2)


@contextlib.contextmanager
def databases(args: argparse.Namespace) -> Iterator[tuple[str, Callable[[], Any]]]:
    """One PostgreSQL server for the whole run: (its version, a function giving a fresh migrated database)."""
    from controlplane.store.postgres import migrate_up
    from tests.postgres_server import fresh_database, running_server

    with running_server(fsync=args.pg_fsync) as server, contextlib.ExitStack() as dbs:
        def fresh() -> Any:
            cfg = dbs.enter_context(fresh_database(server))
            migrate_up(cfg)
            return cfg

        yield server.version, fresh


# --- one setup ------------------------------------------------------------------------------------------------------

def client_plan(n: int, tokens: list[str]) -> list[dict[str, Any]]:
    """bench_xds's client plan: client i is `client-NNNN` of service client-(i % GROUPS), calling `backend` and
    backend-(i % GROUPS)."""
    return [{"name": f"client-{i:04d}", "token": token, "group": i % GROUPS,
             "dataplane": dataplane(f"client-{i:04d}", f"client-{i % GROUPS}", 20000 + 2 * i,
                                    {"backend": 10001, f"backend-{i % GROUPS}": 10002})}
            for i, token in enumerate(tokens)]


async def quiet(pids: list[int], args: argparse.Namespace) -> None:
    await asyncio.gather(*(wait_quiet(p, below=args.quiet, window=0.3, limit=10.0) for p in pids))


async def split_round(r: int, apis: list[Api], workers: list[Worker], halves: list[int], pids: list[int],
                      args: argparse.Namespace) -> dict[str, Any]:
    """One change through instance (r // 2) % len(apis)'s API; until every client of every worker has it."""
    adding = r % 2 == 0
    via = (r // 2) % len(apis)
    want = BACKENDS + 1 if adding else BACKENDS
    for w, size in zip(workers, halves, strict=True):
        await w.call("arm", cluster="backend", endpoints=want, clients=list(range(size)))
    await asyncio.sleep(args.gap + random.uniform(0, 0.05))  # past the insight flush interval, not in step with it
    await quiet(pids, args)
    cpu0 = [cpu_seconds(p) for p in pids]
    t0_wall, t0 = time.time(), time.monotonic()
    await kuma_client_change(apis[via])("backend", adding)
    t_api = time.monotonic()
    answers = await asyncio.gather(*(w.call("wait", timeout=args.round_timeout + 30, timeout_s=args.round_timeout,
                                            settle_s=0.2) for w in workers))
    cpu1 = [cpu_seconds(p) for p in pids]
    reached = [[(t - t0) * 1000 for t in a["reached"].values()] for a in answers]
    missed = sum(size - len(got) for size, got in zip(halves, reached, strict=True))
    await quiet(pids, args)
    cpu2 = [cpu_seconds(p) for p in pids]
    everyone = [ms for got in reached for ms in got]
    # Dual: worker w is behind instance w, so "local" are the clients of the instance whose API took the change.
    local = reached[via] if len(apis) > 1 else []
    remote = [ms for w, got in enumerate(reached) if w != via for ms in got] if len(apis) > 1 else []
    return {
        "change": f"{'add' if adding else 'remove'} backend endpoint via {'AB'[via]}", "t0_wall": t0_wall,
        "api_ms": (t_api - t0) * 1000, "missed": missed,
        "last_ms": max(everyone) if not missed else None,
        "median_ms": statistics.median(everyone) if everyone else None,
        "last_local_ms": max(local) if local and not missed else None,
        "last_remote_ms": max(remote) if remote and not missed else None,
        "cpu_ms_until_last": [(c1 - c0) * 1000 for c0, c1 in zip(cpu0, cpu1, strict=True)],
        "cpu_ms_after": [(c2 - c1) * 1000 for c1, c2 in zip(cpu1, cpu2, strict=True)],
    }


async def run_setup(name: str, count: int, pg: Any, args: argparse.Namespace, tmp: Path,
                    cleanup: Cleanup) -> dict[str, Any]:
    n = args.clients
    directory = tmp / name
    cps = start_instances(count, pg, directory, args, cleanup)
    apis = [Api(cp.http_url) for cp in cps]
    pids = [cp.pid for cp in cps]
    out: dict[str, Any] = {"instances": count, "clients": n, "kuma_cp_pids": pids}
    try:
        await wait_default_mesh(apis[0])
        for i in range(BACKENDS):
            await apis[0].put_dataplane(dataplane(f"backend-{i}", "backend", BACKEND_PORTS[i]))
        for g in range(GROUPS):
            service = f"backend-{g}"
            await apis[0].put_dataplane(dataplane(f"{service}-0", service, client_service_ports(service)[0]))
        t0 = time.monotonic()
        # Tokens alternately from each instance: either one's tokens are good at both (signing keys are stored).
        tokens = await bounded(list(range(n)), lambda i: apis[i % count].token(f"client-{i:04d}"), 8)
        log(f"{name}: {n} dataplane tokens in {time.monotonic() - t0:.1f}s")
        plan = client_plan(n, tokens)
        halves: list[list[dict[str, Any]]] = [plan[w::WORKERS] for w in range(WORKERS)]
        workers = []
        for w, half in enumerate(halves):
            cp = cps[w % count]
            plan_file = directory / f"clients-{w}.json"
            plan_file.write_text(json.dumps(half))
            workers.append(await Worker.start(
                [sys.executable, str(Path(__file__).resolve().parent / "bench_xds.py"), "--worker", str(plan_file),
                 "--worker-target", f"127.0.0.1:{cp.ports['KUMA_DP_SERVER_PORT']}",
                 "--worker-ca", str(cps[0].ca_file), "--worker-api", args.api],
                directory / f"clients-{w}.log", cleanup))
        t0 = time.monotonic()
        connected = await asyncio.gather(*(w.call("connect", timeout=args.connect_timeout + 30,
                                                  parallel=args.connect_parallel // WORKERS,
                                                  timeout_s=args.connect_timeout) for w in workers))
        ready = sum(c["ready"] for c in connected)
        out["connect_s"] = time.monotonic() - t0
        log(f"{name}: {ready}/{n} clients connected and configured in {out['connect_s']:.1f}s")
        if ready < n:
            raise RuntimeError(f"{name}: only {ready}/{n} clients got their config: "
                               f"{[c['errors'][:3] for c in connected]}")
        await asyncio.sleep(args.settle)
        out["rss_mb"] = [process_rss(p) / 2**20 for p in pids]
        load_before = os.getloadavg()[0]
        profilers = [PySpy(args.py_spy, p, directory / f"profile-{'AB'[i]}.txt", rate=args.py_spy_rate)
                     for i, p in enumerate(pids)] if args.py_spy else []
        for prof in profilers:
            cleanup.push(prof.stop, f"py-spy pid {prof.proc.pid}")
        cpu0 = [cpu_seconds(p) for p in pids]
        rounds = [await split_round(r, apis, workers, [len(h) for h in halves], pids, args)
                  for r in range(args.rounds)]
        for prof in profilers:
            prof.stop()
        if profilers:
            out["profiles"] = [profile_breakdown(prof.out, HZONE_PROFILE_CATEGORIES) for prof in profilers]
        all_in = [(cpu_seconds(p) - c0) * 1000 / max(1, args.rounds) for p, c0 in zip(pids, cpu0, strict=True)]
        out["loadavg_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
        out["summary"] = summarise(rounds, all_in)
        out["per_round"] = rounds
        for w in workers:
            with contextlib.suppress(Exception):
                await w.call("quit", timeout=10)
    finally:
        for api in apis:
            await api.close()
    return out


def summarise(rounds: list[dict[str, Any]], all_in: list[float]) -> dict[str, Any]:
    def col(key: str) -> list[float]:
        return [r[key] for r in rounds if r.get(key) is not None]

    instances = len(all_in)
    per_instance = [summary([r["cpu_ms_until_last"][i] for r in rounds]) for i in range(instances)]
    return {
        "rounds": len(rounds), "rounds_incomplete": sum(1 for r in rounds if r["missed"]),
        "last_client_ms": summary(col("last_ms")), "median_client_ms": summary(col("median_ms")),
        "last_local_client_ms": summary(col("last_local_ms")),
        "last_remote_client_ms": summary(col("last_remote_ms")),
        "api_write_ms": summary(col("api_ms")),
        "cpu_ms_per_change_until_last": per_instance,
        "cpu_ms_per_change_until_last_total": summary([sum(r["cpu_ms_until_last"]) for r in rounds]),
        "cpu_ms_per_change_after": [summary([r["cpu_ms_after"][i] for r in rounds]) for i in range(instances)],
        "cpu_ms_per_change_all_in": all_in,
    }


# --- report ---------------------------------------------------------------------------------------------------------

def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b or a != a or b != b else f"{a / b:.2f}x"


def ms(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:,.0f}"


def table(results: dict[str, Any]) -> str:
    s = {k: v.get("summary") for k, v in results["setups"].items()}
    single, dual = s.get("single"), s.get("dual")
    rows: list[list[Any]] = [["figure", "single (ms)", "dual (ms)", "dual / single"]]

    def add(label: str, pick: Any) -> None:
        a = pick(single) if single else None
        b = pick(dual) if dual else None
        rows.append([label, ms(a), ms(b), ratio(b, a)])

    add("change -> last client, p50", lambda x: x["last_client_ms"]["p50"])
    add("change -> last client, p99", lambda x: x["last_client_ms"]["p99"])
    add("change -> median client, p50", lambda x: x["median_client_ms"]["p50"])
    add("  dual: last client behind the writing instance, p50", lambda x: x["last_local_client_ms"]["p50"])
    add("  dual: last client behind the other instance, p50", lambda x: x["last_remote_client_ms"]["p50"])
    add("API write, p50", lambda x: x["api_write_ms"]["p50"])
    add("CPU per change until last client, all instances, p50",
        lambda x: x["cpu_ms_per_change_until_last_total"]["p50"])
    for i, label in enumerate("AB"):
        add(f"CPU per change until last client, kuma-cp {label}, p50",
            lambda x, i=i: x["cpu_ms_per_change_until_last"][i]["p50"] if i < len(x["cpu_ms_per_change_until_last"])
            else None)
    for i, label in enumerate("AB"):
        add(f"CPU per change all-in (gaps included), kuma-cp {label}",
            lambda x, i=i: x["cpu_ms_per_change_all_in"][i] if i < len(x["cpu_ms_per_change_all_in"]) else None)
    add("CPU per change all-in, all instances", lambda x: sum(x["cpu_ms_per_change_all_in"]))
    loads = ", ".join(f"{k} {v['loadavg_1m']['before']:.1f} -> {v['loadavg_1m']['after']:.1f}"
                      for k, v in results["setups"].items() if "loadavg_1m" in v)
    return render_table(rows) + f"\n\n1-minute load average during the rounds: {loads}" \
        "\np99 of fewer than 100 rounds is their maximum; read the ratios (2 shared cores)."


def profile_table(results: dict[str, Any]) -> str:
    rows: list[list[Any]] = [["kuma-cp profile (py-spy, GIL samples, rounds and gaps)", "% of samples"]]
    for name, setup in results["setups"].items():
        for i, prof in enumerate(setup.get("profiles", [])):
            rows.append([f"{name}, kuma-cp {'AB'[i]}: {prof['samples']} samples", ""])
            rows.extend([f"  {k}", f"{v:.1f}"] for k, v in prof["percent_by_category"].items())
    return render_table(rows) if len(rows) > 1 else ""


# --- main -----------------------------------------------------------------------------------------------------------

async def amain(args: argparse.Namespace, cleanup: Cleanup) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="kuma-bench-hzone-"))
    if not args.keep:
        import shutil

        cleanup.push(lambda: shutil.rmtree(tmp, ignore_errors=True), "temp dir")
    results: dict[str, Any] = {"settings": vars(args), "machine": {"cpus": os.cpu_count()}, "setups": {}}
    with databases(args) as (version, fresh):
        results["postgres"] = {"version": version, "fsync": args.pg_fsync}
        for name in args.setups:
            sub = Cleanup()  # each setup's processes are gone before the next starts
            cleanup.push(sub.run, name)
            t0 = time.monotonic()
            try:
                results["setups"][name] = await run_setup(name, SETUPS[name], fresh(), args, tmp, sub)
            except (RuntimeError, OSError, TimeoutError) as e:
                log(f"{name} failed: {e}")
                results["setups"][name] = {"error": f"{type(e).__name__}: {e}"}
            finally:
                sub.run()
            log(f"{name} done in {time.monotonic() - t0:.0f}s")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="simulated ADS clients (default 1000)")
    parser.add_argument("--rounds", type=int, default=12, help="changes per setup (default 12)")
    parser.add_argument("--api", default="delta", choices=("delta", "sotw"), help="xDS variant (default delta)")
    parser.add_argument("--setups", default="single,dual", help="which setups, in this order (single,dual)")
    parser.add_argument("--gap", type=float, default=1.1, help="seconds between rounds, then until kuma-cp is quiet")
    parser.add_argument("--quiet", type=float, default=0.1,
                        help="an instance counts as quiet below this share of a core over 0.3 s (default 0.1)")
    parser.add_argument("--round-timeout", type=float, default=15.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after connecting before the rounds")
    parser.add_argument("--connect-parallel", type=int, default=50, help="clients connecting at once (all workers)")
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--pg-fsync", action=argparse.BooleanOptionalAction, default=True,
                        help="throwaway PostgreSQL with fsync/synchronous_commit on (default) or off")
    parser.add_argument("--cp-env", action="append", default=[], metavar="KUMA_X=V",
                        help="extra setting for every kuma-cp (repeatable)")
    parser.add_argument("--py-spy", metavar="PATH", default=None,
                        help="profile every kuma-cp during the rounds (gaps included) with this py-spy binary; it "
                             "slows them down: take no latencies from a profiled run")
    parser.add_argument("--py-spy-rate", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 clients, 4 rounds")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (kuma-cp and client logs)")
    args = parser.parse_args(argv)
    args.setups = [s for s in args.setups.split(",") if s]
    if unknown := [s for s in args.setups if s not in SETUPS]:
        parser.error(f"--setups: unknown {', '.join(unknown)} (choose from {', '.join(SETUPS)})")
    if args.clients < GROUPS * WORKERS:
        parser.error(f"--clients {args.clients}: at least {GROUPS * WORKERS} (every group in both client processes)")
    if args.quick:
        args.clients, args.rounds, args.settle, args.gap = min(args.clients, 100), 4, 1.0, 0.3
    return args


def main() -> None:
    from bench._common import install_signal_handlers

    args = parse_args()
    install_signal_handlers()
    started = time.monotonic()
    try:
        with Cleanup() as cleanup:
            results = asyncio.run(amain(args, cleanup))
    except KeyboardInterrupt:
        log("interrupted: every process the bench started is stopped")
        sys.exit(130)
    results["seconds"] = time.monotonic() - started
    print(dump_json(results))
    if not args.json_only:
        print()
        print(table(results))
        if profiles := profile_table(results):
            print()
            print(profiles)


if __name__ == "__main__":
    main()
