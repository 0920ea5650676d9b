"""kuma-dp's side of the bootstrap call: ask the zone control plane's dp-server for this dataplane's Envoy
bootstrap (`/kuma.vm.dp.v1.Bootstrap/Get`, JSON over gRPC on the dp-server port, TLS verified with the CA).

grpcio is imported only when a call is made (kuma-dp makes it on its one channel, agent/cp_channel.py, once
its bootstrap worker has validated the definition), so commands and checks that never call the control plane
do not load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cp_channel import CpAddress, CpChannel

if TYPE_CHECKING:
    import grpc

__all__ = ["METHOD", "BootstrapError", "CpAddress", "fetch_bootstrap", "read_ca"]  # CpAddress: kept importable here

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


async def fetch_bootstrap(cp: CpAddress, ca_pem: bytes, request: dict[str, Any], *,
                          timeout: float = 10.0, channel: CpChannel | None = None) -> dict[str, Any]:
    """The control plane's answer: {"nodeId": ..., "bootstrap": {...Envoy bootstrap...}}. On `channel` when
    given (kuma-dp's shared one, dropped after a connection failure), else on a channel of its own."""
    import grpc
    import grpc.aio

    body = json.dumps({**request, "cpHost": cp.host, "cpPort": cp.port}).encode()
    own = channel is None
    shared = CpChannel(cp, ca_pem) if channel is None else channel
    try:
        raw = await shared.get().unary_unary(METHOD)(body, timeout=timeout)  # bytes in, bytes out
    except grpc.aio.AioRpcError as e:
        error = BootstrapError(e.code(), e.details() or str(e.code()))
        if error.retryable:
            await shared.reset()
        raise error from None
    finally:
        if own:
            await shared.close()
    answer = json.loads(raw)
    if not isinstance(answer, dict) or "bootstrap" not in answer:
        raise BootstrapError(grpc.StatusCode.INTERNAL, "the control plane's answer has no bootstrap in it")
    return answer


def read_ca(path: str | Path) -> bytes:
    data = Path(path).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{path}: not a PEM certificate (expected the control plane's ca.crt)")
    return data
