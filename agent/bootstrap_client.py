"""kuma-dp's side of the bootstrap call: ask the zone control plane's dp-server for this dataplane's Envoy
bootstrap (`/kuma.vm.dp.v1.Bootstrap/Get`, JSON over gRPC on the dp-server port, TLS verified with the CA).

The call is made without grpcio (agent/grpc_unary.py), so that nothing of grpcio loads before Envoy is
spawned; `BootstrapError` is also what kuma-dp's grpcio streams (MeshMetric follow, VIP watch) raise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import agent
from agent.cp_channel import CpAddress

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["METHOD", "BootstrapError", "CpAddress", "fetch_bootstrap", "read_ca"]  # CpAddress: kept importable here

METHOD = "/kuma.vm.dp.v1.Bootstrap/Get"
FETCH_TIMEOUT = 5.0  # one attempt; kuma-dp's retries are agent/bootstrap_fetch.py's


class BootstrapError(Exception):
    """The control plane refused (or could not be reached); `code` is the gRPC status by name (e.g.
    "UNAUTHENTICATED"), `retryable` says whether trying again later can help (unreachable / unavailable) or
    the operator must fix something."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    @classmethod
    def of(cls, e: grpc.aio.AioRpcError) -> BootstrapError:
        """A failed grpcio call (kuma-dp's streams) as the same error."""
        return cls(e.code().name, e.details() or e.code().name)

    @property
    def retryable(self) -> bool:
        return self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


async def fetch_bootstrap(cp: CpAddress, ca_pem: bytes, request: dict[str, Any], *,
                          timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    """The control plane's answer: {"nodeId": ..., "bootstrap": {...Envoy bootstrap...}}, on a connection of
    its own (agent/grpc_unary.py: no grpcio on the way to Envoy's spawn)."""
    from agent import grpc_unary

    try:
        raw = await grpc_unary.call_async(cp.host, cp.port, ca_pem, METHOD, _body(cp, request), timeout=timeout,
                                          user_agent=f"kuma-dp/{agent.version()}")
    except grpc_unary.UnaryError as e:
        raise BootstrapError(e.status, e.message) from None
    return _answer(raw)


def fetch_bootstrap_blocking(cp: CpAddress, ca_pem: bytes, request: dict[str, Any], *,
                             timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    """`fetch_bootstrap` on a blocking socket, for kuma-dp's head start (agent/head_start.py: no event loop yet)."""
    from agent import grpc_unary

    try:
        raw = grpc_unary.call(cp.host, cp.port, ca_pem, METHOD, _body(cp, request), timeout=timeout,
                              user_agent=f"kuma-dp/{agent.version()}")
    except grpc_unary.UnaryError as e:
        raise BootstrapError(e.status, e.message) from None
    return _answer(raw)


def _body(cp: CpAddress, request: dict[str, Any]) -> bytes:
    return json.dumps({**request, "cpHost": cp.host, "cpPort": cp.port}).encode()


def _answer(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("bootstrap"), dict):
        raise BootstrapError("INTERNAL", "the control plane's answer has no bootstrap in it")
    return answer


def read_ca(path: str | Path) -> bytes:
    data = Path(path).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{path}: not a PEM certificate (expected the control plane's ca.crt)")
    return data
