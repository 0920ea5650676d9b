"""Diagnostics server: /ready (components started and healthy), /healthy (no background task down or
crash-looping: see controlplane/supervise.py), /metrics (Prometheus)."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from controlplane.runtime import Runtime

log = logging.getLogger("kuma.diagnostics")

LEADER = Gauge("leader", "1 when this control-plane instance is the leader")


class DiagnosticsServer:
    name = "diagnostics"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._runner: web.AppRunner | None = None

    async def _ready(self, request: web.Request) -> web.Response:
        if not self.runtime.ready.is_set():
            return web.Response(status=503, text="not ready\n")
        if unhealthy := self.runtime.supervisor.unhealthy():
            return web.Response(status=503, text=_describe("not ready", unhealthy))
        return web.Response(text="ready\n")

    async def _healthy(self, request: web.Request) -> web.Response:
        if unhealthy := self.runtime.supervisor.unhealthy():
            return web.Response(status=503, text=_describe("unhealthy", unhealthy))
        return web.Response(text="healthy\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        LEADER.set(1 if self.runtime.elector.is_leader else 0)
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/healthy", self._healthy)
        app.router.add_get("/metrics", self._metrics)
        cfg = self.runtime.config.diagnostics
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, cfg.interface, cfg.server_port, reuse_address=True).start()
        except OSError as e:
            await self._runner.cleanup()
            raise RuntimeError(f"cannot listen on {cfg.interface}:{cfg.server_port} for diagnostics: "
                               f"{e.strerror}") from e
        log.info("diagnostics listening", extra={"address": f"{cfg.interface}:{cfg.server_port}"})

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None


def _describe(state: str, unhealthy: dict[str, str]) -> str:
    lines = [f"{state}: background task {name} {why}" for name, why in sorted(unhealthy.items())]
    return "\n".join(lines) + "\n"
