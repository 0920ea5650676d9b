"""The DNS worker: the process that serves the stub (`python -m agent.dns.worker`, started by kuma-dp).

Why a process of its own: the UDP hot path gets an interpreter (and GIL) to itself, and the VIP watch's
gRPC client (grpcio, ~25 MB, threads) stays out of the long-running kuma-dp, as the bootstrap worker's does.
kuma-dp binds the listening sockets itself (so "address in use" is its clear error, before the bootstrap,
and a restarted worker finds them ready) and passes them down; the worker dies with kuma-dp (PDEATHSIG).

Protocol: kuma-dp writes one JSON line on stdin:
    {"udpFd": N, "tcpFd": M, "upstreams": ["ADDR:PORT", ...], "vips": {...map...} | null, "domain": "mesh",
     "watch": {"cp", "caPem", "mesh", "token", "name"} | null, "hostDns": {"state", "message"} | null,
     "logLevel", "logFormat"}
then, while it runs, a line {"hostDns": {"state", "message"}} whenever the host's resolver changes state; the
worker sends each to the control plane for the dataplane's insight (when "watch" has a name). kuma-dp reads
JSON lines on stdout: {"ready": {"listen", "names", "version", "upstreams"}} once serving, then
{"vips": {...map...}} for every new VIP map. SIGTERM/SIGINT stop it (exit 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from typing import Any

from .cache import Cache
from .forward import Forwarder, Upstream
from .server import StubServer
from .settings import DOMAIN, parse_address
from .watch import HostDnsReporter, WatchParams, follow
from .zone import Zone

log = logging.getLogger("kuma-dp.dns")


def emit(**message: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


async def serve(payload: dict[str, Any], stdin: asyncio.StreamReader | None = None) -> int:
    udp = socket.socket(fileno=int(payload["udpFd"]))
    tcp = socket.socket(fileno=int(payload["tcpFd"]))
    domain = str(payload.get("domain") or DOMAIN)
    upstreams = [Upstream(*parse_address(u)) for u in payload.get("upstreams", [])]
    server = StubServer(udp, tcp, Zone.from_map(payload.get("vips"), domain), Forwarder(upstreams, cache=Cache()))
    await server.start()
    host, port = server.address
    emit(ready={"listen": f"{host}:{port}", "names": len(server.zone.records), "version": server.zone.version,
                "loaded": server.zone.loaded, "upstreams": [str(u) for u in upstreams]})

    def on_map(vip_map: dict[str, Any]) -> None:
        zone = Zone.from_map(vip_map, domain)
        server.set_zone(zone)
        log.info("DNS: .mesh names updated", extra={"names": len(zone.records), "version": zone.version})
        emit(vips=vip_map)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    watch = payload.get("watch")
    if watch:
        params = WatchParams(str(watch["cp"]), str(watch["caPem"]).encode(), str(watch["mesh"]), str(watch["token"]),
                             str(watch.get("name") or ""))
        tasks.append(asyncio.create_task(follow(params, on_map, server.zone.version)))
        if params.name:
            reporter = HostDnsReporter(params)
            if payload.get("hostDns"):
                reporter.report(payload["hostDns"])
            tasks.append(asyncio.create_task(reporter.run()))
            if stdin is not None:
                tasks.append(asyncio.create_task(_read_reports(stdin, reporter)))
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await server.stop()
        log.debug("DNS worker stopped", extra=dict(server.stats + server.forwarder.stats))
    return 0


async def _read_reports(stdin: asyncio.StreamReader, reporter: HostDnsReporter) -> None:
    """kuma-dp's later lines: host DNS reports (EOF: kuma-dp is going away, and this worker with it)."""
    while line := await stdin.readline():
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("ignored a line from kuma-dp that is not JSON")
            continue
        if isinstance(message, dict) and isinstance(message.get("hostDns"), dict):
            reporter.report({k: str(v) for k, v in message["hostDns"].items()})


async def _run() -> int:
    from kuma_shared import logs

    # One reader for every line: a buffered sys.stdin.readline() could swallow the lines after the first.
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer)
    line = await stdin.readline()
    if not line:
        return 1
    payload = json.loads(line)
    logs.setup(payload.get("logLevel", "info"), payload.get("logFormat", "text"))
    return await serve(payload, stdin)


def main() -> int:
    try:
        return asyncio.run(_run())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
