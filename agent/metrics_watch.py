"""kuma-dp's side of MeshMetric: follow the dataplane's merged MeshMetric and serve what it says.

The control plane answers `/kuma.vm.dp.v1.Metrics/Get` (controlplane/mads/dp_config.py) when the version
kuma-dp holds is no longer current (or after its wait), so this loop follows policy changes without polling.
For each Prometheus backend kuma-dp listens on the dataplane's address and the backend's port and serves the
merged Envoy + kuma-dp metrics, filtered and labelled (agent/metrics.py's MetricsPolicy), on its path. Those
are the address, port and path the control plane's MADS gives Prometheus. While the control plane is away,
the last configuration stays served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.httpd import listen, serve
from agent.metrics import CONTENT_TYPE, MetricsPolicy

log = logging.getLogger("kuma-dp.metrics")

METHOD = "/kuma.vm.dp.v1.Metrics/Get"
CALL_TIMEOUT = 60.0  # the control plane answers within 30 s (its wait) when nothing changes
BACKOFF = 1.0
BACKOFF_CAP = 30.0

Render = Callable[[MetricsPolicy | None], Awaitable[bytes]]


async def get_config(cp: str, ca_pem: bytes, mesh: str, name: str, token: str, version: str) -> dict[str, Any]:
    import grpc

    from agent.bootstrap_client import BootstrapError, CpAddress

    address = CpAddress.parse(cp)
    request = json.dumps({"mesh": mesh, "name": name, "dataplaneToken": token, "version": version}).encode()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(address.target, credentials) as channel:
        try:
            raw = await channel.unary_unary(METHOD)(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            raise BootstrapError(e.code(), e.details() or str(e.code())) from None
    answer = json.loads(raw)
    if not isinstance(answer, dict):
        raise ValueError("the control plane's metrics config is not a JSON object")
    return answer


@dataclass
class MeshMetricServer:
    """The listeners of the current MeshMetric's Prometheus backends, replaced when it changes."""

    render: Render
    policy: MetricsPolicy | None = None
    listeners: dict[tuple[str, int], tuple[str, asyncio.Server]] = field(default_factory=dict)

    async def apply(self, answer: dict[str, Any]) -> None:
        self.policy = MetricsPolicy.from_answer(answer) if answer.get("conf") is not None else None
        address = str(answer.get("address") or "127.0.0.1")
        wanted = {(address, int(b["port"])): str(b["path"]) for b in answer.get("backends") or ()}
        for key in [k for k in self.listeners if k not in wanted or self.listeners[k][0] != wanted[k]]:
            _path, server = self.listeners.pop(key)
            server.close()
            await server.wait_closed()
            log.info("MeshMetric listener closed", extra={"address": f"{key[0]}:{key[1]}"})
        for key, path in wanted.items():
            if key in self.listeners:
                continue
            try:
                sock = listen(*key)
            except OSError as e:
                log.error("cannot serve MeshMetric's Prometheus backend: choose another port in the MeshMetric",
                          extra={"address": f"{key[0]}:{key[1]}", "error": str(e)})
                continue
            self.listeners[key] = (path, await serve(sock, {path: self._metrics}))
            log.info("MeshMetric listener serving", extra={"address": f"{key[0]}:{key[1]}", "path": path})

    async def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, await self.render(self.policy)

    async def close(self) -> None:
        for _path, server in self.listeners.values():
            server.close()
        for _path, server in self.listeners.values():
            await server.wait_closed()
        self.listeners.clear()


async def follow(server: MeshMetricServer, cp: str, ca_pem: bytes, mesh: str, name: str, token: str) -> None:
    """Apply every new version of the dataplane's MeshMetric, forever (cancel to stop)."""
    from agent.bootstrap_client import BootstrapError

    version, delay, failing = "", BACKOFF, False
    while True:
        try:
            answer = await get_config(cp, ca_pem, mesh, name, token, version)
        except asyncio.CancelledError:
            raise
        except (BootstrapError, ValueError, OSError) as e:
            # Before Envoy's first connection the Dataplane may not be registered yet (NOT_FOUND): retry.
            code = getattr(getattr(e, "code", None), "name", "")
            problem = f"{code} {getattr(e, 'message', e)}".strip()
            # NOT_FOUND before Envoy's first connection registers the Dataplane is expected: not a warning.
            quiet = failing or (code == "NOT_FOUND" and not version)
            (log.debug if quiet else log.warning)(
                "MeshMetric config unavailable; serving the last one", extra={"cp": cp, "error": problem})
            failing = True
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_CAP)
            continue
        failing, delay = False, BACKOFF
        new = str(answer.get("version", ""))
        if new != version:
            version = new
            await server.apply(answer)

