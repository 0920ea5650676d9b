"""The API server component: plain HTTP (local admin) and HTTPS (user tokens), one application each."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from controlplane import __version__, gui
from controlplane.config import Config
from controlplane.netguard import (
    ConnectionBudget,
    ConnectionLimits,
    GuardedListener,
    bind_listener,
    chosen,
    current_nofile,
)
from controlplane.resources.base import Registry
from controlplane.store.base import ResourceStore

from . import openapi
from .auth import Authenticator, is_loopback, local_admin_middleware, token_middleware
from .checks import WriteChecks
from .errors import MAX_BODY_BYTES, error_middleware
from .insights import InsightsApi
from .ratelimit import RateLimiter
from .resources import ResourceApi

log = logging.getLogger("kuma.api")


@dataclass
class ApiContext:
    config: Config
    store: ResourceStore
    registry: Registry
    instance_id: str
    authenticate: Authenticator
    ssl_context: ssl.SSLContext | None
    extra_routes: list[Any]  # callables taking the app: other components' endpoints (tokens, ...)
    checks: WriteChecks | None = None
    # More fields for GET / (a zone's name and its link to global), computed per request.
    index_fields: list[Callable[[], dict[str, Any]]] = field(default_factory=list)


def build_app(ctx: ApiContext, *, admin: bool) -> web.Application:
    cfg = ctx.config.api_server
    limiter = RateLimiter(cfg.rate_limit_rps, cfg.rate_limit_burst)
    auth = local_admin_middleware(ctx.authenticate) if admin else token_middleware(ctx.authenticate)
    app = web.Application(client_max_size=cfg.max_body_bytes,
                          middlewares=[error_middleware, limiter.middleware(), auth])
    app[MAX_BODY_BYTES] = cfg.max_body_bytes
    doc = openapi.build(ctx.registry)

    async def index(request: web.Request) -> web.Response:
        doc = {"hostname": socket.gethostname(), "tagline": "kuma-vm", "version": __version__,
               "instanceId": ctx.instance_id, "mode": ctx.config.mode, "store": ctx.store.backend}
        for fields in ctx.index_fields:
            doc.update(fields())
        return web.json_response(doc)

    async def openapi_doc(request: web.Request) -> web.Response:
        return web.json_response(doc)

    app.router.add_get("/", index)
    app.router.add_get("/openapi.json", openapi_doc)
    for add in ctx.extra_routes:
        add(app)
    gui.add_routes(app)
    InsightsApi(ctx.store, ctx.registry, heartbeat=ctx.config.dp_server.heartbeat).add_routes(app)
    # Last: its /{plural}/{name} patterns would otherwise shadow the fixed paths above.
    ResourceApi(ctx.store, ctx.registry, read_only=cfg.read_only, checks=ctx.checks).add_routes(app)
    return app


class ApiServer:
    name = "api-server"

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._runners: list[web.AppRunner] = []
        self._guarded: list[GuardedListener] = []

    async def start(self) -> None:
        cfg = self.ctx.config.api_server
        if cfg.http.enabled:
            if not is_loopback(cfg.http.interface):
                log.warning("the plain-HTTP API listens beyond loopback: only loopback callers are admin there, "
                            "others need a user token, and nothing is encrypted; bind it to 127.0.0.1 "
                            "(apiServer.http.interface, KUMA_API_SERVER_HTTP_INTERFACE) and use the HTTPS API "
                            "from other hosts", extra={"interface": cfg.http.interface, "port": cfg.http.port})
            await self._serve(build_app(self.ctx, admin=True), cfg.http.interface, cfg.http.port, None)
        if cfg.https.enabled:
            if self.ctx.ssl_context is None:
                raise RuntimeError("the HTTPS API needs a TLS context")
            await self._serve_public(build_app(self.ctx, admin=False), cfg.https.interface, cfg.https.port,
                                     self.ctx.ssl_context)

    async def _serve(self, app: web.Application, host: str, port: int, ssl_ctx: ssl.SSLContext | None) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise RuntimeError(f"cannot listen on {host}:{port} for the {'HTTPS' if ssl_ctx else 'HTTP'} API: "
                               f"{e.strerror}; is another kuma-cp running? change the port in the config") from e
        self._runners.append(runner)
        log.info("API listening", extra={"address": f"{host}:{port}", "tls": ssl_ctx is not None})

    async def _serve_public(self, app: web.Application, host: str, port: int, ssl_ctx: ssl.SSLContext) -> None:
        """The HTTPS API faces the network: our own accept loop caps connections (in total and per address)
        and times out TLS handshakes; aiohttp's keepalive timeout (from the connection's start) closes idle
        and slowloris connections."""
        cfg = self.ctx.config.api_server.https
        budget = ConnectionBudget.from_limit(current_nofile())
        max_total = chosen(cfg.max_connections, budget.https_api)
        limits = ConnectionLimits("https-api", max_total,
                                  chosen(cfg.max_connections_per_source, ConnectionBudget.per_source(max_total)))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=cfg.idle_timeout)
        await runner.setup()
        try:
            sock = bind_listener(host, port)
        except OSError as e:
            await runner.cleanup()
            raise RuntimeError(f"cannot listen on {host}:{port} for the HTTPS API: {e.strerror}; is another "
                               "kuma-cp running? change the port in the config") from e
        assert runner.server is not None
        listener = GuardedListener(sock, runner.server, limits, ssl_context=ssl_ctx,
                                   handshake_timeout=cfg.handshake_timeout)
        listener.start()
        self._runners.append(runner)
        self._guarded.append(listener)
        log.info("API listening", extra={"address": f"{host}:{port}", "tls": True, "maxConnections": max_total,
                                         "maxConnectionsPerSource": limits.max_per_source})

    async def stop(self) -> None:
        for listener in self._guarded:
            await listener.close()
        self._guarded.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
