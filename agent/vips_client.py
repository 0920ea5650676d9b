"""kuma-dp's side of the VIP watch: the mesh's VIP map (service -> VIP, DNS name -> service) from the
dp-server's `/kuma.vm.dp.v1.Vips/Watch` stream, JSON messages, authenticated with the dataplane token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from .bootstrap_client import BootstrapError, CpAddress

METHOD = "/kuma.vm.dp.v1.Vips/Watch"


async def watch_vips(cp: CpAddress, ca_pem: bytes, mesh: str, token: str, version: str = ""
                     ) -> AsyncIterator[dict[str, Any]]:
    """Yield the VIP map now (unless `version` is current) and after every change; raises BootstrapError
    (retryable for connection problems) when the stream ends."""
    request = json.dumps({"mesh": mesh, "dataplaneToken": token, "version": version}).encode()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(cp.target, credentials) as channel:
        call = channel.unary_stream(METHOD)(request)
        try:
            async for raw in call:
                yield json.loads(raw)
        except grpc.aio.AioRpcError as e:
            raise BootstrapError(e.code(), e.details() or str(e.code())) from None
