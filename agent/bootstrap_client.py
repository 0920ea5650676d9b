"""kuma-dp's side of the bootstrap call: ask the zone control plane's dp-server for this dataplane's Envoy
bootstrap (`/kuma.vm.dp.v1.Bootstrap/Get`, JSON over gRPC on the dp-server port, TLS verified with the CA).

grpcio is imported only when a call is made: kuma-dp itself uses `CpAddress` and `read_ca`, and leaves the
call to its short-lived bootstrap worker (see agent/bootstrap_worker.py), so the long-running process never
loads grpcio."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import grpc

METHOD = "/kuma.vm.dp.v1.Bootstrap/Get"


class BootstrapError(Exception):
    """The control plane refused (or could not be reached); `code` is the gRPC status, `retryable` says
    whether trying again later can help (unreachable / unavailable) or the operator must fix something."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def retryable(self) -> bool:
        import grpc

        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class CpAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> CpAddress:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        if parts.scheme != "https":
            raise ValueError(f"--cp-address {url!r}: the dp-server speaks TLS only: use https://HOST:5678")
        if not parts.hostname:
            raise ValueError(f"--cp-address {url!r}: no host in it (expected https://HOST:5678)")
        return cls(parts.hostname, parts.port or 5678)

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


async def fetch_bootstrap(cp: CpAddress, ca_pem: bytes, request: dict[str, Any], *,
                          timeout: float = 10.0) -> dict[str, Any]:
    """The control plane's answer: {"nodeId": ..., "bootstrap": {...Envoy bootstrap...}}."""
    import grpc
    import grpc.aio

    body = {**request, "cpHost": cp.host, "cpPort": cp.port}
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(cp.target, credentials) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out
        try:
            raw = await call(json.dumps(body).encode(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise BootstrapError(e.code(), e.details() or str(e.code())) from None
    answer = json.loads(raw)
    if not isinstance(answer, dict) or "bootstrap" not in answer:
        raise BootstrapError(grpc.StatusCode.INTERNAL, "the control plane's answer has no bootstrap in it")
    return answer


def read_ca(path: str | Path) -> bytes:
    data = Path(path).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{path}: not a PEM certificate (expected the control plane's ca.crt)")
    return data
