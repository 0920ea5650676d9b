"""What the ADS server asks of the rest of the control plane: who a stream is, and what happened on it.

`Authenticator` runs once per stream, on its first request. It returns the node id: the key under which the
stream's snapshots are found in the `SnapshotCache` (for kuma-cp, the dataplane's `mesh.name` key, checked
against the dataplane token); it may be sync or async.

`StreamCallbacks` are plain synchronous methods called on the event loop thread, in stream order. They must
return quickly and never block (schedule any I/O, e.g. writing insights to the store, on your own task and
debounce it). An exception in a callback is logged and otherwise ignored: it never breaks the stream.

Per stream: `on_stream_open` once, after authentication succeeded and before anything is sent; then any number
of `on_response_sent` / `on_ack` / `on_nack`; then `on_stream_closed` exactly once, whatever ended the stream
(client close, error, cancellation, server abort). A stream that fails before `on_stream_open` (no node,
authentication refused) gets neither callback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol

import grpc
from envoy.config.core.v3.base_pb2 import Node

__all__ = [
    "Authenticator",
    "NoopCallbacks",
    "StreamCallbacks",
    "TrustNodeIdAuthenticator",
    "XdsAuthError",
]


class XdsAuthError(Exception):
    """Refuse a stream: it ends with `code` and `message` (only that stream)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Authenticator(Protocol):
    def authenticate(self, node: Node, metadata: Mapping[str, str], peer: str) -> str | Awaitable[str]:
        """The node id (snapshot cache key) for a stream whose first request carried `node`.

        `metadata` is the stream's invocation metadata with lower-case keys (binary `-bin` entries left out;
        the first value of a repeated key); the dataplane token comes as `authorization`. `peer` is gRPC's
        peer string (`ipv4:127.0.0.1:41234`). Raise `XdsAuthError` to refuse the stream. May be a coroutine.
        """
        ...


class StreamCallbacks(Protocol):
    """Synchronous, non-blocking hooks (see the module docstring). `node_id` is what the authenticator returned."""

    def on_stream_open(self, stream_id: int, node_id: str, node: Node) -> None:
        """An authenticated stream; `stream_id` is unique in this process; `node` is the first request's Node."""

    def on_stream_closed(self, stream_id: int, node_id: str) -> None:
        """The stream opened with `stream_id` ended (exactly once per `on_stream_open`)."""

    def on_response_sent(self, node_id: str, type_url: str, version: str, nonce: str, resource_count: int,
                         byte_count: int) -> None:
        """A response is being sent (called just before it is written, so always before its ACK/NACK).
        SotW: `version` is its version_info and `resource_count` every resource in it; Delta: `version` is its
        system_version_info and `resource_count` the added/changed resources only (removals not counted).
        `byte_count` is the serialised size of the whole response."""

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        """The client accepted the response that carried `version` (the version we sent with that nonce).
        Also called, without a response, when a reconnecting SotW client's first CDS/LDS request says it
        already runs the current `version` (nothing is resent then)."""

    def on_nack(self, node_id: str, type_url: str, version: str, error_detail: str) -> None:
        """The client rejected the response that carried `version`; `error_detail` is its error message."""


class NoopCallbacks:
    """Callbacks that do nothing (tests, tools)."""

    def on_stream_open(self, stream_id: int, node_id: str, node: Node) -> None:
        pass

    def on_stream_closed(self, stream_id: int, node_id: str) -> None:
        pass

    def on_response_sent(self, node_id: str, type_url: str, version: str, nonce: str, resource_count: int,
                         byte_count: int) -> None:
        pass

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        pass

    def on_nack(self, node_id: str, type_url: str, version: str, error_detail: str) -> None:
        pass


class TrustNodeIdAuthenticator:
    """Accepts every stream and keys it by `node.id` (tests, and control planes with authentication off)."""

    def authenticate(self, node: Node, metadata: Mapping[str, str], peer: str) -> str:
        return node.id
