"""kuma-dp's side of the VIP watch: the mesh's VIP map (service -> VIP, DNS name -> service) from the
dp-server's `/kuma.vm.dp.v1.Vips/Watch` stream, JSON messages, authenticated with the dataplane token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from .bootstrap_client import BootstrapError, CpAddress

METHOD = "/kuma.vm.dp.v1.Vips/Watch"
REPORT_METHOD = "/kuma.vm.dp.v1.Status/Report"
REPORT_TIMEOUT = 10.0


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
            raise BootstrapError.of(e) from None


async def report_host_dns(cp: CpAddress, ca_pem: bytes, mesh: str, name: str, token: str,
                          host_dns: dict[str, str]) -> None:
    """Send the host resolver's state for the dataplane's insight; raises BootstrapError (retryable for
    connection problems) when the control plane does not take it."""
    request = json.dumps({"mesh": mesh, "name": name, "dataplaneToken": token, "hostDns": host_dns}).encode()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(cp.target, credentials) as channel:
        try:
            await channel.unary_unary(REPORT_METHOD)(request, timeout=REPORT_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            raise BootstrapError.of(e) from None
