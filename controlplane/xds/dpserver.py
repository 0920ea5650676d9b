"""The dp-server component: one TLS gRPC port (5678) serving ADS (SotW + Delta) and the bootstrap call."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node

from controlplane.netguard import ConnectionBudget, chosen, current_nofile
from controlplane.supervise import stop_grpc_server

from .server import AdsServicer

log = logging.getLogger("kuma.xds")

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),  # Envoy pings every 10 s (bootstrap)
    ("grpc.keepalive_permit_without_calls", 1),
    # Keepalive enforcement: a client pinging more often than the interval above gets GOAWAY after 2 strikes.
    ("grpc.http2.max_ping_strikes", 2),
    # Envoy opens one ADS stream, kuma-dp a VIP watch and a bootstrap call: room to spare, not a stream flood.
    ("grpc.max_concurrent_streams", 100),
]


def flood_options(handshake_timeout: float, idle_timeout: float, max_connections: int) -> list[tuple[str, int]]:
    """What keeps a flood of idle or slow connections from eating every descriptor. grpcio accepts in C and
    has no hook per source address (a cap per source would need a proxy copying every byte), so: a handshake
    deadline (TLS + HTTP/2 preface), closing connections with no call open, and a cap on connections sized
    from the open files limit (grpc closes the ones over it right after accept)."""
    return [
        ("grpc.server_handshake_timeout_ms", int(handshake_timeout * 1000)),
        ("grpc.max_connection_idle_ms", int(idle_timeout * 1000)),
        ("grpc.max_allowed_incoming_connections", max_connections),
    ]


class FanoutCallbacks:
    """Several StreamCallbacks as one, called in order."""

    def __init__(self, targets: Sequence[Any]) -> None:
        self.targets = list(targets)

    def on_stream_open(self, stream_id: int, node_id: str, node: Node) -> None:
        for t in self.targets:
            t.on_stream_open(stream_id, node_id, node)

    def on_stream_closed(self, stream_id: int, node_id: str) -> None:
        for t in self.targets:
            t.on_stream_closed(stream_id, node_id)

    def on_response_sent(self, node_id: str, type_url: str, version: str, nonce: str, resource_count: int,
                         byte_count: int) -> None:
        for t in self.targets:
            t.on_response_sent(node_id, type_url, version, nonce, resource_count, byte_count)

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        for t in self.targets:
            t.on_ack(node_id, type_url, version)

    def on_nack(self, node_id: str, type_url: str, version: str, error_detail: str) -> None:
        for t in self.targets:
            t.on_nack(node_id, type_url, version, error_detail)


GLOBAL_REFUSAL = ("this is the global control plane: it serves no dataplanes. Point kuma-dp at a zone control "
                  "plane (--cp-address https://ZONE-CP:5678); the global owns meshes and policies and syncs them to "
                  "the zones over KDS")


class RefuseDataplanes(grpc.GenericRpcHandler):
    """On global, the dp-server port answers every call (bootstrap, ADS, VIP watch) with a refusal that says where
    to go, rather than a connection refused that looks like a control plane that is down."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def refuse(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            log.warning("refused a dataplane call: this is the global control plane",
                        extra={"method": handler_call_details.method, "peer": context.peer()})
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, GLOBAL_REFUSAL)
            yield b""  # never reached: makes this an async generator (a streaming handler)

        return grpc.stream_stream_rpc_method_handler(refuse)


class DpServer:
    name = "dp-server"

    def __init__(self, interface: str, port: int, key_cert_pairs: Sequence[tuple[bytes, bytes]],
                 ads: AdsServicer | None,
                 handlers: Sequence[grpc.GenericRpcHandler],
                 on_stop: Callable[[], Awaitable[None]] | None = None, *, handshake_timeout: float = 10.0,
                 idle_timeout: float = 300.0, max_connections: int = 0) -> None:
        self.interface, self.port, self.on_stop = interface, port, on_stop
        self.handshake_timeout, self.idle_timeout = handshake_timeout, idle_timeout
        self.max_connections = chosen(max_connections, ConnectionBudget.from_limit(current_nofile()).dp_server)
        self.key_cert_pairs, self.ads, self.handlers = list(key_cert_pairs), ads, list(handlers)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(options=GRPC_OPTIONS + flood_options(self.handshake_timeout, self.idle_timeout,
                                                                      self.max_connections))
        if self.ads is not None:
            self.ads.add_to_server(server)
        server.add_generic_rpc_handlers(self.handlers)  # the bootstrap call, the VIP watch (on global: refusals)
        address = f"{self.interface}:{self.port}"
        try:
            bound = server.add_secure_port(address, grpc.ssl_server_credentials(self.key_cert_pairs))
        except RuntimeError as e:
            raise RuntimeError(f"cannot listen on {address} for the dp-server: {e}; is another kuma-cp running? "
                               "change KUMA_DP_SERVER_PORT") from e
        if bound == 0:
            raise RuntimeError(f"cannot listen on {address} for the dp-server (port in use?): change "
                               "KUMA_DP_SERVER_PORT")
        await server.start()
        self._server = server
        log.info("dp-server listening", extra={"address": address, "tls": True,
                                               "maxConnections": self.max_connections})

    async def stop(self) -> None:
        # First the lifecycle: streams closed by our own shutdown must not unregister their dataplanes (or a
        # last rebuild would push their removal to the Envoys that stay).
        if self.on_stop is not None:
            await self.on_stop()
        if self._server is not None:
            # Stop accepting, give streams a moment; Envoys keep their config and reconnect to the next one.
            await stop_grpc_server(self._server, 1.0, "dp-server")
            self._server = None
