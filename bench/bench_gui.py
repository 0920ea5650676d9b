"""The GUI with many dataplanes: time until the overview (and the dataplanes list) is rendered, in headless chromium.

A real kuma-cp (sqlite store, tests/integration/cp_process.start_cp) gets N Dataplanes through the HTTP API
(PUT, as kumactl apply does); N - `--offline` of them then connect as simulated Envoys (bench_xds.py's ADS
client process: one TLS gRPC stream each, ACKing like Envoy), so kuma-cp's xDS server writes their
DataplaneInsights, the online/offline the GUI shows; the others never connect and are offline. Insights are
maintained by the control plane only (the API refuses to write them), so this is the way they come to exist.

Then Debian's chromium (Playwright, as tests/integration/test_gui.py) loads `/gui` `--loads` times, each in a
fresh browser context (no cache), and measures:

- overview: from navigation until the overview shows N dataplanes and the online count (wall clock, Python
  side), and from the page's own marks (performance.mark in app.js): `data_ms` when the first load's API
  calls are done, `rendered_ms` when that first render is in the DOM, both since navigation start;
- dataplanes page: the same for `/gui#/dataplanes` (a table of all N rows) until its count shows N.

Target (issue 17): the overview of 1000 dataplanes renders in under a second (median).

    .venv/bin/python bench/bench_gui.py [--dataplanes 1000] [--offline 100] [--loads 7] [--json-only] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `controlplane` importable

from bench._common import Cleanup, dump_json, install_signal_handlers, render_table, summary, verdict
from bench.bench_xds import Api, Worker, bounded, dataplane, log, start_control_plane

TARGET_MS = 1000.0
SERVICES = 50
WAIT = 600.0  # bound on a hung setup, not a measurement


def plan(names: list[str], tokens: list[str]) -> list[dict[str, Any]]:
    return [{"name": n, "token": t, "group": 0, "dataplane": dp_doc(i)} for i, (n, t) in
            enumerate(zip(names, tokens, strict=True))]


def dp_doc(i: int) -> dict[str, Any]:
    return dataplane(f"dp-{i:04d}", f"svc-{i % SERVICES}", 20000 + 2 * i)


async def online_count(api: Api) -> int:
    async with api.session.get("/mesh-insights/default") as r:
        doc = await r.json()
        return int(doc["dataplanes"]["online"])


async def setup(args: argparse.Namespace, tmp: Path, cleanup: Cleanup) -> tuple[Any, dict[str, Any]]:
    cp = start_control_plane(tmp / "cp", "delta", cleanup, argparse.Namespace(cp_env=args.cp_env, gc_log=False))
    api = Api(cp.http_url)
    n, connected = args.dataplanes, args.dataplanes - args.offline
    try:
        t0 = time.monotonic()
        await bounded([dp_doc(i) for i in range(n)], api.put_dataplane, 8)
        put_s = time.monotonic() - t0
        log(f"{n} Dataplanes PUT through the API in {put_s:.1f}s")
        names = [f"dp-{i:04d}" for i in range(connected)]
        tokens = await bounded(names, api.token, 8)
        plan_file = tmp / "clients.json"
        plan_file.write_text(json.dumps(plan(names, tokens)))
        worker = await Worker.start(
            [sys.executable, str(Path(__file__).resolve().parent / "bench_xds.py"), "--worker", str(plan_file),
             "--worker-target", f"127.0.0.1:{cp.ports['KUMA_DP_SERVER_PORT']}", "--worker-ca", str(cp.ca_file),
             "--worker-api", "delta"], tmp / "clients.log", cleanup)
        t0 = time.monotonic()
        status = await worker.call("connect", timeout=WAIT + 30, parallel=50, timeout_s=WAIT)
        if status["ready"] != connected:
            raise RuntimeError(f"only {status['ready']}/{connected} simulated Envoys got their config: "
                               f"{status['errors']}")
        deadline = time.monotonic() + WAIT
        while (online := await online_count(api)) != connected:  # insights are written as streams open
            if time.monotonic() > deadline:
                raise RuntimeError(f"{online}/{connected} dataplanes online after {WAIT:g}s")
            await asyncio.sleep(0.5)
        log(f"{connected} simulated Envoys connected, {online} dataplanes online in {time.monotonic() - t0:.1f}s")
        await asyncio.sleep(2.0)  # let kuma-cp finish writing insights before the browser measures
        return cp, {"put_seconds": put_s, "online": online, "offline": n - online}
    finally:
        await api.close()


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """In a thread of its own: Playwright's sync API runs its own event loop."""
    from playwright.sync_api import expect, sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("Debian's chromium is not installed (scripts/setup.sh installs it)")
    n, online = args.dataplanes, args.dataplanes - args.offline
    out: dict[str, list[dict[str, float]]] = {"overview": [], "dataplanes_page": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True)
        try:
            for i in range(args.loads + 1):  # the first load warms chromium up and is not counted
                for what, path, done in (
                        ("overview", "/gui", [('[data-count="dataplanes"]', str(n)),
                                              ('[data-count="online"]', str(online))]),
                        ("dataplanes_page", "/gui#/dataplanes", [("#dpcount", f"{n} dataplanes")])):
                    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
                    page = ctx.new_page()
                    t0 = time.perf_counter()
                    page.goto(url + path, wait_until="commit")
                    for selector, text in done:
                        expect(page.locator(selector)).to_have_text(text, timeout=60_000)
                    wall = (time.perf_counter() - t0) * 1000
                    marks = page.evaluate("""() => Object.fromEntries(['kuma-data', 'kuma-rendered'].map(
                        (m) => [m, (performance.getEntriesByName(m)[0] || {}).startTime]))""")
                    ctx.close()
                    if i:
                        out[what].append({"wall_ms": wall, "data_ms": marks["kuma-data"],
                                          "rendered_ms": marks["kuma-rendered"]})
        finally:
            browser.close()
    return {what: {key: summary([r[key] for r in rows if r[key] is not None])
                   for key in ("wall_ms", "data_ms", "rendered_ms")} | {"loads": rows}
            for what, rows in out.items()}


async def run(args: argparse.Namespace, tmp: Path, cleanup: Cleanup) -> dict[str, Any]:
    cp, state = await setup(args, tmp, cleanup)
    results = await asyncio.to_thread(measure, cp.http_url, args)
    p50 = results["overview"]["wall_ms"]["p50"]
    return {"dataplanes": args.dataplanes, "services": SERVICES, **state, "loads": args.loads,
            **results, "target": {"what": "overview rendered, median wall ms", "value": p50, "target": TARGET_MS,
                                  "verdict": verdict(p50, TARGET_MS)}}


def table(doc: dict[str, Any]) -> str:
    rows: list[list[Any]] = [["page (median of loads)", "wall ms", "data ms", "rendered ms", "p90 wall ms"]]
    for what in ("overview", "dataplanes_page"):
        r = doc[what]
        rows.append([what, f"{r['wall_ms']['p50']:.0f}", f"{r['data_ms']['p50']:.0f}",
                     f"{r['rendered_ms']['p50']:.0f}", f"{r['wall_ms']['p90']:.0f}"])
    t = doc["target"]
    return (f"{doc['dataplanes']} dataplanes ({doc['online']} online, {doc['offline']} offline), "
            f"{doc['loads']} loads each\n" + render_table(rows) +
            f"\ntarget: {t['what']} <= {t['target']:.0f}: {t['value']:.0f} {t['verdict']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataplanes", type=int, default=1000)
    ap.add_argument("--offline", type=int, default=100, help="dataplanes that never connect")
    ap.add_argument("--loads", type=int, default=7, help="measured page loads of each page")
    ap.add_argument("--cp-env", action="append", default=[], metavar="KUMA_X=V")
    ap.add_argument("--json-only", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (kuma-cp and client logs)")
    args = ap.parse_args()
    if not 0 <= args.offline < args.dataplanes:
        ap.error("--offline must be at least 0 and less than --dataplanes")
    install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gui-"))
    try:
        with Cleanup() as cleanup:
            doc = asyncio.run(run(args, tmp, cleanup))
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(dump_json(doc))
    if not args.json_only:
        print(table(doc))


if __name__ == "__main__":
    main()
