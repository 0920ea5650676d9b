"""The KDS Delta sync engine, without a transport: one side sends a store's resources, the other applies them.

Sender (global on GlobalToZoneSync, the zone on ZoneToGlobalSync): per type it remembers what the peer has
(Delta key -> content version). A subscription (a request with no response nonce) sets that from the
request's `initial_resource_versions`, so a peer that reconnects is sent only what changed while it was away,
and removals for what it holds and we no longer have. Every later store change sends the difference. One
type's changes may span several responses (the byte cap); all but the last response of a subscription's
first answer carry `system_version_info = INITIAL_MORE`, so the receiver knows when the first answer is whole.
ACK/NACK arrive by nonce. The resources of a NACKed response are re-sent after a back-off (5 s doubling to 5
min, reset by an ACK), or sooner when they change: what the peer could not take may become acceptable without
changing here (a zone's Dataplane in a mesh that is then created on global), and a fixed retry would loop.

Receiver: applies each response to its store in one pass (removals, then creates/updates), skips a resource
that fails decoding or validation or clashes with a local resource, applies the rest, and answers one ACK or a
NACK whose `error_detail` names each skipped resource and why. The first answer on a stream is a full
replacement: what the receiver holds from that peer and neither declared nor received is deleted (Kuma's
rule; a Kuma sender's first response is the whole type).

Which stored resources belong to the peer, and what they are called here, is an `Origin`'s business
(`FromGlobal` on a zone, `FromZone` on global).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane.resources.base import Meta, Resource, ResourceType
from controlplane.resources.codec import spec_from_store
from controlplane.store.base import (
    ChangeEvent,
    Conflict,
    ListQuery,
    MeshNotFound,
    NotFound,
    RawResource,
    ResourceStore,
    StoreError,
)
from controlplane.supervise import wait_set
from kuma_shared.logs import ErrorLog

from . import metrics
from .codec import DEFAULT_MAX_MESSAGE_BYTES, KdsDecodeError, WireResource, batch, decode, encode, encode_raw
from .naming import (
    DISPLAY_NAME_LABEL,
    NAMESPACE_LABEL,
    ORIGIN_GLOBAL,
    ORIGIN_LABEL,
    ORIGIN_ZONE,
    ZONE_LABEL,
    wire_key,
    zone_labels,
    zone_qualified_name,
)

log = logging.getLogger("kuma.kds")
_too_big_log = ErrorLog(log, interval=300.0)  # re-tried on every change of its type: say so now and then

INITIAL_MORE = "kds-initial:more"  # system_version_info of a first answer's responses that are not its last
GRPC_INVALID_ARGUMENT = 3
MAX_NACK_REASONS = 20
FRESH_CHUNK = 1000  # new resources from a peer created per transaction
NACK_RETRY_MIN, NACK_RETRY_MAX = 5.0, 300.0  # re-sending what a peer rejected
STUCK_AFTER = 5.0  # seconds a stream's tasks get to stop once it ends


# ---------------------------------------------------------------------------------------------------- origins

class Origin(Protocol):
    """Where a receiver's resources come from: their local names and labels, and which stored ones are theirs."""

    @property
    def peer(self) -> str:
        """For messages: "global", "zone 'zone-1'"."""
        ...

    def to_local(self, incoming: Resource) -> Resource: ...

    def owns(self, stored: Meta) -> bool:
        """Whether a stored resource (its metadata) came from this peer."""
        ...

    @property
    def missing_mesh_fix(self) -> str:
        """What to do about a resource whose mesh this side lacks."""
        ...

    def adopts(self, stored: Resource) -> bool:
        """Whether a local resource with the name of an incoming one is replaced by it (else: NACKed clash)."""
        ...

    def to_peer(self, stored: Meta) -> Meta:
        """A stored copy's metadata as the peer sent it (its name and labels undone), so its content version can
        be declared after a restart of this process; a mismatch only means the peer sends it again."""
        ...

    def peer_key(self, rtype: ResourceType, stored: Meta) -> str:
        """The Delta key the peer knows a stored resource of its own by."""
        ...


@dataclass(frozen=True, slots=True)
class FromGlobal:
    """On a zone: global's resources keep their names and get `kuma.io/origin=global`; other zones' resources
    that global forwards (ZoneIngresses) keep their zone labels."""

    zone: str
    peer: str = "global"
    missing_mesh_fix: str = "it is applied when the mesh arrives from global"

    def to_local(self, incoming: Resource) -> Resource:
        meta = incoming.meta
        labels = dict(meta.labels)
        if not (labels.get(ORIGIN_LABEL) == ORIGIN_ZONE and labels.get(ZONE_LABEL) not in (None, self.zone)):
            labels[ORIGIN_LABEL] = ORIGIN_GLOBAL
        # Built, not `with_meta` (dataclasses.replace): this runs for every resource of a first sync.
        return Resource(incoming.type, Meta(meta.name, meta.mesh, meta.version, labels, meta.creation_time,
                                            meta.modification_time), incoming.spec)

    def owns(self, stored: Meta) -> bool:
        labels = stored.labels
        origin = labels.get(ORIGIN_LABEL)
        return origin == ORIGIN_GLOBAL or (origin == ORIGIN_ZONE and labels.get(ZONE_LABEL) not in (None, self.zone))

    def adopts(self, stored: Resource) -> bool:
        # On a zone under global, meshes, policies and mesh secrets are global's. A local one of the same name
        # is left from the zone's standalone days (its own `default` mesh, default policies, mesh CA): global's
        # replaces it, so one mesh has one definition and one trust root in every zone. Other zones'
        # ZoneIngresses are never local.
        return stored.meta.labels.get(ORIGIN_LABEL) is None and stored.type.name != "ZoneIngress"

    def to_peer(self, stored: Meta) -> Meta:
        labels = dict(stored.labels)
        if labels.get(ORIGIN_LABEL) == ORIGIN_GLOBAL:  # added here by to_local; global's own carry none
            del labels[ORIGIN_LABEL]
        return dataclasses.replace(stored, labels=labels)

    def peer_key(self, rtype: ResourceType, stored: Meta) -> str:
        return wire_key(rtype, stored.name, stored.mesh)


@dataclass(frozen=True, slots=True)
class FromZone:
    """On global: a zone's resources are stored under zone-qualified names with the zone's labels."""

    zone: str
    peer: str = ""
    missing_mesh_fix: str = "create the mesh on global (meshes are global's); the zone sends it again"

    def __post_init__(self) -> None:
        object.__setattr__(self, "peer", f"zone {self.zone!r}")

    def to_local(self, incoming: Resource) -> Resource:
        meta = incoming.meta
        name = zone_qualified_name(meta.name, meta.mesh, self.zone, meta.labels.get(NAMESPACE_LABEL, ""))
        labels = zone_labels(meta.labels, meta.name, self.zone)
        return Resource(incoming.type, Meta(name, meta.mesh, meta.version, labels, meta.creation_time,
                                            meta.modification_time), incoming.spec)

    def owns(self, stored: Meta) -> bool:
        labels = stored.labels
        return labels.get(ORIGIN_LABEL) == ORIGIN_ZONE and labels.get(ZONE_LABEL) == self.zone

    def adopts(self, stored: Resource) -> bool:
        return False  # a zone's resources have zone-qualified names: a clash is a resource of global's own

    def to_peer(self, stored: Meta) -> Meta:
        labels = {k: v for k, v in stored.labels.items() if k not in (ORIGIN_LABEL, ZONE_LABEL, DISPLAY_NAME_LABEL)}
        return dataclasses.replace(stored, name=stored.labels.get(DISPLAY_NAME_LABEL, stored.name), labels=labels)

    def peer_key(self, rtype: ResourceType, stored: Meta) -> str:
        return wire_key(rtype, stored.labels.get(DISPLAY_NAME_LABEL, stored.name), stored.mesh)


# ----------------------------------------------------------------------------------------------------- sender

@dataclass(frozen=True, slots=True)
class SendType:
    rtype: ResourceType
    # Which local resources go to the peer (on a zone: not what came from global; on global: not the peer's own),
    # by their metadata: a listing is not parsed into spec models to choose.
    select: Callable[[Meta], bool] = lambda _m: True
    # When the choice depends on other resources (the Secrets a Mesh uses): makes `select` anew for each diff.
    prepare: Callable[[ResourceStore], Awaitable[Callable[[Meta], bool]]] | None = None
    # What the peer gets of a selected resource, when not all of it (a DataplaneInsight's summary); such a
    # type's resources are read into spec models to send, the others go from the stored JSON (encode_raw).
    transform: Callable[[Resource], Resource] | None = None

    def encode(self, stored: Resource) -> WireResource:
        return encode(self.transform(stored) if self.transform else stored)

    def encode_raw(self, stored: RawResource) -> WireResource:
        if self.transform is None:
            return encode_raw(stored)
        model = spec_from_store(stored.type, json.loads(stored.spec_json))
        return encode(self.transform(Resource(stored.type, stored.meta, model)))


@dataclass(slots=True)
class TypeStats:
    """Per type and stream: what ZoneInsight and the metrics report."""

    responses_sent: int = 0
    resources_sent: int = 0
    acked: int = 0
    nacked: int = 0
    last_nack: str = ""
    responses_received: int = 0
    rejected: int = 0


@dataclass(slots=True)
class _SendState:
    subscribed: bool = False
    has: dict[str, str] = field(default_factory=dict)  # what the peer holds (as far as we sent): key -> version
    pending: dict[str, list[str]] = field(default_factory=dict)  # nonce -> keys sent in it, until ACK/NACK
    changed_at: dict[str, float] = field(default_factory=dict)  # nonce -> when the store change it carries came
    rejected: set[str] = field(default_factory=set)  # keys of NACKed responses, re-sent at `retry_at`
    retry_at: float | None = None  # time.monotonic()
    backoff: float = 0.0
    cache: dict[str, tuple[int, WireResource]] = field(default_factory=dict)  # key -> (store version, encoded)
    stats: TypeStats = field(default_factory=TypeStats)


class Sender:
    def __init__(self, store: ResourceStore, types: Sequence[SendType], *, peer: str,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.store, self.peer, self.max_bytes = store, peer, max_bytes
        self.types = {t.rtype.name: t for t in types}
        self._state = {name: _SendState() for name in self.types}
        self._nonce = 0
        self.side = metrics.side_of(peer)
        self.retry_scheduled = asyncio.Event()  # set when a NACK schedules a re-send (run_sender waits on it)

    def stats(self) -> dict[str, TypeStats]:
        return {name: s.stats for name, s in self._state.items()}

    async def handle(self, req: discovery_pb2.DeltaDiscoveryRequest) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """A subscription gets the first answer; an ACK or NACK is recorded and gets nothing."""
        state = self._state.get(req.type_url)
        if state is None:
            log.warning("KDS peer subscribed to a type this side does not send; ignored",
                        extra={"peer": self.peer, "type": req.type_url, "sends": sorted(self.types)})
            return []
        if req.response_nonce:
            keys = state.pending.pop(req.response_nonce, None)
            changed_at = state.changed_at.pop(req.response_nonce, None)
            if req.HasField("error_detail"):
                metrics.NACKS_RECEIVED.labels(self.side, req.type_url).inc()
                state.stats.nacked += 1
                state.stats.last_nack = req.error_detail.message
                state.backoff = min(max(state.backoff * 2, NACK_RETRY_MIN), NACK_RETRY_MAX)
                state.rejected.update(keys or ())
                state.retry_at = time.monotonic() + state.backoff
                self.retry_scheduled.set()
                log.warning("KDS peer rejected resources (NACK); they are re-sent after a back-off, or when they "
                            "change", extra={"peer": self.peer, "type": req.type_url, "nonce": req.response_nonce,
                                             "error": req.error_detail.message, "retry_in_s": state.backoff})
            elif keys is not None:
                state.stats.acked += 1
                state.backoff = 0.0
                if changed_at is not None:
                    metrics.SYNC_LAG.labels(self.side, req.type_url).observe(time.monotonic() - changed_at)
            return []
        state.subscribed = True
        state.has = dict(req.initial_resource_versions)
        state.pending.clear()
        return await self._diff(req.type_url, initial=True)

    def next_retry(self) -> float | None:
        """When (time.monotonic()) the earliest re-send of rejected resources is due, if any."""
        return min((s.retry_at for s in self._state.values() if s.retry_at is not None), default=None)

    async def retry_rejected(self, now: float | None = None) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Re-send the rejected resources of every type whose back-off has passed."""
        now = time.monotonic() if now is None else now
        out: list[discovery_pb2.DeltaDiscoveryResponse] = []
        for name, state in self._state.items():
            if state.retry_at is None or state.retry_at > now:
                continue
            for key in state.rejected:
                state.has.pop(key, None)  # as if the peer never got it: the next diff sends it again
            state.rejected.clear()
            state.retry_at = None
            if state.subscribed:
                out += await self._diff(name, initial=False)
        return out

    async def changed(self, type_names: Iterable[str] | None = None, *, changed_at: float | None = None
                      ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Responses for what changed in the store since the last call, for subscribed types (all if None);
        `changed_at` (time.monotonic()) is when the change was seen, for the sync-lag metric."""
        out: list[discovery_pb2.DeltaDiscoveryResponse] = []
        for name in self.types if type_names is None else [n for n in self.types if n in set(type_names)]:
            if self._state[name].subscribed:
                responses = await self._diff(name, initial=False)
                if changed_at is not None:
                    for resp in responses:
                        self._state[name].changed_at[resp.nonce] = changed_at
                out += responses
        return out

    async def changed_resources(self, events: Iterable[ChangeEvent], *, changed_at: float | None = None
                                ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Responses for the resources these store events name: one read each instead of listing their whole
        type (a change among 10,000 policies costs one row, not 10,000). A type whose choice of resources
        depends on others (`prepare`: the Secrets a Mesh uses) is diffed whole, as is everything after a resync."""
        events = list(events)
        if any(e.op == "resync" for e in events):
            return await self.changed(None, changed_at=changed_at)
        whole: set[str] = set()
        by_type: dict[str, dict[str, ChangeEvent]] = {}
        for e in events:
            spec = self.types.get(e.type)
            if spec is None or not self._state[e.type].subscribed:
                continue
            if spec.prepare is not None:
                whole.add(e.type)
            else:
                by_type.setdefault(e.type, {})[wire_key(spec.rtype, e.name, e.mesh)] = e
        out = await self.changed(whole, changed_at=changed_at) if whole else []
        for type_name, keyed in by_type.items():
            responses = await self._diff_keys(type_name, keyed)
            if changed_at is not None:
                for resp in responses:
                    self._state[type_name].changed_at[resp.nonce] = changed_at
            out += responses
        return out

    async def _diff_keys(self, type_name: str, keyed: dict[str, ChangeEvent]
                         ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        spec, state = self.types[type_name], self._state[type_name]
        upserts: list[WireResource] = []
        removals: list[str] = []
        for key, e in keyed.items():
            try:
                r = await self.store.get(spec.rtype, e.name, e.mesh)
            except NotFound:
                r = None
            if r is None or not spec.select(r.meta):
                state.cache.pop(key, None)
                if key in state.has:
                    removals.append(key)
                continue
            cached = state.cache.get(key)
            if cached is None or cached[0] != r.meta.version:
                cached = (r.meta.version, spec.encode(r))
                state.cache[key] = cached
            if state.has.get(key) != cached[1].version:
                upserts.append(cached[1])
        return self._respond(type_name, upserts, removals, initial=False)

    async def _diff(self, type_name: str, *, initial: bool) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        spec, state = self.types[type_name], self._state[type_name]
        # Raw rows: what is cached (sent before at this store version) is not even parsed, the rest goes from the
        # stored JSON straight into the wire message (on a first sync, building and dumping a pydantic model per
        # resource was a third of the sender's work).
        listed = await self.store.list_raw(spec.rtype, ListQuery())
        select = spec.select if spec.prepare is None else await spec.prepare(self.store)
        now: dict[str, WireResource] = {}
        for r in listed.items:
            meta = r.meta
            if not select(meta):
                continue
            key = wire_key(r.type, meta.name, meta.mesh)
            cached = state.cache.get(key)
            if cached is None or cached[0] != meta.version:
                cached = (meta.version, spec.encode_raw(r))
                state.cache[key] = cached
            now[key] = cached[1]
        for gone in set(state.cache) - set(now):
            del state.cache[gone]
        upserts = [w for key, w in now.items() if state.has.get(key) != w.version]
        removals = [key for key in state.has if key not in now]
        return self._respond(type_name, upserts, removals, initial=initial)

    def _respond(self, type_name: str, upserts: list[WireResource], removals: list[str], *, initial: bool
                 ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        state = self._state[type_name]
        if not upserts and not removals and not initial:
            return []
        responses, too_big = batch(type_name, upserts, removals, max_bytes=self.max_bytes)
        for w in too_big:
            _too_big_log.report((self.peer, type_name, w.key),
                                "KDS resource is larger than the message cap and cannot be sent; raise the cap "
                                "(KUMA_MULTIZONE_*_KDS_MAX_MSG_SIZE) or shrink the resource",
                                extra={"peer": self.peer, "type": type_name, "resource": w.key,
                                       "bytes": w.message.ByteSize(), "cap": self.max_bytes})
        for key in removals:
            del state.has[key]
        big = {w.key for w in too_big}
        for w in upserts:
            if w.key not in big:
                state.has[w.key] = w.version
        for i, resp in enumerate(responses):
            self._nonce += 1
            resp.nonce = str(self._nonce)
            if initial and i < len(responses) - 1:
                resp.system_version_info = INITIAL_MORE
            state.pending[resp.nonce] = [r.name for r in resp.resources]
            state.stats.responses_sent += 1
            state.stats.resources_sent += len(resp.resources)
            metrics.RESPONSES_SENT.labels(self.side, type_name).inc()
            metrics.RESOURCES_SENT.labels(self.side, type_name).inc(len(resp.resources))
        if len(state.pending) > 1000:  # a peer that never ACKs must not grow this without bound
            for nonce in list(state.pending)[:-1000]:
                del state.pending[nonce]
                state.changed_at.pop(nonce, None)
        return responses


# --------------------------------------------------------------------------------------------------- receiver

@dataclass(slots=True)
class _RecvState:
    versions: dict[str, str] = field(default_factory=dict)  # what we hold from the peer: key -> version
    declared: set[str] = field(default_factory=set)  # keys we told the peer we hold at subscription
    initial: bool = True  # the first answer on this stream is not complete yet
    restored: bool = False  # versions were read back from the store once (after a restart of this process)
    seen: set[str] = field(default_factory=set)  # keys the first answer sent or kept
    index: dict[str, tuple[str, str]] | None = None  # key -> (local name, mesh) of what we hold from the peer
    stats: TypeStats = field(default_factory=TypeStats)


class Receiver:
    def __init__(self, store: ResourceStore, types: Sequence[ResourceType], origin: Origin, *, node_id: str,
                 restore_versions: bool = True) -> None:
        self.store, self.origin, self.node_id = store, origin, node_id
        self.types = {t.name: t for t in types}
        # restore_versions=False: declare only what this process received (a first subscription declares nothing)
        self._state = {name: _RecvState(restored=not restore_versions) for name in self.types}

    def stats(self) -> dict[str, TypeStats]:
        return {name: s.stats for name, s in self._state.items()}

    async def subscriptions(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        """A new stream's first requests, one per type: subscribe to everything, declaring what we hold: what
        the peer sent us before and is still in the store (a mesh deleted with everything in it, say, is not
        declared, so the peer sends it again if it still has it)."""
        out = []
        for name, state in self._state.items():
            state.index, stored = await self._held(self.types[name], versions=not state.restored)
            if stored is not None:
                state.versions, state.restored = stored, True
            state.versions = {k: v for k, v in state.versions.items() if k in state.index}
            state.declared = set(state.versions)
            state.initial, state.seen = True, set()
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=name, resource_names_subscribe=["*"],
                                                      initial_resource_versions=state.versions)
            req.node.id = self.node_id
            out.append(req)
        return out

    async def apply(self, resp: discovery_pb2.DeltaDiscoveryResponse) -> discovery_pb2.DeltaDiscoveryRequest:
        """Apply one response; the ACK, or a NACK naming every resource that was skipped and why."""
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce)
        ack.node.id = self.node_id
        rtype, state = self.types.get(resp.type_url), self._state.get(resp.type_url)
        if rtype is None or state is None:
            ack.error_detail.CopyFrom(status_pb2.Status(
                code=GRPC_INVALID_ARGUMENT,
                message=f"type {resp.type_url!r} is not synced from {self.origin.peer} here "
                        f"(this side takes {', '.join(sorted(self.types))})"))
            return ack
        state.stats.responses_received += 1
        side = metrics.side_of(self.origin.peer)
        metrics.RESPONSES_RECEIVED.labels(side, resp.type_url).inc()
        if state.index is None:
            state.index = await self._index(rtype)
        errors: list[str] = []
        for key in resp.removed_resources:
            await self._remove(rtype, state, key, errors)
        # What is not held from the peer yet is created a chunk at a time, in one transaction per chunk: while the
        # store writes one chunk (on its own thread, or over the network), the next is decoded and validated
        # here, and the event loop gets a turn between chunks instead of none for the whole response.
        writing: asyncio.Future[None] | None = None
        try:
            for start in range(0, len(resp.resources), FRESH_CHUNK):
                fresh: list[tuple[discovery_pb2.Resource, Resource]] = []
                for res in resp.resources[start:start + FRESH_CHUNK]:
                    if res.name in state.index:
                        await self._upsert(rtype, state, res, errors)
                        continue
                    try:
                        fresh.append((res, self.origin.to_local(decode(rtype, res))))
                    except KdsDecodeError as e:
                        errors.append(str(e))
                if writing is not None:
                    await writing
                    writing = None
                if fresh:
                    writing = asyncio.ensure_future(self._create_fresh(rtype, state, fresh, errors))
                    await asyncio.sleep(0)  # it hands its rows to the store before the next chunk is decoded
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
        if state.initial:
            state.seen.update(r.name for r in resp.resources)
            if resp.system_version_info != INITIAL_MORE:
                keep = state.seen | (state.declared - set(resp.removed_resources))
                for key in [k for k in state.index if k not in keep]:
                    await self._remove(rtype, state, key, errors)
                state.initial, state.seen = False, set()
        if errors:
            state.stats.rejected += len(errors)
            metrics.NACKS_SENT.labels(side, resp.type_url).inc()
            # The NACK itself must stay small whatever the batch held: the first reasons and a count.
            shown = errors[:MAX_NACK_REASONS]
            message = "; ".join(shown) + (f"; and {len(errors) - len(shown)} more" if len(errors) > len(shown) else "")
            state.stats.last_nack = message
            ack.error_detail.CopyFrom(status_pb2.Status(code=GRPC_INVALID_ARGUMENT, message=message))
            log.warning("KDS resources from peer rejected (NACK); the rest of the response was applied",
                        extra={"peer": self.origin.peer, "type": rtype.name, "rejected": len(errors),
                               "errors": shown})
        return ack

    async def _create_fresh(self, rtype: ResourceType, state: _RecvState,
                            fresh: list[tuple[discovery_pb2.Resource, Resource]], errors: list[str]) -> None:
        """New resources in one transaction (a first sync of thousands is one write, not thousands); if any
        cannot be created as it is (a local one of that name, a missing mesh), each goes its own way."""
        assert state.index is not None
        try:
            await self.store.create_all([local for _, local in fresh])
        except StoreError:
            for res, _ in fresh:
                await self._upsert(rtype, state, res, errors)
            return
        for res, local in fresh:
            state.index[res.name] = (local.meta.name, local.meta.mesh)
            state.versions[res.name] = res.version

    async def _held(self, rtype: ResourceType, *, versions: bool
                    ) -> tuple[dict[str, tuple[str, str]], dict[str, str] | None]:
        """What this side holds from the peer, from one listing: key -> (local name, mesh), and with `versions`
        the content versions the peer would give them (a zone process that restarts is sent what changed, not
        everything again)."""
        index: dict[str, tuple[str, str]] = {}
        out: dict[str, str] | None = {} if versions else None
        for r in (await self.store.list_raw(rtype, ListQuery())).items:
            if not self.origin.owns(r.meta):
                continue
            key = self.origin.peer_key(rtype, r.meta)
            index[key] = (r.meta.name, r.meta.mesh)
            if out is not None:
                with contextlib.suppress(Exception):  # a copy that cannot be encoded: the peer sends it again
                    out[key] = encode_raw(dataclasses.replace(r, meta=self.origin.to_peer(r.meta))).version
        return index, out

    async def _index(self, rtype: ResourceType) -> dict[str, tuple[str, str]]:
        return (await self._held(rtype, versions=False))[0]

    async def _remove(self, rtype: ResourceType, state: _RecvState, key: str, errors: list[str]) -> None:
        assert state.index is not None
        state.versions.pop(key, None)
        local = state.index.pop(key, None)
        if local is None:
            return
        name, mesh = local
        try:
            await self.store.delete(rtype, name, mesh)
            log.info("KDS removed resource", extra={"peer": self.origin.peer, "type": rtype.name,
                                                    "resource": name, "mesh": mesh})
        except NotFound:
            pass
        except StoreError as e:
            errors.append(f"{rtype.name} {key!r}: could not delete it here: {e}")

    async def _unchanged(self, rtype: ResourceType, state: _RecvState, res: discovery_pb2.Resource) -> bool:
        """Whether this side holds exactly what the peer sends again (a NACKed response's accepted resources,
        re-sent after the back-off): its content version is the one we stored, and the stored copy still is that
        content. Then there is nothing to validate or write. Anything else (changed, gone, edited here) takes the
        full path."""
        assert state.index is not None
        if state.versions.get(res.name) != res.version or res.name not in state.index:
            return False
        name, mesh = state.index[res.name]
        try:
            current = await self.store.get(rtype, name, mesh)
        except StoreError:
            return False
        if not self.origin.owns(current.meta):
            return False
        try:
            return encode(dataclasses.replace(current, meta=self.origin.to_peer(current.meta))).version == res.version
        except Exception:  # a stored copy that does not encode: store the peer's again
            return False

    async def _upsert(self, rtype: ResourceType, state: _RecvState, res: discovery_pb2.Resource,
                      errors: list[str]) -> None:
        assert state.index is not None
        if await self._unchanged(rtype, state, res):
            return
        try:
            local = self.origin.to_local(decode(rtype, res))
        except KdsDecodeError as e:
            errors.append(str(e))
            return
        name, mesh = local.meta.name, local.meta.mesh
        for _ in range(3):  # a local write between our read and our write: read again
            try:
                try:
                    current = await self.store.get(rtype, name, mesh)
                except NotFound:
                    await self.store.create(local)
                else:
                    theirs = self.origin.owns(current.meta)
                    if not theirs and not self.origin.adopts(current):
                        errors.append(f"{rtype.name} {res.name!r}: a local {rtype.name} named {name!r} exists here "
                                      f"that did not come from {self.origin.peer}; rename or delete one of them")
                        return
                    if not theirs or current.spec != local.spec or dict(current.meta.labels) != dict(local.meta.labels):
                        await self.store.update(local.with_meta(version=current.meta.version))
                        if not theirs:
                            log.warning("KDS replaced a local resource with the peer's of the same name", extra={
                                "peer": self.origin.peer, "type": rtype.name, "resource": name, "mesh": mesh})
                break
            except MeshNotFound:
                errors.append(f"{rtype.name} {res.name!r}: mesh {mesh!r} does not exist here; "
                              f"{self.origin.missing_mesh_fix}")
                return
            except Conflict:
                continue
            except StoreError as e:
                errors.append(f"{rtype.name} {res.name!r}: could not store it here: {e}")
                return
        else:
            errors.append(f"{rtype.name} {res.name!r}: changed here while being stored three times; try again")
            return
        state.index[res.name] = (name, mesh)
        state.versions[res.name] = res.version


# ------------------------------------------------------------------------------------- transport-agnostic loops

async def run_sender(sender: Sender, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
                     send: Callable[[discovery_pb2.DeltaDiscoveryResponse], Awaitable[None]], *,
                     debounce: float = 0.02) -> None:
    """Serve one stream as the sending side until the peer closes it: read requests and watch the store at the
    same time (a side that writes without reading can deadlock both: kumahq/kuma#14486)."""
    lock = asyncio.Lock()

    async def emit(responses: list[discovery_pb2.DeltaDiscoveryResponse]) -> None:
        async with lock:
            for r in responses:
                await send(r)

    async with sender.store.watch() as events:
        async def push_changes() -> None:
            while True:
                first = await events.get()
                seen = time.monotonic()
                await asyncio.sleep(debounce)  # coalesce a burst of writes into one diff per type
                batch_ = [first]
                while not events.empty():
                    batch_.append(events.get_nowait())
                await emit(await sender.changed_resources(batch_, changed_at=seen))

        async def read_requests() -> None:
            async for req in requests:
                await emit(await sender.handle(req))

        async def retry_rejected() -> None:
            while True:
                sender.retry_scheduled.clear()  # before reading the schedule: a NACK after this wakes us
                due = sender.next_retry()
                if not await wait_set(sender.retry_scheduled,
                                      None if due is None else max(0.0, due - time.monotonic())):
                    await emit(await sender.retry_rejected())

        await first_of(read_requests(), push_changes(), retry_rejected(), name=f"kds-send-{sender.peer}")


async def first_of(*coros: Awaitable[None], name: str) -> None:
    """Run until the first coroutine ends; cancel the others; raise what the first raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    for i, t in enumerate(tasks):
        t.set_name(f"{name}-{i}")
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        # Bounded: a task stuck in a call that ignores cancellation (a gRPC read on a dead connection) must not
        # keep the caller from reconnecting; it is left to finish on its own, and said so.
        _, stuck = await asyncio.wait(tasks, timeout=STUCK_AFTER)
        if stuck:
            log.warning("KDS stream tasks did not stop within %g s of the stream's end; going on without them",
                        STUCK_AFTER, extra={"tasks": sorted(t.get_name() for t in stuck)})
        for t in tasks:
            if t.done() and not t.cancelled():
                t.exception()  # retrieved, so none is reported as never retrieved
    for t in done:
        t.result()


async def run_receiver(receiver: Receiver, responses: AsyncIterator[discovery_pb2.DeltaDiscoveryResponse],
                       send: Callable[[discovery_pb2.DeltaDiscoveryRequest], Awaitable[None]]) -> None:
    """Serve one stream as the receiving side: subscribe, then apply each response and answer ACK/NACK."""
    for req in await receiver.subscriptions():
        await send(req)
    async for resp in responses:
        await send(await receiver.apply(resp))
