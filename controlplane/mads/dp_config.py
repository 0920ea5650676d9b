"""`/kuma.vm.dp.v1.Metrics/Get` on the dp-server (unary, JSON): a kuma-dp's merged MeshMetric.

kuma-dp asks with its dataplane token and the version it has; the answer comes when the version differs
(at once for a first call) or after WAIT seconds with the same version, so kuma-dp follows policy changes
without polling. The answer: `{"version", "conf" (merged MeshMetric default, or null), "service", "zone",
"address" (to listen on), "labels" (the target's), "backends" (Prometheus backends, Kuma's defaults filled in),
"openTelemetry" (OpenTelemetry backends: {endpoint, interval seconds})}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

import grpc

from controlplane.policies.mesh_metric import opentelemetry_backends, prometheus_backends
from controlplane.supervise import wait_set
from controlplane.xds.auth import DataplaneAuthenticator
from controlplane.xds.callbacks import XdsAuthError

from .assignments import Assignments

log = logging.getLogger("kuma.mads")

WAIT = 30.0  # seconds a call with the current version waits for a change


class MetricsConfigService:
    def __init__(self, assignments: Assignments, auth: DataplaneAuthenticator, zone: str) -> None:
        self.assignments, self.auth, self.zone = assignments, auth, zone

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self.get)
        return grpc.method_handlers_generic_handler("kuma.vm.dp.v1.Metrics", {"Get": method})

    def answer(self, mesh: str, name: str) -> dict[str, Any]:
        found = self.assignments.of(mesh, name)
        conf = found.conf if found else None
        body: dict[str, Any] = {"conf": conf, "service": found.service if found else "", "zone": self.zone,
                                "address": found.listen if found else "", "labels": found.labels if found else {},
                                "backends": prometheus_backends(conf), "openTelemetry": opentelemetry_backends(conf)}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        body["mesh"] = mesh
        body["version"] = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        return body

    async def get(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            req = json.loads(raw)
            mesh, name, token = str(req["mesh"]), str(req["name"]), str(req["dataplaneToken"])
            version = str(req.get("version", ""))
        except (ValueError, KeyError, TypeError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                'a metrics config request must be JSON {"mesh", "name", "dataplaneToken", '
                                '"version"}')
        try:
            await self.auth.identify(mesh, name, token, None)
        except XdsAuthError as e:
            await context.abort(e.code, e.message)
        await self.assignments.wait_ready()
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            changed = self.assignments.changed()
            body = self.answer(mesh, name)
            remaining = deadline - asyncio.get_running_loop().time()
            if body["version"] != version or remaining <= 0:
                break
            await wait_set(changed, remaining)
        return json.dumps(body).encode()
