"""The VIP map for kuma-dp, on the dp-server port: `/kuma.vm.dp.v1.Vips/Watch` (server streaming, JSON).

kuma-dp's DNS stub answers `<service>.mesh` from this map, so names keep resolving while the control plane
restarts; the stream sends the current map at once (unless the caller already has that version), then every
new version. The caller proves it belongs to the mesh with its dataplane token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.dns.vips import VipView
from controlplane.tokens.errors import TokenError
from controlplane.tokens.service import TokenService

log = logging.getLogger("kuma.xds")

# How long one wait lasts before the current map is re-sent (lets either side notice a dead stream).
REFRESH_SECONDS = 60.0


class VipsService:
    def __init__(self, view: VipView, tokens: TokenService) -> None:
        self.view, self.tokens = view, tokens

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_stream_rpc_method_handler(self.watch)
        return grpc.method_handlers_generic_handler("kuma.vm.dp.v1.Vips", {"Watch": method})

    async def watch(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        try:
            req = json.loads(raw)
            mesh, token = str(req["mesh"]), str(req["dataplaneToken"])
            version = str(req.get("version", ""))
        except (ValueError, KeyError, TypeError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                'VIP watch request must be JSON {"mesh", "dataplaneToken", "version"?}')
            return
        try:
            await self.tokens.validate_dataplane_token(token, mesh)
        except TokenError as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"dataplane token rejected: {e}")
            return
        while True:
            current = await self.view.wait_changed(mesh, version, REFRESH_SECONDS)
            version = current.version
            yield json.dumps(current.to_json()).encode()
