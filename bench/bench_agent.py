"""kuma-dp start-up cost and footprint, next to Envoy's own start measured in the same run, and next to a
baseline kuma-dp (another git revision, `--baseline REF`, default `main`) measured in the same run too.

One kuma-cp (sqlite, loopback, this tree). Each round, for a fresh dataplane name:
- "envoy alone": fetch the bootstrap from the dp-server in this process (timed: the bootstrap call on a
  fresh channel, TLS handshake included), then time `envoy -c bootstrap` from exec to the same readiness
  kuma-dp uses for READY=1 (admin `/ready` = LIVE and `listener_manager.workers_started` = 1), polled every 5 ms;
- "kuma-dp" of each tree (this one, and the baseline's sources from `git archive REF`, run the same way
  with the same Python): time `kuma-dp run` from exec to `READY=1` on a NOTIFY_SOCKET this script listens
  on, split by the STATUS lines it sends: exec -> "requesting the Envoy bootstrap" (Python start, imports,
  input checks, runtime dir, ports, `envoy --version`), -> "Envoy started" (the bootstrap call, the bootstrap
  file, and Envoy handed its bootstrap: since issue 14 Envoy is spawned early and reads it from a pipe, so
  this is the moment Envoy has it; a baseline from before spawned Envoy here), -> READY=1 (the rest of Envoy's
  start under kuma-dp). Also kuma-dp's resident memory (RSS and USS of the kuma-dp process alone, Envoy excluded) 2 s
  after READY, and the CPU time kuma-dp and its finished helpers used up to READY.
- "floors": bench/agent_floor.py, the least a Python agent does (interpreter, the call, Envoy): `early` as
  kuma-dp's head start does it (Envoy spawned first, reading its bootstrap from a pipe; the call over h2),
  and the call first, then exec Envoy, over h2 and over grpcio; kuma-dp is compared with the first;
- "imports": once per round and tree, `python -c "import agent.cli, agent.run_flags, agent.head_start,
  agent.grpc_unary"` (a tree without the head start: agent.run; without agent/run_flags.py: agent.commands)
  minus `python -c pass` (wall time), what kuma-dp's modules cost before Envoy has its bootstrap; the same for
  `agent.bootstrap_worker`, the worker that validates the definition in parallel (off the critical path since
  issue 14: the bootstrap call and Envoy's spawn do not wait for its verdict, only READY=1 does).
How kuma-dp is run (`--as`):
- `packaged` (the default): as the kuma-dp package runs it, so that the figure is the one operators get. Each
  tree is laid out as the package installs it (packaging/build.py's runtime: pyvenv.cfg with `home =
  /usr/bin`, the package's own bin/python launcher, lib/python3.X/site-packages) and started through the
  package's own /usr/bin/kuma-dp wrapper, i.e. `sh` -> launcher -> the host's /usr/bin/python3.X -I. The
  libraries are this venv's (a path .pth in the runtime's site-packages: the tree's sources, then the venv's
  site-packages, whose own .pth files, the editable install's import hook among them, are not run, as the
  package has none). Differences left: the venv's shared objects are not stripped as the package's are.
- `source`: `python -m agent.cli` with this venv's interpreter, PYTHONPATH = the tree (a development
  checkout: another interpreter build, and the editable install's import hook runs at every start).
Every module of both trees is loaded from .pyc files, as an installed kuma-dp's are (the package's postinst
compiles them; here the warm-up run writes them: into the runtime's trees for `packaged`, into the run's temp
directory for `source`; a PYTHONDONTWRITEBYTECODE of the caller is dropped), and kuma-dp's Envoy version cache
(agent/envoy/version_cache.py, CACHE_DIRECTORY in that directory too) is filled by the warm-up run: a host
where kuma-dp ran before. A host's very first start also runs `envoy --version` on the way to the bootstrap
call (30-40 ms on this machine).
The variants run in alternating order. Medians over `--runs`; the overhead is kuma-dp's median minus Envoy's;
ratios are this tree / baseline. Also shown: the fastest runs, and CPU time, which a busy machine inflates
less than wall time (this machine is shared: the load average is printed). Targets (DESIGN.md, issue 14):
kuma-dp adds at most 100 ms to Envoy's start and stays under 40 MB RSS. No pass/fail here: numbers and ratios.

    .venv/bin/python bench/bench_agent.py [--runs 7] [--baseline main|REF|none] [--as packaged|source]
                                          [--json-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `tests` importable

import psutil
import yaml

from agent.bootstrap_client import CpAddress, fetch_bootstrap
from agent.envoy.binary import envoy_version, find_envoy
from bench.agent_floor import ENVOY_ARGS
from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess, start_cp
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
TARGET_OVERHEAD_MS = 100.0
TARGET_RSS_MB = 40.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
REQUESTING, SPAWNED = "requesting the Envoy bootstrap", "Envoy started (pid"


def definition(name: str) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "127.0.0.1",
                           "inbound": [{"port": free_port(), "servicePort": free_port(),
                                        "tags": {"kuma.io/service": "bench", "kuma.io/protocol": "http"}}],
                           "outbound": [{"port": free_port(), "tags": {"kuma.io/service": "other"}}]}}


def token(cp: CpProcess, name: str) -> str:
    r = call("POST", cp.http_url + "/tokens/dataplane", {"mesh": "default", "name": name})
    assert r.status == 200, r.raw
    return r.raw.decode()


def envoy_ready(admin: str) -> bool:
    try:
        with _OPENER.open(admin + "/ready", timeout=1) as r:
            if r.read().strip() != b"LIVE":
                return False
        with _OPENER.open(admin + "/stats?filter=^listener_manager.workers_started$", timeout=1) as r:
            return b"workers_started: 1" in r.read()
    except OSError:
        return False


def bootstrap_request(cp: CpProcess, kind: str) -> dict[str, Any]:
    name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    return {"mesh": "default", "name": name, "dataplaneToken": token(cp, name), "adminPort": free_port(),
            "dataplane": definition(name)}


def envoy_alone(cp: CpProcess, work: Path, binary: Path) -> tuple[float, float]:
    """(seconds from exec to Envoy ready, seconds of the bootstrap call on a fresh channel)."""
    request = bootstrap_request(cp, "envoy")
    called = time.perf_counter()
    answer = asyncio.run(fetch_bootstrap(CpAddress("127.0.0.1", cp.ports["KUMA_DP_SERVER_PORT"]),
                                         cp.ca_file.read_bytes(), request))
    call_s = time.perf_counter() - called
    bootstrap = work / f"{request['name']}.json"
    bootstrap.write_text(json.dumps(answer["bootstrap"]))
    return until_envoy_ready([str(binary), "-c", str(bootstrap), *ENVOY_ARGS], request["adminPort"]), call_s


FLOORS = ("early", "h2", "grpcio")  # bench/agent_floor.py's modes; the first is the floor kuma-dp is compared with
FLOOR_HOW = {"early": "interpreter, Envoy spawned, the call over h2, the bootstrap piped to it",
             "h2": "interpreter, the call over h2, exec Envoy",
             "grpcio": "interpreter, the call over grpcio, exec Envoy"}


def floor(cp: CpProcess, work: Path, binary: Path, install: Install, mode: str) -> float:
    """Seconds from exec to Envoy ready for bench/agent_floor.py (the least a Python agent does, its call
    done as `mode` says), with the interpreter set-up kuma-dp has."""
    request = bootstrap_request(cp, "floor")
    request_file = work / f"{request['name']}.request.json"
    request_file.write_text(json.dumps({**request, "cpHost": "127.0.0.1", "cpPort": cp.ports["KUMA_DP_SERVER_PORT"]}))
    return until_envoy_ready([*install.python, str(REPO / "bench" / "agent_floor.py"), mode,
                              f"127.0.0.1:{cp.ports['KUMA_DP_SERVER_PORT']}", str(cp.ca_file), str(request_file),
                              str(work / f"{request['name']}.json"), str(binary), str(request["adminPort"])],
                             request["adminPort"], env=_env(install))


def until_envoy_ready(argv: list[str], admin_port: int, env: dict[str, str] | None = None) -> float:
    """Seconds from exec of `argv` to its Envoy ready on `admin_port` (polled every 5 ms); Envoy stopped after."""
    admin = f"http://127.0.0.1:{admin_port}"
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while not envoy_ready(admin):
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
            if time.perf_counter() - start > 30:
                raise RuntimeError("Envoy not ready in 30 s")
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        _stop(proc)


class Install:
    """One tree's kuma-dp, started as `--as` says: `command` runs `kuma-dp ARGS...`, `python` runs an
    interpreter of the same set-up (for the import timings)."""

    def __init__(self, tree: Path, work: Path, mode: str) -> None:
        self.tree = tree
        if mode == "source":
            self.command = [sys.executable, "-m", "agent.cli"]
            self.python = [sys.executable]
            self.env = {"PYTHONPATH": str(tree), "PYTHONPYCACHEPREFIX": str(work / "pycache")}
            return
        base = work / "opt/kuma-vm/kuma-dp"
        site = base / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        site.mkdir(parents=True)
        # The package's lib/common (kuma-vm, pure wheels) and site-packages (compiled wheels): here the tree's
        # sources, then this venv's libraries. A path line: the venv's own .pth files are not run.
        (site / "kuma-vm-bench.pth").write_text(f"{tree}\n{sysconfig.get_paths()['purelib']}\n")
        (base / "bin").mkdir()
        shutil.copy2(_packaging_file(tree, "runtime/python"), base / "bin/python")
        (base / "bin/python").chmod(0o755)
        (base / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
        wrapper = work / "kuma-dp"
        wrapper.write_text(_packaging_file(tree, "kuma-dp/kuma-dp").read_text()
                           .replace("/opt/kuma-vm/kuma-dp", str(base)))
        wrapper.chmod(0o755)
        self.command = [str(wrapper)]
        self.python = [str(base / "bin/python"), "-I"]
        self.env = {}


def _packaging_file(tree: Path, name: str) -> Path:
    """The tree's own packaging file, or this tree's for a baseline from before it existed."""
    own = tree / "packaging" / name
    return own if own.exists() else REPO / "packaging" / name


def packaged_python_missing() -> str | None:
    """Why `--as packaged` cannot run here (the package runs on the host's /usr/bin/python3.X), or None."""
    host = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    return None if host.exists() else f"{host} is missing (the package runs on the host's Python): use --as source"


def _env(install: Install, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMA_") and k != "PYTHONPYCACHEPREFIX"}
    env.update({**install.env, **extra})
    return env


def kuma_dp(cp: CpProcess, work: Path, install: Install) -> dict[str, float]:
    """One `kuma-dp run` of the sources in `tree`: seconds from exec to READY=1 and to the STATUS lines
    before the bootstrap and after the spawn, kuma-dp's RSS and USS (MB), and the CPU seconds used by kuma-dp
    and its finished helpers (bootstrap worker, `envoy --version`) up to READY."""
    name = f"bench-dp-{uuid.uuid4().hex[:6]}"
    dp_file, token_file = work / f"{name}.yaml", work / f"{name}.token"
    dp_file.write_text(yaml.safe_dump(definition(name)))
    token_file.write_text(token(cp, name))
    notify_path = work / f"{name}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(30)
    argv = [*install.command, "run", "--cp-address",
            f"https://127.0.0.1:{cp.ports['KUMA_DP_SERVER_PORT']}", "--ca-cert-file", str(cp.ca_file),
            "--dataplane-file", str(dp_file), "--dataplane-token-file", str(token_file),
            "--runtime-dir", str(work / f"run-{name}"), "--drain-time", "0s", "--envoy-log-level", "warning",
            "--log-level", "warning"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=install.tree, env=_env(install, NOTIFY_SOCKET=str(notify_path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        marks: dict[str, float] = {}
        while True:
            message = sock.recv(4096).decode()
            now = time.perf_counter() - start
            if REQUESTING in message:
                marks.setdefault("requesting", now)
            if SPAWNED in message:
                marks.setdefault("spawned", now)
            if "READY=1" in message.splitlines():
                ready = now
                break
        t = psutil.Process(proc.pid).cpu_times()
        cpu = t.user + t.system + t.children_user + t.children_system
        time.sleep(2.0)
        mem = psutil.Process(proc.pid).memory_full_info()
        requesting, spawned = marks.get("requesting", ready), marks.get("spawned", ready)
        return {"ready": ready, "requesting": requesting, "spawned": spawned, "rss": mem.rss / 1e6,
                "uss": mem.uss / 1e6, "cpu": cpu}
    finally:
        sock.close()
        _stop(proc)


def imports(install: Install) -> tuple[float, float]:
    """Seconds kuma-dp's modules, and the bootstrap worker's, take to import (a fresh interpreter's start
    subtracted)."""
    def wall(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([*install.python, "-c", code], cwd=install.tree, env=_env(install), check=True)
        return time.perf_counter() - start
    bare = wall("pass")
    # What `kuma-dp run` loads before Envoy's spawn: its flags without click where the tree can, and its head
    # start (agent/head_start.py, with the bootstrap call's modules), or agent.run in a tree from before it.
    flags = "agent.run_flags" if (install.tree / "agent" / "run_flags.py").exists() else "agent.commands"
    before_spawn = ("agent.head_start, agent.grpc_unary" if (install.tree / "agent" / "head_start.py").exists()
                    else "agent.run")
    return (wall(f"import agent.cli, {flags}, {before_spawn}") - bare,
            wall("import agent.bootstrap_worker") - bare)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def baseline_tree(ref: str, into: Path) -> tuple[Path, str]:
    """The sources of `ref` (git archive, no checkout: nothing in the repository changes) and its commit."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    into.mkdir()
    archive = subprocess.Popen(["git", "archive", "--format=tar", commit], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    assert archive.wait() == 0, f"git archive {commit} failed"
    return into, commit


def variant_results(samples: list[dict[str, float]], import_s: list[tuple[float, float]],
                    envoy_s: list[float], floor_s: list[float]) -> dict[str, float]:
    med = statistics.median
    ready = [x["ready"] for x in samples]
    return {
        "kuma_dp_ready_ms": med(ready) * 1000,
        "overhead_ms": (med(ready) - med(envoy_s)) * 1000,
        "overhead_min_ms": (min(ready) - min(envoy_s)) * 1000,
        "over_floor_ms": (med(ready) - med(floor_s)) * 1000,
        "kuma_dp_before_envoy_ms": med(x["spawned"] for x in samples) * 1000,
        "split_imports_ms": med(x[0] for x in import_s) * 1000,
        "worker_imports_ms": med(x[1] for x in import_s) * 1000,
        "split_before_bootstrap_ms": med(x["requesting"] for x in samples) * 1000,
        "split_bootstrap_to_spawn_ms": med(x["spawned"] - x["requesting"] for x in samples) * 1000,
        "split_envoy_in_kuma_dp_ms": med(x["ready"] - x["spawned"] for x in samples) * 1000,
        "kuma_dp_rss_mb": med(x["rss"] for x in samples),
        "kuma_dp_uss_mb": med(x["uss"] for x in samples),
        "kuma_dp_cpu_ms": med(x["cpu"] for x in samples) * 1000,
    }


ROWS = [  # (label, key, unit)
    ("kuma-dp: exec -> READY=1", "kuma_dp_ready_ms", "ms"),
    ("kuma-dp overhead over Envoy (median difference)", "overhead_ms", "ms"),
    ("kuma-dp overhead (fastest runs)", "overhead_min_ms", "ms"),
    (f"kuma-dp over the {FLOORS[0]} floor (median difference)", "over_floor_ms", "ms"),
    ("  before Envoy has its bootstrap", "kuma_dp_before_envoy_ms", "ms"),
    ("  split: imports before that (separate run)", "split_imports_ms", "ms"),
    ("  bootstrap worker's imports (separate run, in parallel)", "worker_imports_ms", "ms"),
    ("  split: exec -> requesting the bootstrap", "split_before_bootstrap_ms", "ms"),
    ("  split: requesting -> Envoy has its bootstrap (the call)", "split_bootstrap_to_spawn_ms", "ms"),
    ("  split: Envoy has its bootstrap -> READY=1", "split_envoy_in_kuma_dp_ms", "ms"),
    ("kuma-dp CPU to READY (with its helpers)", "kuma_dp_cpu_ms", "ms"),
    ("kuma-dp RSS (Envoy excluded)", "kuma_dp_rss_mb", "MB"),
    ("kuma-dp USS (memory of its own)", "kuma_dp_uss_mb", "MB"),
]


def table(doc: dict[str, Any]) -> str:
    r, variants = doc["results"], doc["results"]["variants"]
    names = list(variants)
    lines = [f"kuma-dp start-up, median of {doc['runs']} runs (Envoy {doc['envoy_version']}, {doc['cpus']} CPUs, "
             f"load average {r['load_average_1m_start']:.1f} at the start, {r['load_average_1m']:.1f} at the end; "
             f"baseline {doc.get('baseline') or 'none'}; kuma-dp run as {doc['kuma_dp_as']})",
             f"  Envoy alone: exec -> live + workers started {r['envoy_start_ms']:.0f} ms (fastest "
             f"{r['envoy_start_min_ms']:.0f} ms); bootstrap call on a fresh channel {r['bootstrap_call_ms']:.0f} ms",
             *(f"  floor {t} (bench/agent_floor.py: {FLOOR_HOW[t]}): exec -> Envoy ready "
               f"{r['floors'][t]['start_ms']:.0f} ms, {r['floors'][t]['overhead_ms']:.0f} ms over Envoy alone"
               for t in FLOORS),
             f"  targets: overhead <= {TARGET_OVERHEAD_MS:.0f} ms, RSS < {TARGET_RSS_MB:.0f} MB"]
    width = max(len(label) for label, _, _ in ROWS)
    lines.append(f"  {'':<{width}}  " + "  ".join(f"{n:>12}" for n in names)
                 + ("  this/baseline" if "baseline" in variants else ""))
    for label, key, unit in ROWS:
        cells = "  ".join(f"{variants[n][key]:>9.1f} {unit}" for n in names)
        ratio = r.get("ratios", {}).get(key)
        lines.append(f"  {label:<{width}}  {cells}" + (f"  {ratio:>12.2f}" if ratio is not None else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", default="main", help="git revision to compare with, or none")
    parser.add_argument("--as", dest="mode", choices=("packaged", "source"), default="packaged",
                        help="run kuma-dp as its package does (default), or from the sources with this venv")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    if args.mode == "packaged" and (why := packaged_python_missing()):
        parser.error(why)
    binary = find_envoy()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        # Both trees' modules from .pyc files, as an installed kuma-dp has them (written by the warm-up run); a
        # PYTHONDONTWRITEBYTECODE in the caller's environment would otherwise make every `--as source` run
        # compile its sources again (`packaged` runs isolated, -I, as the package does).
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        # kuma-dp's Envoy version cache (agent/envoy/version_cache.py) here too, filled by the warm-up run, as
        # on a host where kuma-dp ran before (a host's very first start also runs `envoy --version`).
        os.environ["CACHE_DIRECTORY"] = str(work / "cache")
        load_start = os.getloadavg()[0]
        trees = {"this": REPO}
        baseline = None
        if args.baseline != "none":
            trees["baseline"], baseline = baseline_tree(args.baseline, work / "baseline")
        installs = {name: Install(tree, work / f"as-{name}", args.mode) for name, tree in trees.items()}
        cp = start_cp(work / "cp", KUMA_LOG_LEVEL="warning")
        try:
            envoy_alone(cp, work, binary)  # warm caches (binary pages, CP code paths, .pyc files); not counted
            for install in installs.values():
                kuma_dp(cp, work, install)
                imports(install)
            for mode in FLOORS:
                floor(cp, work, binary, installs["this"], mode)
            envoy_s: list[float] = []
            floor_s: dict[str, list[float]] = {t: [] for t in FLOORS}
            call_s: list[float] = []
            samples: dict[str, list[dict[str, float]]] = {n: [] for n in trees}
            import_s: dict[str, list[tuple[float, float]]] = {n: [] for n in trees}
            for i in range(args.runs):
                e, c = envoy_alone(cp, work, binary)
                envoy_s.append(e)
                call_s.append(c)
                for mode in FLOORS:
                    floor_s[mode].append(floor(cp, work, binary, installs["this"], mode))
                for name in (list(trees) if i % 2 == 0 else list(reversed(trees))):  # alternate the order
                    samples[name].append(kuma_dp(cp, work, installs[name]))
                    import_s[name].append(imports(installs[name]))
        finally:
            cp.stop()
    med = statistics.median
    variants = {n: variant_results(samples[n], import_s[n], envoy_s, floor_s[FLOORS[0]]) for n in trees}
    results: dict[str, Any] = {
        "envoy_start_ms": med(envoy_s) * 1000,
        "envoy_start_min_ms": min(envoy_s) * 1000,
        "floors": {t: {"start_ms": med(floor_s[t]) * 1000, "overhead_ms": (med(floor_s[t]) - med(envoy_s)) * 1000}
                   for t in FLOORS},
        "bootstrap_call_ms": med(call_s) * 1000,
        "variants": variants,
        "load_average_1m": os.getloadavg()[0],
        "load_average_1m_start": load_start,
    }
    if "baseline" in variants:
        results["ratios"] = {key: variants["this"][key] / variants["baseline"][key]
                             for _, key, _ in ROWS if variants["baseline"][key]}
    doc = {"benchmark": "agent", "runs": args.runs, "kuma_dp_as": args.mode, "envoy_version": envoy_version(binary),
           "cpus": os.cpu_count(), "baseline": baseline, "results": results,
           "targets": {"overhead_ms": TARGET_OVERHEAD_MS, "rss_mb": TARGET_RSS_MB},
           "samples": {"envoy_start_ms": [s * 1000 for s in envoy_s],
                       **{f"floor_{t}_start_ms": [s * 1000 for s in floor_s[t]] for t in FLOORS},
                       **{f"{n}_kuma_dp_ready_ms": [x["ready"] * 1000 for x in samples[n]] for n in trees},
                       **{f"{n}_before_envoy_ms": [x["spawned"] * 1000 for x in samples[n]] for n in trees}}}
    print(json.dumps(doc, indent=2, default=lambda v: round(v, 2) if isinstance(v, float) else str(v)))
    if not args.json_only:
        print()
        print(table(doc))


if __name__ == "__main__":
    main()
