"""Global's KDS gRPC server (TLS, default port 5685): `kuma.mesh.v1alpha1.KDSSyncService` for zones.

Each stream is authenticated before anything is read or sent: the zone token from the `authorization`
metadata (`Bearer <token>` or the bare token) must be a valid zone token with scope `cp` for the zone named in
`client-id`, and that zone must not be disabled (`Zone` with `enabled: false`). Refusals are gRPC
UNAUTHENTICATED (no or bad token) or PERMISSION_DENIED (a token for another zone, a disabled zone) with the
reason and the fix. A zone's first successful connection creates its `Zone`. A second stream of the same kind
for a zone replaces the first (the older one ends with ABORTED, and both ends log it); disabling a zone ends
its streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.resources.base import Meta, Resource
from controlplane.resources.zone import ZONE, ZoneSpec
from controlplane.store.base import AlreadyExists, NotFound, ResourceStore
from controlplane.supervise import Supervisor, stop_grpc_server
from controlplane.tokens.errors import TokenError
from controlplane.tokens.validator import verify_zone_identity

from . import metrics
from .codec import DEFAULT_MAX_MESSAGE_BYTES
from .sync import FromZone, Receiver, Sender, TypeStats, run_receiver, run_sender
from .types import global_sends, zone_to_global_types
from .zone_insights import ZoneInsights

log = logging.getLogger("kuma.kds")

SERVICE = "kuma.mesh.v1alpha1.KDSSyncService"
GLOBAL_TO_ZONE = "GlobalToZoneSync"
ZONE_TO_GLOBAL = "ZoneToGlobalSync"
DEFAULT_PORT = 5685


def grpc_options(max_bytes: int) -> list[tuple[str, int]]:
    """Both ends: messages up to the cap plus headroom; keepalive pings every 15 s, which a grpcio server
    refuses by default (its minimum is 5 minutes) and would answer with GOAWAY."""
    limit = max_bytes + (1 << 20)
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 15_000), ("grpc.keepalive_timeout_ms", 15_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0), ("grpc.keepalive_permit_without_calls", 1)]


class ZoneTokens(Protocol):
    """What the server needs from the token service (controlplane.tokens.TokenService has it)."""

    async def validate_zone_token(self, token: str) -> Any: ...


@dataclass(slots=True)
class _Session:
    zone: str
    kind: str
    peer: str
    stats: Callable[[], dict[str, TypeStats]]
    connected_at: float = field(default_factory=time.time)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""


class KdsServer:
    name = "kds-server"

    def __init__(self, store: ResourceStore, tokens: ZoneTokens, *, interface: str, port: int,
                 key_cert_pairs: Sequence[tuple[bytes, bytes]], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 instance: str = "", insight_flush: float = 10.0, supervisor: Supervisor | None = None) -> None:
        self.store, self.tokens, self.interface, self.port = store, tokens, interface, port
        self.key_cert_pairs, self.max_bytes, self.instance = list(key_cert_pairs), max_bytes, instance
        self._server: grpc.aio.Server | None = None
        self._sessions: dict[tuple[str, str], _Session] = {}
        # A zone's receiver outlives its streams, so a reconnecting zone is asked only for what changed.
        self._receivers: dict[str, Receiver] = {}
        self._watcher: asyncio.Task[None] | None = None
        self.bound_port = 0
        self.insights = ZoneInsights(store, instance, self.zone_status, flush=insight_flush, supervisor=supervisor)

    def handler(self) -> grpc.GenericRpcHandler:
        req, resp = discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
        return grpc.method_handlers_generic_handler(SERVICE, {
            GLOBAL_TO_ZONE: grpc.stream_stream_rpc_method_handler(
                self._global_to_zone, request_deserializer=req.FromString, response_serializer=resp.SerializeToString),
            ZONE_TO_GLOBAL: grpc.stream_stream_rpc_method_handler(
                self._zone_to_global, request_deserializer=resp.FromString, response_serializer=req.SerializeToString),
        })

    async def start(self) -> None:
        server = grpc.aio.server(options=grpc_options(self.max_bytes))
        server.add_generic_rpc_handlers([self.handler()])
        address = f"{self.interface}:{self.port}"
        try:
            bound = server.add_secure_port(address, grpc.ssl_server_credentials(self.key_cert_pairs))
        except RuntimeError as e:
            raise RuntimeError(f"cannot listen on {address} for KDS: {e}; is another kuma-cp running? change "
                               "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT") from e
        if bound == 0:
            raise RuntimeError(f"cannot listen on {address} for KDS (port in use?): change "
                               "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT")
        await server.start()
        self._server, self.bound_port = server, bound
        self._watcher = asyncio.create_task(self._watch_zones(), name="kds-zone-watch")
        await self.insights.start()
        log.info("KDS server listening", extra={"address": f"{self.interface}:{bound}", "tls": True})

    async def stop(self) -> None:
        await self.insights.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._server is not None:
            await stop_grpc_server(self._server, 1.0, "kds-server")
            self._server = None

    def zone_status(self) -> dict[str, dict[str, Any]]:
        """Each connected zone's open streams: peer, since when, and per type what was sent, ACKed, NACKed
        (global -> zone) or received and rejected (zone -> global). What ZoneInsight and metrics will show."""
        out: dict[str, dict[str, Any]] = {}
        for (zone, kind), session in self._sessions.items():
            out.setdefault(zone, {})[kind] = {
                "peer": session.peer, "connectedAt": session.connected_at,
                "types": {name: dataclasses.asdict(st) for name, st in session.stats().items()},
            }
        return out

    # --- streams ----------------------------------------------------------------------------------------------

    async def _global_to_zone(self, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
                              context: grpc.aio.ServicerContext) -> None:
        zone = await self._authenticate(context, GLOBAL_TO_ZONE)
        sender = Sender(self.store, global_sends(zone), peer=f"zone {zone!r}", max_bytes=self.max_bytes)
        await self._serve(context, zone, GLOBAL_TO_ZONE, run_sender(sender, requests, context.write), sender.stats)

    async def _zone_to_global(self, responses: AsyncIterator[discovery_pb2.DeltaDiscoveryResponse],
                              context: grpc.aio.ServicerContext) -> None:
        zone = await self._authenticate(context, ZONE_TO_GLOBAL)
        receiver = self._receivers.get(zone)
        if receiver is None:
            receiver = Receiver(self.store, zone_to_global_types(), FromZone(zone), node_id=self.instance or "global")
            self._receivers[zone] = receiver
        await self._serve(context, zone, ZONE_TO_GLOBAL, run_receiver(receiver, responses, context.write),
                          receiver.stats)

    async def _serve(self, context: grpc.aio.ServicerContext, zone: str, kind: str, run: Any,
                     stats: Callable[[], dict[str, TypeStats]]) -> None:
        session = _Session(zone, kind, context.peer(), stats)
        previous = self._sessions.get((zone, kind))
        if previous is not None:
            previous.reason = (f"replaced by a newer {kind} stream of zone {zone!r} from {session.peer}: "
                               "is a second zone control plane running with the same zone name?")
            previous.kick.set()
            log.warning("KDS zone connected again; closing its older stream",
                        extra={"zone": zone, "stream": kind, "old_peer": previous.peer, "new_peer": session.peer})
            await previous.ended.wait()
        self._sessions[(zone, kind)] = session
        if sum(1 for z, _ in self._sessions if z == zone) == 1:  # the zone's first stream here: a new connection
            md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            self.insights.opened(zone, version=md.get("version", ""), environment=md.get("environment", "universal"))
        await context.send_initial_metadata((("kds-global-instance", self.instance or "global"),))
        log.info("KDS zone stream open", extra={"zone": zone, "stream": kind, "peer": session.peer})
        metrics.STREAMS_OPEN.labels("global", kind).inc()
        work = asyncio.ensure_future(run)
        kicked = asyncio.ensure_future(session.kick.wait())
        # A zone that goes away while this side only waits (no read or write pending on the call) is noticed
        # here: the call's end wakes the session.
        context.add_done_callback(lambda _ctx: kicked.cancel())
        try:
            await asyncio.wait([work, kicked], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The session is over for whoever waits to replace it before its tasks have wound down: a read
            # pending on a call the zone already left can take a while to notice.
            if self._sessions.get((zone, kind)) is session:
                del self._sessions[(zone, kind)]
                if not any(z == zone for z, _ in self._sessions):
                    self.insights.closed(zone)
            session.ended.set()
            metrics.STREAMS_OPEN.labels("global", kind).dec()
            for t in (work, kicked):
                t.cancel()
            _, stuck = await asyncio.wait([work, kicked], timeout=5.0)
            if stuck:
                log.warning("KDS zone stream tasks did not stop within 5 s of the stream's end",
                            extra={"zone": zone, "stream": kind, "peer": session.peer})
            log.info("KDS zone stream closed", extra={"zone": zone, "stream": kind, "peer": session.peer,
                                                      "reason": session.reason or "closed"})
        if session.kick.is_set() and session.reason:
            await context.abort(grpc.StatusCode.ABORTED if "replaced" in session.reason
                                else grpc.StatusCode.PERMISSION_DENIED, session.reason)
        if work.done() and not work.cancelled() and work.exception() is not None:
            exc = work.exception()
            log.warning("KDS zone stream failed", extra={"zone": zone, "stream": kind, "error": str(exc)})

    async def _authenticate(self, context: grpc.aio.ServicerContext, kind: str) -> str:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        zone = md.get("client-id", "")
        token = md.get("authorization", "").removeprefix("Bearer ").strip()
        peer = context.peer()
        if not zone:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, kind, "", peer,
                               "no zone name: the zone must send its name as 'client-id' metadata")
        if not token:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, kind, zone, peer,
                               "no zone token: generate one on global with 'kumactl generate zone-token --zone "
                               f"{zone} --scope cp' and point KUMA_MULTIZONE_ZONE_KDS_AUTH_CP_TOKEN_PATH at it")
        try:
            claims = await self.tokens.validate_zone_token(token)
        except TokenError as e:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, kind, zone, peer, f"zone token refused: {e}")
        try:
            verify_zone_identity(claims, zone, "cp")
        except TokenError as e:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, kind, zone, peer,
                               f"zone token refused: {e}")
        try:
            record = await self.store.get(ZONE, zone)
        except NotFound:
            with contextlib.suppress(AlreadyExists):
                await self.store.create(Resource(ZONE, Meta(name=zone), ZoneSpec()))
                log.info("KDS registered a new zone", extra={"zone": zone, "peer": peer})
        else:
            if not getattr(record.spec, "enabled", True):
                await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, kind, zone, peer,
                                   f"zone {zone!r} is disabled on global: set 'enabled: true' on Zone {zone!r} "
                                   "to let it connect")
        return zone

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, kind: str, zone: str,
                      peer: str, reason: str) -> None:
        log.warning("KDS refused a zone stream", extra={"zone": zone, "stream": kind, "peer": peer,
                                                        "code": code.name, "reason": reason})
        await context.abort(code, reason)

    async def _watch_zones(self) -> None:
        """Disabling a zone (or deleting its Zone) ends its open streams; deleting it also deletes its ZoneInsight."""
        async with self.store.watch() as events:
            while True:
                e = await events.get()
                if e.type != ZONE.name or e.op not in ("update", "delete"):
                    continue
                enabled = False
                if e.op == "update":
                    try:
                        enabled = bool(getattr((await self.store.get(ZONE, e.name)).spec, "enabled", True))
                    except NotFound:
                        enabled = False
                if enabled:
                    continue
                if e.op == "delete":
                    self.insights.forget(e.name)
                for (zone, _), session in list(self._sessions.items()):
                    if zone == e.name:
                        session.reason = (f"zone {zone!r} was disabled on global" if e.op == "update"
                                          else f"zone {zone!r} was deleted on global")
                        session.kick.set()
                if e.op == "delete":
                    try:
                        await self.insights.remove(e.name)
                    except Exception as err:  # the store is down: the insight stays until it is deleted by hand
                        log.warning("KDS could not delete the insight of a deleted zone",
                                    extra={"zone": e.name, "error": str(err)})
