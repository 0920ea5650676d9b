"""DataplaneInsight upkeep: stream callbacks update an in-memory record per dataplane; a flusher writes the
changed ones to the store at most once per interval (an ACK per proxy per push must not be a store write).

An insight is written only when what it says changed (a connect or disconnect, counters, the config version, a
NACK, the certificate, the host's DNS report): an idle fleet costs no insight writes. Whether this instance is
alive, which tells readers its open subscriptions are (controlplane/xds/liveness.py), is its own
ControlPlaneInstance record, written every heartbeat (one write, whatever the fleet: controlplane/xds/instances.py),
on start, and deleted on a graceful stop after the disconnects are written.

Two paces. A change readers should see soon (a connect or disconnect, a NACK, a new certificate, a host DNS
report) is written one `interval` (1 s) after it happened: the flusher waits that long so that the writes a
push causes go out after the push instead of competing with it for the CPU (a push to 1000 proxies takes a
few hundred ms). What every push changes in every insight it reaches (the counters of responses sent and
ACKed, the ACKed config version) waits for the next status flush, every `status_interval` (10 s: Kuma's
`dataplaneStatusFlushInterval`, raised from 1 s to 10 s in Kuma for the same reason): one write per
dataplane per 10 s however often config changes, instead of one per push (1000 writes after every change).

A flush writes all changed insights in a few transactions (`store.update_all`, `create_all`, BATCH at a
time) instead of one read and one write per insight: the recorder remembers what it last stored for each
dataplane (its version and document), merges into that, and writes with that version. Another instance's
write in between makes the batch fail as a whole (Conflict): its insights are then written one by one with
a fresh read (the versioned read-merge-write of `_write`), which refreshes what is remembered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import json_format

from controlplane.ca import IdentityCert
from controlplane.resources import Meta, Resource, ResourceType
from controlplane.resources.codec import now_text, wire_time
from controlplane.resources.insights import DATAPLANE_INSIGHT, ZONE_INGRESS_INSIGHT
from controlplane.store.base import AlreadyExists, Conflict, MeshNotFound, NotFound, ResourceStore
from controlplane.supervise import Supervisor, wait_set
from kuma_shared.logs import ErrorLog

from .bootstrap import ingress_name, split_node_id
from .instances import InstanceRecord
from .liveness import merge_subscriptions
from .resources import SHORT_NAMES

log = logging.getLogger("kuma.xds")

MAX_SUBSCRIPTIONS = 5
BATCH = 500  # insights per transaction: a heartbeat of 1000 dataplanes is two commits, none holds the lock long
LIST_OVER = 50  # more insights than this to read before a flush: one list of them instead of a read each


@dataclass
class _Record:
    doc: dict[str, Any] = field(default_factory=lambda: {"subscriptions": []})
    dirty: bool = True  # changed since the last write
    urgent: bool = True  # of those changes, one to write at the next flush, not the next status flush
    acked: dict[str, str] = field(default_factory=dict)
    # What this recorder last stored (or read) for the dataplane: the base of its next write, whose version
    # the store checks. None: read it first.
    stored: Resource | None = None


_Pending = tuple[str, _Record, Resource]  # node id, its record, the insight to write


class InsightsRecorder:
    name = "dataplane-insights"

    def __init__(self, store: ResourceStore, instance_id: str, *, interval: float = 1.0, heartbeat: float = 10.0,
                 status_interval: float = 10.0, supervisor: Supervisor | None = None,
                 instance: InstanceRecord | None = None) -> None:
        self.store, self.instance_id, self.interval = store, instance_id, interval
        self.status_interval = max(status_interval, interval)  # counters and config versions (module doc)
        # This instance's record is rewritten this often, so readers can tell a live instance from a killed one.
        self.heartbeat = heartbeat
        self.instance = instance or InstanceRecord(store, instance_id)
        self._errors = ErrorLog(log)
        self.supervisor = supervisor or Supervisor()
        self._records: dict[str, _Record] = {}
        self._stream_sub: dict[int, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # --- StreamCallbacks -----------------------------------------------------------------------------------------

    def _record(self, node_id: str) -> _Record:
        rec = self._records.get(node_id)
        if rec is None:
            rec = self._records[node_id] = _Record()
        return rec

    def _current(self, node_id: str) -> dict[str, Any] | None:
        subs = self._record(node_id).doc["subscriptions"]
        return subs[-1] if subs else None

    def _touch(self, node_id: str, *, urgent: bool = True) -> None:
        """Mark the insight changed; `urgent`: written at the next flush (within `interval`), else at the next
        status flush (within `status_interval`)."""
        rec = self._record(node_id)
        rec.dirty = True
        if urgent:
            rec.urgent = True
            self._wake.set()

    def on_stream_open(self, stream_id: int, node_id: str, node: Node) -> None:
        meta = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
        sub: dict[str, Any] = {
            "id": str(stream_id), "controlPlaneInstanceId": self.instance_id, "connectTime": now_text(),
            "status": {"lastUpdateTime": now_text()},
        }
        if meta.get("kuma.io/dp-version"):
            sub["kumaDpVersion"] = str(meta["kuma.io/dp-version"])
        if node.user_agent_build_version.HasField("version"):
            v = node.user_agent_build_version.version
            sub["envoyVersion"] = f"{v.major_number}.{v.minor_number}.{v.patch}"
        subs = self._record(node_id).doc["subscriptions"]
        subs.append(sub)
        del subs[:-MAX_SUBSCRIPTIONS]
        self._stream_sub[stream_id] = sub
        self._touch(node_id)

    def on_stream_closed(self, stream_id: int, node_id: str) -> None:
        sub = self._stream_sub.pop(stream_id, None)
        if sub is not None:
            sub["disconnectTime"] = now_text()
            self._touch(node_id)

    def _count(self, node_id: str, type_url: str, counter: str) -> dict[str, Any] | None:
        sub = self._current(node_id)
        if sub is None:
            return None
        status = sub.setdefault("status", {})
        status["lastUpdateTime"] = now_text()
        for key in ("total", SHORT_NAMES.get(type_url, "other")[:3].lower()):
            bucket = status.setdefault(key, {})
            bucket[counter] = bucket.get(counter, 0) + 1
        self._touch(node_id, urgent=False)  # every push changes them in every insight it reaches
        return sub

    def on_response_sent(self, node_id: str, type_url: str, version: str, nonce: str, resource_count: int,
                         byte_count: int) -> None:
        self._count(node_id, type_url, "responsesSent")

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        sub = self._count(node_id, type_url, "responsesAcknowledged")
        rec = self._record(node_id)
        rec.acked[SHORT_NAMES.get(type_url, type_url)] = version
        if sub is not None:
            sub["configVersion"] = ",".join(f"{k}:{v}" for k, v in sorted(rec.acked.items()))

    def on_nack(self, node_id: str, type_url: str, version: str, error_detail: str) -> None:
        sub = self._count(node_id, type_url, "responsesRejected")
        if sub is not None:
            sub["lastNack"] = {"type": SHORT_NAMES.get(type_url, type_url), "version": version,
                               "errorDetail": error_detail[:2000], "time": now_text()}
            self._touch(node_id)  # an operator looking for why config does not apply should see it soon

    def on_identity(self, node_id: str, cert: IdentityCert) -> None:
        doc = self._record(node_id).doc
        mtls = doc.setdefault("mTLS", {"certificateRegenerations": 0})
        expiry = wire_time(cert.not_after)
        if mtls.get("certificateExpirationTime") != expiry:
            mtls["certificateExpirationTime"] = expiry
            mtls["lastCertificateRegeneration"] = wire_time(cert.issued_at)
            mtls["certificateRegenerations"] = mtls.get("certificateRegenerations", 0) + 1
            self._touch(node_id)

    def on_host_dns(self, node_id: str, state: str, message: str) -> None:
        """kuma-dp's report on its host's resolver (controlplane/xds/status_service.py)."""
        self._record(node_id).doc["hostDns"] = {"state": state, "message": message, "time": now_text()}
        self._touch(node_id)

    # --- flushing ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        # Before any stream opens here: a subscription of ours is never judged without our record (but see
        # liveness's fallback, for readers that have not received it yet).
        await self.beat()
        self._task = self.supervisor.spawn("insights-flush", self._loop)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Record disconnects we know of before going away (best effort: the store may be closing).
        with contextlib.suppress(Exception):
            for sub in self._stream_sub.values():
                sub["disconnectTime"] = now_text()
            for rec in self._records.values():
                rec.dirty = True
            await asyncio.wait_for(self.flush(), 2)
        # Then the heartbeat goes: what is left open of ours (a write that failed) is judged by its own last
        # update from now on (controlplane/xds/liveness.py).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.instance.delete(), 2)

    async def beat(self) -> None:
        """The heartbeat others read (controlplane/xds/liveness.py): this instance's record, one write. Its
        insights are not touched."""
        try:
            await self.instance.beat()
        except Exception as e:
            self._errors.report("heartbeat", "writing this control plane's heartbeat failed; its dataplanes look "
                                "offline to other instances and global if this goes on; will retry", error=e,
                                extra={"instance": self.instance_id})

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat
        next_status = loop.time() + self.status_interval
        while True:
            await wait_set(self._wake, max(0.0, min(next_beat, next_status) - loop.time()))
            # Let the rest of the push (and its ACKs) happen first: one write per insight after it.
            await asyncio.sleep(self.interval)
            self._wake.clear()
            if loop.time() >= next_beat:
                await self.beat()
                next_beat = loop.time() + self.heartbeat
            status = loop.time() >= next_status
            if status:
                next_status = loop.time() + self.status_interval
            try:
                await self.flush(urgent_only=not status)
            except Exception:
                log.exception("writing dataplane insights failed; will retry")

    async def flush(self, *, urgent_only: bool = False) -> None:
        """Write the changed insights (`urgent_only`: those with a change readers should see soon; their
        counters go along)."""
        dirty: list[tuple[str, _Record, tuple[ResourceType, str, str]]] = []
        for node_id, rec in list(self._records.items()):
            if not rec.dirty or (urgent_only and not rec.urgent):
                continue
            rec.dirty = rec.urgent = False
            target = _insight_of(node_id)
            if target is not None:
                dirty.append((node_id, rec, target))
        try:
            await self._write_all(dirty)
        except BaseException:
            # Not all written (the store failed, or a stop cancelled us): again at the next flush, soon, since
            # an insight is written only when it changes and this may have been a disconnect.
            for _, rec, _ in dirty:
                rec.dirty = rec.urgent = True
            self._wake.set()
            raise

    async def _write_all(self, dirty: list[tuple[str, _Record, tuple[ResourceType, str, str]]]) -> None:
        unknown = [(rec, target) for _, rec, target in dirty if rec.stored is None]
        listed = len(unknown) > LIST_OVER
        if listed:
            await self._read_all(unknown)  # after a restart or a connect storm: one list, not a read each
        creates: list[_Pending] = []
        updates: list[_Pending] = []
        for node_id, rec, (rtype, mesh, name) in dirty:
            if rec.stored is None and not listed:
                with contextlib.suppress(NotFound):
                    rec.stored = await self.store.get(rtype, name, mesh)
            if rec.stored is None:
                creates.append((node_id, rec, Resource(rtype, Meta(name=name, mesh=mesh),
                                                       self._merged(rtype, None, rec.doc))))
                continue
            updates.append((node_id, rec, Resource(rtype, rec.stored.meta, self._merged(rtype, rec.stored, rec.doc))))
        for start in range(0, len(creates), BATCH):
            await self._write_batch(creates[start:start + BATCH], self.store.create_all)
        for start in range(0, len(updates), BATCH):
            await self._write_batch(updates[start:start + BATCH], self.store.update_all)

    async def _read_all(self, unknown: list[tuple[_Record, tuple[ResourceType, str, str]]]) -> None:
        """Fill in what is stored for many records at once (a list per insight type); what is not stored
        stays unknown (read one by one, then created)."""
        for rtype in {target[0] for _, target in unknown}:
            stored = {(r.meta.mesh, r.meta.name): r for r in (await self.store.list(rtype)).items}
            for rec, (t, mesh, name) in unknown:
                if t is rtype and rec.stored is None:
                    rec.stored = stored.get((mesh, name))

    async def _write_batch(self, batch: list[_Pending],
                           write: Callable[[Sequence[Resource]], Awaitable[list[Resource]]]) -> None:
        if not batch:
            return
        try:
            written = await write([r for _, _, r in batch])
        except (AlreadyExists, Conflict, NotFound, MeshNotFound):
            # Someone else wrote one of them (another instance, the lifecycle's delete, a deleted mesh): none
            # of the batch was written; each insight again, one by one, each from a fresh read.
            for node_id, rec, resource in batch:
                await self._write_one(node_id, rec, resource.type, resource.meta.mesh, resource.meta.name)
            return
        for (_, rec, _), stored in zip(batch, written, strict=True):
            rec.stored = stored

    async def _write_one(self, node_id: str, rec: _Record, rtype: ResourceType, mesh: str, name: str) -> None:
        rec.stored = None
        try:
            rec.stored = await self._write(rtype, mesh, name, rec.doc)
        except (AlreadyExists, Conflict):
            rec.dirty = rec.urgent = True  # another instance kept winning the race: next round
            self._wake.set()
        except MeshNotFound:
            self._records.pop(node_id, None)  # the mesh is gone, and its dataplanes with it

    def _merged(self, rtype: ResourceType, current: Resource | None, doc: dict[str, Any]) -> Any:
        """The stored insight with our subscriptions, certificate and DNS report merged in (a spec)."""
        stored = current.spec.model_dump(by_alias=True, exclude_none=True) if current is not None else {}
        merged = dict(stored)
        merged["subscriptions"] = merge_subscriptions(stored.get("subscriptions", []), doc["subscriptions"],
                                                      self.instance_id, MAX_SUBSCRIPTIONS)
        if "mTLS" in doc:
            merged["mTLS"] = doc["mTLS"]
        # The newest report wins: the kuma-dp may have reported to another instance since.
        if "hostDns" in doc and doc["hostDns"]["time"] >= stored.get("hostDns", {}).get("time", ""):
            merged["hostDns"] = doc["hostDns"]
        return rtype.spec_cls.model_validate(merged)

    async def _write(self, rtype: ResourceType, mesh: str, name: str, doc: dict[str, Any]) -> Resource:
        """Versioned read-merge-write: other instances' subscriptions in the stored insight are kept, ours
        replace their stored copies; a concurrent write (Conflict) makes us read and merge again."""
        for attempt in range(5):
            try:
                current: Resource | None = await self.store.get(rtype, name, mesh)
            except NotFound:
                current = None
            spec = self._merged(rtype, current, doc)
            try:
                if current is None:
                    return await self.store.create(Resource(rtype, Meta(name=name, mesh=mesh), spec))
                return await self.store.update(Resource(rtype, current.meta, spec))
            except (AlreadyExists, Conflict):
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")


def _insight_of(node_id: str) -> tuple[ResourceType, str, str] | None:
    """(insight type, mesh, name) a proxy's insight is stored as; None for a node id that names no proxy."""
    ingress = ingress_name(node_id)
    if ingress is not None:
        return ZONE_INGRESS_INSIGHT, "", ingress
    try:
        mesh, name = split_node_id(node_id)
    except ValueError:
        return None
    return DATAPLANE_INSIGHT, mesh, name
