"""The gRPC servicer: `envoy.service.discovery.v3.AggregatedDiscoveryService` on grpc.aio, SotW and Delta."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

import grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from ..cache import SnapshotCache
from ..callbacks import Authenticator, NoopCallbacks, StreamCallbacks
from .delta import DeltaStream
from .encoded import serialize
from .sotw import SotwStream
from .stream import Settings, Stream

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
# Kuma waits this long after a NACK before sending the same type again.
DEFAULT_NACK_BACKOFF = 5.0
# Make before break: how long a cluster a new listener stopped using is kept after the client ACKed that listener.
# Envoy serves a connection it accepted on the old filter chain with the old routes, so a request read on it just
# after the ACK would otherwise find its cluster gone (503, "no cluster"; seen in test_crosszone under load).
DEFAULT_BREAK_DELAY = 2.0
# Make before use: how long a listener update waits at most for the client to warm the new clusters it routes to
# (see Stream.clusters_warm). Envoy asks for a new cluster's endpoints right after it processed the clusters, so
# this bounds only a client that never does.
DEFAULT_WARM_TIMEOUT = 5.0


class AdsServicer:
    """Serves every node's snapshots from `cache` to the ADS streams of Envoys (both protocol variants).

    `authenticator` turns each stream's first request into its node id (the cache key); `callbacks` hear
    about stream open/close, responses, ACKs and NACKs (synchronous, see `controlplane.xds.callbacks`).
    After a NACK, nothing new of that type is sent on that stream for `nack_backoff` seconds. A cluster (and its
    endpoints) that new listeners and routes stopped using is removed `break_delay` seconds after their ACK; a
    listener or route update that uses a cluster the client has not warmed yet waits for it (`warm_timeout` at most).
    """

    def __init__(self, cache: SnapshotCache, authenticator: Authenticator, callbacks: StreamCallbacks | None = None,
                 *, nack_backoff: float = DEFAULT_NACK_BACKOFF, break_delay: float = DEFAULT_BREAK_DELAY,
                 warm_timeout: float = DEFAULT_WARM_TIMEOUT) -> None:
        if nack_backoff < 0 or break_delay < 0 or warm_timeout < 0:
            raise ValueError("nack_backoff, break_delay and warm_timeout must not be negative")
        self.cache = cache
        self._settings = Settings(cache, authenticator, callbacks or NoopCallbacks(), nack_backoff,
                                  break_delay=break_delay, warm_timeout=warm_timeout)
        self._streams: set[Stream[Any]] = set()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """What the generated `add_AggregatedDiscoveryServiceServicer_to_server` does, with a response
        serializer that writes a stream's already encoded bytes (shared responses, see `encoded`) as they are."""
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.StreamAggregatedResources, request_deserializer=DiscoveryRequest.FromString,
                response_serializer=serialize),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.DeltaAggregatedResources, request_deserializer=DeltaDiscoveryRequest.FromString,
                response_serializer=serialize),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))
        server.add_registered_method_handlers(ADS_SERVICE, handlers)

    @property
    def stream_count(self) -> int:
        """Authenticated streams open now."""
        return len(self._streams)

    async def StreamAggregatedResources(self, request_iterator: AsyncIterable[DiscoveryRequest],
                                        context: grpc.aio.ServicerContext) -> None:
        await SotwStream(self._settings, request_iterator, context, self._streams).run()

    async def DeltaAggregatedResources(self, request_iterator: AsyncIterable[DeltaDiscoveryRequest],
                                       context: grpc.aio.ServicerContext) -> None:
        await DeltaStream(self._settings, request_iterator, context, self._streams).run()
