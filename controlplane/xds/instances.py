"""This instance's ControlPlaneInstance record (its heartbeat, controlplane/resources/instance.py), and the
leader's cleanup of dead instances' records.

The InsightsRecorder (controlplane/xds/insights.py) writes the record on start and every heartbeat, and deletes
it on a graceful stop. Readers (controlplane/xds/liveness.py) count an open subscription as connected while its
instance's record is fresh.

Cleanup. Instance ids are new on every start, so records of instances killed with -9 would pile up. The leader
deletes a record whose heartbeat is older than `retention` (default: RETAIN_WINDOWS staleness windows, at least
twice the dataplane grace period). It does not check whether an open subscription still names the instance:
that would take a list of every insight, and it changes nothing a reader sees. Without the record, such a
subscription is judged by its own last update (liveness's fallback), which a dead instance stopped writing at
most a heartbeat and a flush after its last heartbeat, so long before the record is deleted: it is offline either
way, and its offline time moves by at most that much, long after the leader's GC has acted on it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from controlplane import __version__
from controlplane.kds.naming import ORIGIN_LABEL
from controlplane.resources import Meta, Resource
from controlplane.resources.codec import now_text
from controlplane.resources.instance import CONTROL_PLANE_INSTANCE, ControlPlaneInstanceSpec
from controlplane.store.base import AlreadyExists, Conflict, NotFound, ResourceStore

from .liveness import STALE_HEARTBEATS, parse_time

log = logging.getLogger("kuma.xds")

RETAIN_WINDOWS = 20  # staleness windows a dead instance's record is kept (10 min with the default heartbeat)


def retention(heartbeat: float, grace: float) -> float:
    """Seconds a dead instance's record is kept: long past the staleness window and the dataplane grace period."""
    return max(heartbeat * STALE_HEARTBEATS * RETAIN_WINDOWS, 2 * grace)


class InstanceRecord:
    """Writes this instance's record: `beat()` on start and every heartbeat (one write), `delete()` on stop."""

    def __init__(self, store: ResourceStore, instance_id: str, *, mode: str = "zone", zone: str = "",
                 version: str = __version__) -> None:
        self.store, self.instance_id = store, instance_id
        self.mode, self.zone, self.version = mode, zone or None, version
        self.started = now_text()
        self._stored: Resource | None = None  # what we last wrote: the base of the next (versioned) write
        self.writes = 0

    def _spec(self) -> ControlPlaneInstanceSpec:
        return ControlPlaneInstanceSpec(last_heartbeat_time=now_text(), start_time=self.started, mode=self.mode,
                                        zone=self.zone, version=self.version)

    async def beat(self) -> None:
        """Write the record with a fresh heartbeat: an update of what we wrote last, else (first beat, or the
        record was deleted or changed meanwhile) from a fresh read."""
        spec = self._spec()
        if self._stored is not None:
            try:
                self._stored = await self.store.update(Resource(CONTROL_PLANE_INSTANCE, self._stored.meta, spec))
                self.writes += 1
                return
            except (Conflict, NotFound):
                self._stored = None
        for _ in range(3):
            try:
                current = await self.store.get(CONTROL_PLANE_INSTANCE, self.instance_id)
            except NotFound:
                try:
                    self._stored = await self.store.create(
                        Resource(CONTROL_PLANE_INSTANCE, Meta(name=self.instance_id), spec))
                    self.writes += 1
                    return
                except AlreadyExists:
                    continue
            try:
                self._stored = await self.store.update(Resource(CONTROL_PLANE_INSTANCE, current.meta, spec))
                self.writes += 1
                return
            except (Conflict, NotFound):
                continue
        raise Conflict(f"ControlPlaneInstance {self.instance_id!r} kept changing while this instance wrote its "
                       "heartbeat: another process uses the same instance id")

    async def delete(self) -> None:
        """Gone gracefully: readers judge our subscriptions by their disconnect times, written just before."""
        with contextlib.suppress(NotFound):
            await self.store.delete(CONTROL_PLANE_INSTANCE, self.instance_id)
        self._stored = None


async def delete_stale_instances(store: ResourceStore, records: Iterable[Resource], retain: float,
                                 now: datetime | None = None) -> list[str]:
    """Of the listed ControlPlaneInstance records, delete those of instances silent for more than `retain`
    seconds (not those synced from another zone: theirs to clean up). Returns their names."""
    now = now or datetime.now(UTC)
    deleted = []
    for r in records:
        if r.meta.labels.get(ORIGIN_LABEL) is not None or not isinstance(r.spec, ControlPlaneInstanceSpec):
            continue
        beat = parse_time(r.spec.last_heartbeat_time)
        if beat is None or (now - beat).total_seconds() <= retain:
            continue
        try:
            await store.delete(CONTROL_PLANE_INSTANCE, r.meta.name, version=r.meta.version)
        except (NotFound, Conflict):
            continue  # deleted meanwhile, or the instance is back (a beat in between): keep it
        log.info("record of a dead control-plane instance cleaned up", extra={
            "instance": r.meta.name, "last_heartbeat": r.spec.last_heartbeat_time, "retain_s": retain})
        deleted.append(r.meta.name)
    return deleted
