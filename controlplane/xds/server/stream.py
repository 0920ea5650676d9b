"""What SotW and Delta ADS streams share: the first request (node, authentication, node-id pinning), the
request reader, the wake-up loop, nonces, NACK back-off timers, callbacks and logging.

One stream is two asyncio tasks: the gRPC handler task runs `Stream.run()` (it sends), and a reader task
applies each request to the stream's per-type state. Both only set `_wake`; the sender then looks at the
current state and the node's latest snapshot and sends what is due. Nothing queues, so a burst of snapshot
changes or requests costs one look, and the stream never polls: it sleeps until a request, a snapshot
change (a `SnapshotCache` watch) or a back-off deadline wakes it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import itertools
import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import grpc
from envoy.config.core.v3.base_pb2 import Node

from ..cache import SnapshotCache
from ..callbacks import Authenticator, StreamCallbacks, XdsAuthError
from ..resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT_NAMES, TYPE_ORDER, XdsResource
from ..snapshot import Snapshot
from .encoded import EncodedResponses

log = logging.getLogger("kuma.xds")

_stream_ids = itertools.count(1)


class _Request(Protocol):
    """The fields DiscoveryRequest and DeltaDiscoveryRequest share."""

    node: Node
    type_url: str
    response_nonce: str

    def HasField(self, field_name: str) -> bool: ...


RequestT = TypeVar("RequestT", bound=_Request)


@dataclass(frozen=True)
class Settings:
    cache: SnapshotCache
    authenticator: Authenticator
    callbacks: StreamCallbacks
    nack_backoff: float
    break_delay: float = 0.0  # see servicer.DEFAULT_BREAK_DELAY
    warm_timeout: float = 0.0  # see servicer.DEFAULT_WARM_TIMEOUT
    responses: EncodedResponses = field(default_factory=EncodedResponses)  # shared by every stream


class StreamError(Exception):
    """End this stream (only this one) with `code` and `message`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def short_name(type_url: str) -> str:
    return SHORT_NAMES.get(type_url) or type_url.rsplit("/", 1)[-1]


def is_known(type_url: str, snapshot: Snapshot | None) -> bool:
    return type_url in SHORT_NAMES or (snapshot is not None and type_url in snapshot.resources)


def in_type_order(type_urls: Iterable[str]) -> list[str]:
    """Clusters before endpoints before listeners before routes before secrets (make before break); other
    types after them."""
    present = set(type_urls)
    ordered = [t for t in TYPE_ORDER if t in present]
    ordered.extend(sorted(present.difference(TYPE_ORDER)))
    return ordered


class Stream(abc.ABC, Generic[RequestT]):
    protocol: ClassVar[str]

    def __init__(self, settings: Settings, requests: AsyncIterable[RequestT], context: grpc.aio.ServicerContext,
                 streams: set[Stream[Any]]) -> None:
        self.settings = settings
        self.cache = settings.cache
        self.callbacks = settings.callbacks
        self.context = context
        self._requests = requests
        self._streams = streams
        self.stream_id = next(_stream_ids)
        self.node_id = ""  # the cache key the authenticator returned
        self.node = Node()
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._failure: StreamError | None = None
        self._ended = False
        self._nonce = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        # (listener and route versions, loop time they were first seen settled): see routing_settled()
        self._routing_settled: tuple[tuple[str, ...], float] | None = None
        self._cold_since: dict[str, float] = {}  # type -> loop time its update was first held for cold clusters
        # Clusters the client has warmed (see clusters_warm): an update of one re-warms it in Envoy while the
        # previous version keeps serving, so only a cluster that is new to the client holds a listener back.
        self.warm_clusters: set[str] = set()
        self._logged_unknown: set[str] = set()

    # -- what a protocol implements -----------------------------------------------------------------------

    @abc.abstractmethod
    def on_request(self, request: RequestT) -> None:
        """Apply one request (with a type_url) to the per-type state; raise StreamError to end the stream."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Send every response that is due now (and arm back-off timers for those that are due later)."""

    @abc.abstractmethod
    def has_warmed(self, type_url: str, name: str) -> bool | None:
        """Whether the client has processed the latest response that carried resource `name` of `type_url`
        (it ACKed it, or had it when it connected); None when that response was rejected (NACK), or the stream
        does not carry the type: waiting would not make it usable."""

    @abc.abstractmethod
    def type_settled(self, type_url: str, version: str) -> bool:
        """True when the client runs `version` of `type_url` (ACKed, nothing newer outstanding or due), or the
        stream does not carry that type."""

    def routing_settled(self, snapshot: Snapshot) -> bool:
        """Make before break: a cluster (and its endpoints) may be removed only once the client has ACKed the
        snapshot's listeners and routes, the ones that stop using it; until then Envoy's old listeners still
        route to it, and removing it first would fail those requests with "no cluster". Then `break_delay` more
        seconds: connections Envoy accepted on the old filter chain are served with the old routes."""
        types = [t for t in (LISTENER, ROUTE) if t in snapshot.resources]
        if not all(self.type_settled(t, snapshot.version(t)) for t in types):
            self._routing_settled = None
            return False
        versions, now = tuple(snapshot.version(t) for t in types), self.now()
        if self._routing_settled is None or self._routing_settled[0] != versions:
            self._routing_settled = (versions, now)  # the first flush after the ACK: about when it arrived
        ready = self._routing_settled[1] + self.settings.break_delay
        if now < ready:
            self.defer_until(ready)
            return False
        return True

    def clusters_warm(self, snapshot: Snapshot, type_url: str, sending: Iterable[XdsResource]) -> bool:
        """Make before use (Envoy's xDS docs, "eventual consistency considerations": LDS and RDS after the CDS
        and EDS they use). A cluster Envoy has just been given is warming until its endpoints arrive, and a
        listener that routes to it meanwhile fails requests with "no cluster" (503, NC): the EDS request for a
        new cluster comes only after Envoy processed the CDS response, so a listener sent in the same flush
        would arrive first. A listener or route update that references a cluster the client has not warmed
        yet (its CDS response, and its ClusterLoadAssignment when the snapshot has one, not yet ACKed) waits
        for those ACKs; at most `warm_timeout` seconds (a client that never asks for those endpoints)."""
        if type_url not in (LISTENER, ROUTE) or self.settings.warm_timeout <= 0:
            return True
        clusters, endpoints = snapshot.of_type(CLUSTER), snapshot.of_type(ENDPOINT)
        cold = False
        for name in {ref.name for r in sending for ref in r.refs if ref.type_url == CLUSTER}:
            cluster = clusters.get(name)
            if cluster is None or name in self.warm_clusters:
                continue  # not in the snapshot (waiting would not bring it), or serving at the client already
            warmed = self.has_warmed(CLUSTER, name)
            if warmed is None:
                continue  # rejected, or not from this stream's CDS: waiting would not warm it
            if not warmed or any(
                    ref.type_url == ENDPOINT and ref.name in endpoints and self.has_warmed(ENDPOINT, ref.name) is False
                    for ref in cluster.refs):
                cold = True
                break
            self.warm_clusters.add(name)
        if not cold:
            self._cold_since.pop(type_url, None)
            return True
        now = self.now()
        until = self._cold_since.setdefault(type_url, now) + self.settings.warm_timeout
        if now >= until:
            log.info("xds update sent before its clusters warmed at the client (no ACK of their endpoints within "
                     "%.1f s)", self.settings.warm_timeout, extra=self._extra(type_url))
            self._cold_since.pop(type_url, None)
            return True
        self.defer_until(until)
        return False

    # -- the stream's life -------------------------------------------------------------------------------

    async def run(self) -> None:
        requests = aiter(self._requests)
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        await self._open(first)
        watch = None
        reader: asyncio.Task[None] | None = None
        try:
            self._streams.add(self)
            self._safe(self.callbacks.on_stream_open, self.stream_id, self.node_id, self.node)
            watch = self.cache.watch(self.node_id, self._wake.set)
            try:
                self._handle(first, first=True)
            except StreamError as e:
                self._failure = e
            else:
                reader = asyncio.create_task(self._read(requests), name=f"xds-{self.protocol}-{self.stream_id}-reader")
            while True:
                self._wake.clear()
                if self._failure is not None:
                    await self._abort(self._failure)
                if self._ended:
                    return
                await self.flush()
                if not self._wake.is_set():
                    await self._wake.wait()
        finally:
            if watch is not None:
                watch.cancel()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            self._streams.discard(self)
            log.debug("xds stream closed", extra=self._extra())
            self._safe(self.callbacks.on_stream_closed, self.stream_id, self.node_id)

    async def _open(self, first: RequestT) -> None:
        """Check the first request's node and authenticate; aborts the stream (raises) when refused."""
        if not first.HasField("node") or not first.node.id:
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                     "the first request on an xDS stream must carry node with a non-empty node.id")
        self.node = first.node
        metadata: dict[str, str] = {}
        for key, value in self.context.invocation_metadata() or ():
            if isinstance(value, str):
                metadata.setdefault(key.lower(), value)
        peer = self.context.peer()
        try:
            result = self.settings.authenticator.authenticate(first.node, metadata, peer)
            node_id = await result if inspect.isawaitable(result) else result
        except XdsAuthError as e:
            log.info("xds stream refused: %s", e.message,
                     extra={"node": first.node.id, "peer": peer, "code": e.code.name, "protocol": self.protocol})
            await self.context.abort(e.code, e.message)
        except Exception:
            log.exception("xds authentication failed", extra={"node": first.node.id, "peer": peer})
            await self.context.abort(grpc.StatusCode.INTERNAL, "authentication failed")
        if not isinstance(node_id, str) or not node_id:
            log.error("the authenticator returned no node id", extra={"node": first.node.id, "peer": peer})
            await self.context.abort(grpc.StatusCode.INTERNAL, "authentication failed")
        self.node_id = node_id
        log.debug("xds stream opened", extra={**self._extra(), "peer": peer})

    async def _read(self, requests: AsyncIterator[RequestT]) -> None:
        try:
            async for request in requests:
                try:
                    self._handle(request)
                except StreamError as e:
                    self._failure = e
                    return
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the transport failed under us: the stream is over
            log.debug("xds stream read failed: %r", e, extra=self._extra())
        finally:
            self._ended = True
            self._wake.set()

    def _handle(self, request: RequestT, *, first: bool = False) -> None:
        if request.HasField("node") and request.node.id and request.node.id != self.node.id:
            raise StreamError(grpc.StatusCode.PERMISSION_DENIED,
                              f"node id changed on the stream from {self.node.id!r} to {request.node.id!r}; "
                              "open a new stream for another node")
        if not request.type_url:
            if first:  # a node-only first message: nothing requested yet
                return
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "request without type_url")
        self.on_request(request)

    async def _abort(self, error: StreamError) -> None:
        log.warning("xds stream aborted: %s", error.message, extra={**self._extra(), "code": error.code.name})
        await self.context.abort(error.code, error.message)

    # -- helpers for protocols ---------------------------------------------------------------------------

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def now(self) -> float:
        return self._loop.time()

    def defer_until(self, when: float) -> None:
        """Wake the stream at loop time `when` (for a response held back by NACK back-off)."""
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._wake.set()

    async def send(self, response: bytes, type_url: str, version: str, nonce: str, resource_count: int) -> None:
        """Write one encoded response (`encoded.with_nonce`); state for its nonce must already be recorded:
        its ACK may race the write."""
        size = len(response)
        self._safe(self.callbacks.on_response_sent, self.node_id, type_url, version, nonce, resource_count, size)
        if log.isEnabledFor(logging.DEBUG):  # a push writes to every stream: no log record built for nothing
            log.debug("xds response sent", extra={**self._extra(type_url, version, nonce),
                                                  "resources": resource_count, "bytes": size})
        await self.context.write(response)

    def acked(self, type_url: str, version: str, nonce: str) -> None:
        log.debug("xds ACK", extra=self._extra(type_url, version, nonce))
        self._safe(self.callbacks.on_ack, self.node_id, type_url, version)

    def nacked(self, type_url: str, version: str, nonce: str, detail: str) -> float:
        """Record a NACK; returns the loop time before which nothing new of this type may be sent."""
        log.warning("xds NACK: %s", detail, extra=self._extra(type_url, version, nonce))
        self._safe(self.callbacks.on_nack, self.node_id, type_url, version, detail)
        return self.now() + self.settings.nack_backoff

    def log_unknown_type(self, type_url: str) -> None:
        if type_url not in self._logged_unknown and len(self._logged_unknown) < 64:
            self._logged_unknown.add(type_url)
            log.info("xds request for a type this control plane does not serve", extra=self._extra(type_url))

    def _extra(self, type_url: str = "", version: str = "", nonce: str = "") -> dict[str, Any]:
        extra: dict[str, Any] = {"node": self.node_id or self.node.id, "stream": self.stream_id,
                                 "protocol": self.protocol}
        if type_url:
            extra["type"] = short_name(type_url)
            extra["version"] = version
            extra["nonce"] = nonce
        return extra

    def _safe(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("xds callback %s failed", getattr(fn, "__name__", fn), extra=self._extra())
