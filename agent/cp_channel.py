"""The control plane's dp-server address, and kuma-dp's grpcio channel to it.

The MeshMetric follow (agent/metrics_watch.py) keeps it: one TCP connection and one TLS handshake instead of
one per call (its long poll re-asks every 30 s). The bootstrap call goes without grpcio (agent/grpc_unary.py),
and grpcio is imported on the channel's first use, once Envoy is ready, so it is never on kuma-dp's way to
Envoy's start.

A call that failed for a connection problem drops the channel (`reset`): the next call opens a fresh one at
once, instead of waiting out the reconnect backoff gRPC keeps per channel (up to minutes), so kuma-dp's own
retry interval (KUMA_CONTROL_PLANE_RETRY_BACKOFF) stays what decides when it tries again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import grpc.aio


@dataclass(frozen=True)
class CpAddress:
    """The dp-server's address, from --cp-address (https://HOST:PORT)."""

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


class CpChannel:
    def __init__(self, cp: CpAddress, ca_pem: bytes) -> None:
        self.cp, self.ca_pem = cp, ca_pem
        self._channel: grpc.aio.Channel | None = None

    def get(self) -> grpc.aio.Channel:
        """The channel (created on first use, in the running event loop; it connects on its first call)."""
        if self._channel is None:
            # kuma-dp explains TLS and connection failures itself, once (agent/bootstrap_fetch.py): gRPC's own
            # log only for errors. Read when grpc loads, which is here in kuma-dp; an operator's setting wins.
            os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
            import grpc
            import grpc.aio

            credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
            self._channel = grpc.aio.secure_channel(self.cp.target, credentials)
        return self._channel

    async def reset(self) -> None:
        """Drop the channel after a connection failure; the next `get()` opens a new one."""
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()

    async def close(self) -> None:
        await self.reset()
