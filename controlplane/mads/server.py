"""Kuma's Monitoring Assignment Discovery Service over HTTP: what Prometheus' `kuma_sd_configs` speaks.

Prometheus (discovery/xds/client.go, kuma.go) POSTs a DiscoveryRequest in proto3 JSON to
`/v3/discovery:monitoringassignments?fetch-timeout=2m` with the `versionInfo` and `responseNonce` of its last
answer and its client id as `node.id`. The answer is a DiscoveryResponse in proto3 JSON whose `resources` are
`kuma.observability.v1.MonitoringAssignment`s as Any (`@type` + fields). When the client already has the
current version, the server long-polls: it answers as soon as the assignments change, or with 304 Not
Modified when the fetch timeout runs out (Prometheus then asks again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from typing import Any

from aiohttp import web

from controlplane.supervise import wait_set

from .assignments import TYPE_URL, Assignments

log = logging.getLogger("kuma.mads")

PATH = "/v3/discovery:monitoringassignments"
DEFAULT_FETCH_TIMEOUT = 30.0  # Kuma's monitoringAssignmentServer.defaultFetchTimeout
MAX_FETCH_TIMEOUT = 600.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


class BadRequest(ValueError):
    pass


def parse_fetch_timeout(text: str | None) -> float:
    """Prometheus' `fetch-timeout` (a Prometheus duration such as '2m', '1m30s', '500ms') in seconds."""
    if not text:
        return DEFAULT_FETCH_TIMEOUT
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise BadRequest(f"fetch-timeout {text!r} is not a duration: use e.g. '30s' or '2m'")
    return min(total, MAX_FETCH_TIMEOUT)


def parse_request(body: bytes) -> tuple[str, str]:
    """(versionInfo, client id) of a DiscoveryRequest in proto3 JSON (camelCase or proto field names)."""
    try:
        req = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest("the body must be a DiscoveryRequest in JSON") from None
    if not isinstance(req, dict):
        raise BadRequest("the body must be a DiscoveryRequest JSON object")
    type_url = req.get("typeUrl", req.get("type_url", TYPE_URL))
    if type_url not in ("", TYPE_URL):
        raise BadRequest(f"typeUrl {type_url!r} is not served here: use {TYPE_URL}")
    node = req.get("node") or {}
    version = req.get("versionInfo", req.get("version_info", ""))
    client = node.get("id", "") if isinstance(node, dict) else ""
    if not isinstance(version, str) or not isinstance(client, str):
        raise BadRequest("versionInfo and node.id must be strings")
    return version, client


class MadsServer:
    name = "mads-server"

    def __init__(self, assignments: Assignments, interface: str, port: int,
                 default_fetch_timeout: float = DEFAULT_FETCH_TIMEOUT) -> None:
        self.assignments, self.interface, self.port = assignments, interface, port
        self.default_fetch_timeout = default_fetch_timeout
        self._runner: web.AppRunner | None = None

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        try:
            raw_timeout = request.query.get("fetch-timeout")
            timeout = parse_fetch_timeout(raw_timeout) if raw_timeout else self.default_fetch_timeout
            version, client = parse_request(await request.read())
        except BadRequest as e:
            return web.json_response({"title": "Bad Request", "detail": str(e)}, status=400)
        await self.assignments.wait_ready()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            changed = self.assignments.changed()  # before reading: a change from now on wakes us
            current, resources = self.assignments.for_client(client)
            if current != version:
                break
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return web.Response(status=304)
            if not await wait_set(changed, remaining):
                return web.Response(status=304)
        log.debug("monitoring assignments sent", extra={"client": client, "version": current,
                                                        "assignments": len(resources)})
        return web.json_response({"versionInfo": current, "resources": resources, "typeUrl": TYPE_URL,
                                  "nonce": uuid.uuid4().hex})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PATH, self.fetch)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.interface, self.port, reuse_address=True).start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise RuntimeError(f"cannot listen on {self.interface}:{self.port} for monitoring assignments "
                               f"(KUMA_MONITORING_ASSIGNMENT_SERVER_PORT): {e.strerror}") from e
        log.info("monitoring assignment server listening", extra={"address": f"{self.interface}:{self.port}"})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def describe(resources: list[dict[str, Any]]) -> list[str]:
    """'mesh/dataplane address/path' of each assignment's targets (for logs and tests)."""
    return [f"{a['mesh']}/{t['name']} {t['address']}{t['metricsPath']}" for a in resources for t in a["targets"]]
