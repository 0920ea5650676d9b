"""Leader-only cleanup of dataplanes nobody serves any more.

An instance deletes the kuma-dp-managed Dataplanes of its own streams after the grace period
(controlplane/xds/lifecycle.py), but an instance killed with -9 or a host that died deletes nothing, and its
subscriptions stay "connected". Here the leader deletes every kuma-dp-managed Dataplane whose newest
subscription has been disconnected, or left open by an instance whose heartbeat record went stale
(controlplane/xds/liveness.py), for longer than the grace period, and then its insight; plus insights left
without a Dataplane. A Dataplane an operator created (no `kuma.io/managed-by: kuma-dp`) is never touched. It also
deletes the heartbeat records of instances long dead (controlplane/xds/instances.py says when and why).

No proxy is judged by time that passed before this cleanup started (this instance became leader): after the
control plane was down (restarted, or every instance gone for a while), every subscription looks stale, yet the
proxies are alive and reconnecting with their back-off. From the start, a proxy gets the allowance a registration
without any subscription gets (STALE_HEARTBEATS heartbeats) plus the grace period before it can be deleted;
without that, an outage longer than the grace period deleted every Dataplane not yet reconnected.

A pass runs every few seconds while nothing may have changed, so it reads little: the proxies come from a
StoreView kept current by the store's events (not a list of every Dataplane each pass), and the insights it
needs are only those of proxies no stream here serves and of insights without a proxy (names kept from the
events): with every dataplane connected here, a pass reads no insight at all. Without a live watch (a pass
called directly) it lists everything, as before. Every pass lists the instances' heartbeat records (one per
kuma-cp instance).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from controlplane.kds.naming import ORIGIN_LABEL
from controlplane.resources import Resource, ResourceType
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.insights import DataplaneInsightSpec, ZoneIngressInsightSpec, insight_type_of
from controlplane.resources.instance import CONTROL_PLANE_INSTANCE
from controlplane.resources.zone import ZONE_INGRESS
from controlplane.store.base import ChangeEvent, Conflict, NotFound, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait
from kuma_shared.logs import ErrorLog

from .auth import MANAGED_LABEL, MANAGED_VALUE
from .bootstrap import ingress_node_id, node_id
from .instances import delete_stale_instances, retention
from .lifecycle import delete_insight
from .liveness import STALE_HEARTBEATS, Heartbeats, heartbeats_of, offline_since
from .remote_endpoints import ingress_zone
from .store_view import ALL_MESHES, StoreView

log = logging.getLogger("kuma.xds.gc")

READ_UNDER = 100  # fewer insights than this to look at: read one by one; more: one list


class DataplaneGc:
    name = "dataplane-gc"

    def __init__(self, store: ResourceStore, *, grace: float = 10.0, heartbeat: float = 10.0,
                 interval: float | None = None, supervisor: Supervisor | None = None,
                 served: Callable[[], frozenset[str]] = frozenset, zone: str = "",
                 instance_retention: float | None = None) -> None:
        self.store, self.grace, self.heartbeat = store, grace, heartbeat
        # How long the record of an instance that stopped beating is kept (controlplane/xds/instances.py).
        self.instance_retention = instance_retention if instance_retention is not None else retention(heartbeat, grace)
        self.zone = zone  # this zone: its ZoneIngresses are cleaned up here, other zones' are not
        # Node ids (`<mesh>.<name>`) with a stream open on this instance: never offline, whatever the insight
        # says (its subscription is written at the next flush).
        self.served = served
        self.interval = interval if interval is not None else max(1.0, min(grace, heartbeat))
        self.supervisor = supervisor or Supervisor()
        self.started_at: datetime | None = None  # when this cleanup started judging (None: sweep() alone)
        self._task: asyncio.Task[None] | None = None
        self._errors = ErrorLog(log)
        self.view = StoreView(store)  # the proxies, while the loop watches the store
        # insight type -> (mesh, name) of every stored insight, from a list and the events since (None: list)
        self._insight_keys: dict[str, set[tuple[str, str]]] = {}
        self.insights_read = 0  # insights parsed by passes (tests, metrics)

    async def start(self) -> None:
        self.started_at = datetime.now(UTC)
        self._task = self.supervisor.spawn("dataplane-gc", self._loop)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        async with self.store.watch() as events:
            self.view.start_watching()
            self._insight_keys.clear()
            try:
                while True:
                    await asyncio.sleep(self.interval)
                    await self.watched_pass(events)
            finally:
                self.view.stop_watching()
                self._insight_keys.clear()

    async def watched_pass(self, events: asyncio.Queue[ChangeEvent], now: datetime | None = None) -> None:
        """One pass of the loop: the events since the last one, then a sweep (its failure is logged)."""
        while not events.empty():
            self._on_event(events.get_nowait())
        try:
            await self.sweep(now)
        except Exception as e:
            self._errors.report("sweep", "dataplane cleanup pass failed; will retry", error=e)

    def _on_event(self, event: ChangeEvent) -> None:
        self.view.on_event(event)
        if event.op == "resync":
            self._insight_keys.clear()
            return
        keys = self._insight_keys.get(event.type)
        if keys is not None:
            if event.op == "delete":
                keys.discard((event.mesh, event.name))
            else:
                keys.add((event.mesh, event.name))

    async def sweep(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """One pass over Dataplanes and this zone's ZoneIngresses; returns the (mesh, name) of those deleted
        (mesh "" for an ingress)."""
        now = now or datetime.now(UTC)
        served = self.served()
        # The instances' heartbeats (a few records): whose open subscriptions are still live.
        instances = (await self.store.list(CONTROL_PLANE_INSTANCE)).items
        beats = heartbeats_of(instances)
        deleted = await self._sweep(DATAPLANE, now, served, beats, lambda r: node_id(r.meta.mesh, r.meta.name))
        # Other zones' ingresses are synced here from global: theirs to clean up, never ours.
        deleted += await self._sweep(ZONE_INGRESS, now, served, beats, lambda r: ingress_node_id(r.meta.name),
                                     keep=lambda r: ingress_zone(r) in (None, self.zone))
        await delete_stale_instances(self.store, instances, self.instance_retention, now)
        return deleted

    async def _sweep(self, rtype: ResourceType, now: datetime, served: frozenset[str], beats: Heartbeats,
                     node: Callable[[Resource], str], keep: Callable[[Resource], bool] = lambda r: True,
                     ) -> list[tuple[str, str]]:
        insight_type = insight_type_of(rtype.name)
        kind = "zone ingress" if rtype is ZONE_INGRESS else "dataplane"
        every = await self.view.list(rtype, ALL_MESHES)
        existing = {(d.meta.mesh, d.meta.name) for d in every}
        proxies = {(d.meta.mesh, d.meta.name): d for d in every
                   if d.meta.labels.get(MANAGED_LABEL) == MANAGED_VALUE and keep(d)}
        known = self._insight_keys.get(insight_type.name) if self.view.watching else None
        if known is None:
            insights = await self._list_insights(insight_type)
        else:
            # Only what a decision below reads: insights of proxies not served here, and of no proxy at all.
            wanted = [k for k, p in proxies.items() if node(p) not in served and k in known]
            wanted += [k for k in known if k not in existing]
            insights = await self._read_insights(insight_type, wanted)
        deleted = []
        for key, proxy in proxies.items():
            gone = self._gone_for(insights.get(key), proxy, beats, now)
            if gone is None or node(proxy) in served:
                continue
            try:
                await self.store.delete(rtype, proxy.meta.name, proxy.meta.mesh, version=proxy.meta.version)
            except (NotFound, Conflict):
                continue  # changed meanwhile (re-registered) or deleted by its instance: next pass decides
            log.info(f"offline {kind} cleaned up", extra={
                "mesh": proxy.meta.mesh, "dataplane": proxy.meta.name, "offline_s": round(gone, 1),
                "grace_s": self.grace})
            deleted.append(key)
            await delete_insight(self.store, proxy.meta.mesh, proxy.meta.name, rtype.name)
        for key, insight in insights.items():
            if key in proxies or not isinstance(insight.spec, DataplaneInsightSpec | ZoneIngressInsightSpec):
                continue
            if insight.meta.labels.get(ORIGIN_LABEL) is not None:
                continue  # another zone's, synced here
            gone = offline_since(insight.spec, self.heartbeat, beats, now)
            if gone is not None and gone > self.grace and not await self._exists(rtype, key):
                await delete_insight(self.store, key[0], key[1], rtype.name)
                log.info(f"insight of a deleted {kind} cleaned up", extra={"mesh": key[0], "dataplane": key[1]})
        return deleted

    async def _list_insights(self, insight_type: ResourceType) -> dict[tuple[str, str], Resource]:
        insights = {(i.meta.mesh, i.meta.name): i for i in (await self.store.list(insight_type)).items}
        self.insights_read += len(insights)
        if self.view.watching:
            # Kept from the events from now on (those since the list was read included: they are queued).
            self._insight_keys[insight_type.name] = set(insights)
        return insights

    async def _read_insights(self, insight_type: ResourceType,
                             keys: list[tuple[str, str]]) -> dict[tuple[str, str], Resource]:
        if len(keys) >= READ_UNDER:
            return await self._list_insights(insight_type)
        found = {}
        for mesh, name in keys:
            try:
                found[(mesh, name)] = await self.store.get(insight_type, name, mesh)
            except NotFound:
                continue
            self.insights_read += 1
        return found

    def _gone_for(self, insight: Resource | None, dp: Resource, beats: Heartbeats, now: datetime) -> float | None:
        """Seconds past the grace period the dataplane has been offline, or None to keep it."""
        if insight is None or not isinstance(insight.spec, DataplaneInsightSpec | ZoneIngressInsightSpec):
            # Registered but no subscription ever stored (its instance died before the first flush): judge by
            # the Dataplane's age, allowing for the heartbeats that would have written one.
            created = dp.meta.creation_time
            if created is None:
                return None
            gone = (now - created).total_seconds() - self.heartbeat * STALE_HEARTBEATS
        else:
            since = offline_since(insight.spec, self.heartbeat, beats, now)
            if since is None:
                return None
            gone = since
            # A kuma-dp that reconnected rewrites its Dataplane (controlplane/xds/lifecycle.py) before its new
            # subscription reaches the insight: offline at most since that write.
            if dp.meta.modification_time is not None:
                gone = min(gone, (now - dp.meta.modification_time).total_seconds())
        if self.started_at is not None:  # no offline time counts from before we started watching (see top)
            gone = min(gone, (now - self.started_at).total_seconds() - self.heartbeat * STALE_HEARTBEATS)
        return gone if gone > self.grace else None

    async def _exists(self, rtype: ResourceType, key: tuple[str, str]) -> bool:
        try:
            await self.store.get(rtype, key[1], key[0])
            return True
        except NotFound:
            return False
