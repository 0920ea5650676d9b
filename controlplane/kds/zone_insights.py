"""ZoneInsight upkeep on global: one subscription per connection of a zone (both KDS streams), with what flowed
per type, written on connect, on disconnect and every flush interval while connected (its heartbeat: a global
instance killed with -9 writes no disconnect, and its subscription goes stale). Several global instances share
one store: each replaces only its own subscriptions in the stored insight (versioned read-merge-write).

Status: Online while the newest subscription is open and fresh, and for a grace period after it ended (a zone
reconnecting is not an outage); Offline after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controlplane.resources.base import Meta, Resource
from controlplane.resources.codec import now_text
from controlplane.resources.zone import ZONE_INSIGHT, ZoneInsightSpec
from controlplane.store.base import AlreadyExists, Conflict, NotFound, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait, wait_set
from controlplane.xds.liveness import STALE_HEARTBEATS, last_seen
from kuma_shared.logs import ErrorLog

log = logging.getLogger("kuma.kds")

MAX_SUBSCRIPTIONS = 5


def zone_status(spec: ZoneInsightSpec | None, *, flush: float, grace: float, now: datetime | None = None) -> str:
    """"Online" or "Offline" (see the module doc)."""
    if spec is None or not spec.subscriptions:
        return "Offline"
    now = now or datetime.now(UTC)
    newest = max(spec.subscriptions, key=lambda s: s.connect_time)
    seen = last_seen(newest)
    if seen is None:
        return "Offline"
    age = (now - seen).total_seconds()
    if newest.disconnect_time is None and age <= flush * STALE_HEARTBEATS:
        return "Online"
    return "Online" if age <= grace else "Offline"


def stats_doc(streams: dict[str, Any]) -> dict[str, Any]:
    """KdsServer.zone_status()'s entry for one zone as the subscription's `status.stat` and `total`."""
    stat: dict[str, dict[str, Any]] = {}
    for kind, stream in streams.items():
        for name, st in stream.get("types", {}).items():
            doc = stat.setdefault(name, {})
            if kind == "GlobalToZoneSync":
                doc.update(responsesSent=st["responses_sent"], resourcesSent=st["resources_sent"],
                           responsesAcknowledged=st["acked"], responsesRejected=st["nacked"])
            else:
                doc.update(responsesReceived=st["responses_received"], resourcesRejected=st["rejected"])
            if st.get("last_nack"):
                doc["lastNack"] = st["last_nack"][:2000]
    total: dict[str, int] = {}
    for doc in stat.values():
        for key, value in doc.items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return {"stat": stat, "total": total}


@dataclass
class _Open:
    sub: dict[str, Any]
    environment: str
    dirty: bool = True


class ZoneInsights:
    def __init__(self, store: ResourceStore, instance: str, stats: Callable[[], dict[str, dict[str, Any]]], *,
                 flush: float = 10.0, supervisor: Supervisor | None = None) -> None:
        self.store, self.instance, self.stats, self.flush_interval = store, instance or "global", stats, flush
        self.supervisor = supervisor or Supervisor()
        self._zones: dict[str, _Open] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._errors = ErrorLog(log)
        # Held around each write and around a removal, so a write that read the insight before its Zone was
        # deleted cannot create it again afterwards.
        self._writing = asyncio.Lock()

    def opened(self, zone: str, *, version: str, environment: str) -> None:
        """The zone's first stream on this instance opened."""
        sub = {"id": uuid.uuid4().hex[:12], "globalInstanceId": self.instance, "connectTime": now_text(),
               "status": {"lastUpdateTime": now_text()}, "version": {"kumaCp": {"version": version[:100]}}}
        self._zones[zone] = _Open(sub, environment if environment in ("universal", "kubernetes") else "universal")
        self._wake.set()

    def closed(self, zone: str) -> None:
        """The zone's last stream on this instance closed."""
        entry = self._zones.get(zone)
        if entry is not None:
            entry.sub["disconnectTime"] = now_text()
            entry.dirty = True
            self._wake.set()

    async def start(self) -> None:
        self._task = self.supervisor.spawn("zone-insights", self._loop)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        with contextlib.suppress(Exception):  # best effort: record the disconnects we know of
            for zone in list(self._zones):
                self.closed(zone)
            await asyncio.wait_for(self.flush(), 2)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.flush_interval
        while True:
            await wait_set(self._wake, max(0.0, next_beat - loop.time()))
            self._wake.clear()
            if loop.time() >= next_beat:
                for entry in self._zones.values():
                    if "disconnectTime" not in entry.sub:
                        entry.dirty = True  # the heartbeat: stats and lastUpdateTime
                next_beat = loop.time() + self.flush_interval
            await self.flush()

    async def flush(self) -> None:
        status = self.stats()
        for zone, entry in list(self._zones.items()):
            if not entry.dirty:
                continue
            entry.dirty = False
            if "disconnectTime" not in entry.sub:
                entry.sub["status"] = {"lastUpdateTime": now_text(), **stats_doc(status.get(zone, {}))}
            try:
                async with self._writing:
                    if self._zones.get(zone) is not entry:
                        continue  # the zone was removed (or connected anew) meanwhile
                    await self._write(zone, entry)
            except Exception as e:
                entry.dirty = True
                self._errors.report((zone, type(e).__name__), "cannot write the zone's insight; will retry",
                                    extra={"zone": zone}, error=e)
                continue
            if "disconnectTime" in entry.sub and self._zones.get(zone) is entry:
                del self._zones[zone]

    def forget(self, zone: str) -> None:
        """The zone's Zone was deleted: this instance writes no more of the zone's current connection (the
        subscription its closing streams would record). Called as the deletion is seen, before any await, so a
        connection the zone opens afterwards (it registers anew) is not the one forgotten."""
        self._zones.pop(zone, None)

    async def remove(self, zone: str) -> bool:
        """Delete the insight of a deleted Zone, history and all. A zone still running reconnects and registers
        as a new Zone: if it already has (its connection opened after forget()), its subscription is written
        again at once into a fresh insight. True if an insight was deleted."""
        async with self._writing:  # a write that read the insight before the deletion cannot recreate it after
            try:
                await self.store.delete(ZONE_INSIGHT, zone)
                deleted = True
            except NotFound:
                deleted = False
            if (entry := self._zones.get(zone)) is not None:
                entry.dirty = True
                self._wake.set()
        if deleted:
            log.info("KDS deleted the zone's insight with its Zone", extra={"zone": zone})
        return deleted

    async def _write(self, zone: str, entry: _Open) -> None:
        for attempt in range(5):
            try:
                current: Resource | None = await self.store.get(ZONE_INSIGHT, zone)
            except NotFound:
                current = None
            stored = current.spec.model_dump(by_alias=True, exclude_none=True) if current is not None else {}
            subs = [s for s in stored.get("subscriptions", []) if s.get("id") != entry.sub["id"]]
            subs = sorted([*subs, entry.sub], key=lambda s: str(s.get("connectTime", "")))[-MAX_SUBSCRIPTIONS:]
            spec = ZoneInsightSpec.model_validate({"subscriptions": subs, "environment": entry.environment})
            try:
                if current is None:
                    await self.store.create(Resource(ZONE_INSIGHT, Meta(name=zone), spec))
                else:
                    await self.store.update(Resource(ZONE_INSIGHT, current.meta, spec))
                return
            except (AlreadyExists, Conflict):
                if attempt == 4:
                    raise
