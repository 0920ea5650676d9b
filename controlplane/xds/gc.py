"""Leader-only cleanup of dataplanes nobody serves any more.

An instance deletes the kuma-dp-managed Dataplanes of its own streams after the grace period
(controlplane/xds/lifecycle.py), but an instance killed with -9 or a host that died deletes nothing, and its
subscriptions stay "connected". Here the leader deletes every kuma-dp-managed Dataplane whose newest
subscription has been disconnected, or left open by an instance that stopped refreshing it
(controlplane/xds/liveness.py), for longer than the grace period, and then its insight; plus insights left
without a Dataplane. A Dataplane an operator created (no `kuma.io/managed-by: kuma-dp`) is never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from controlplane.resources import REGISTRY, Resource
from controlplane.resources.insights import DataplaneInsightSpec
from controlplane.store.base import Conflict, ListQuery, NotFound, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait
from kuma_shared.logs import ErrorLog

from .auth import MANAGED_LABEL, MANAGED_VALUE
from .bootstrap import node_id
from .lifecycle import delete_insight
from .liveness import STALE_HEARTBEATS, offline_since

log = logging.getLogger("kuma.xds.gc")


class DataplaneGc:
    name = "dataplane-gc"

    def __init__(self, store: ResourceStore, *, grace: float = 10.0, heartbeat: float = 10.0,
                 interval: float | None = None, supervisor: Supervisor | None = None,
                 served: Callable[[], frozenset[str]] = frozenset) -> None:
        self.store, self.grace, self.heartbeat = store, grace, heartbeat
        # Node ids (`<mesh>.<name>`) with a stream open on this instance: never offline, whatever the insight
        # says (its subscription is written at the next flush).
        self.served = served
        self.interval = interval if interval is not None else max(1.0, min(grace, heartbeat))
        self.supervisor = supervisor or Supervisor()
        self._task: asyncio.Task[None] | None = None
        self._errors = ErrorLog(log)

    async def start(self) -> None:
        self._task = self.supervisor.spawn("dataplane-gc", self._loop)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Exception as e:
                self._errors.report("sweep", "dataplane cleanup pass failed; will retry", error=e)

    async def sweep(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """One pass; returns the (mesh, name) of the Dataplanes deleted."""
        now = now or datetime.now(UTC)
        dp_type, insight_type = REGISTRY.by_name("Dataplane"), REGISTRY.by_name("DataplaneInsight")
        assert dp_type is not None and insight_type is not None
        insights = {(i.meta.mesh, i.meta.name): i for i in (await self.store.list(insight_type)).items}
        dataplanes = {(d.meta.mesh, d.meta.name): d
                      for d in (await self.store.list(dp_type, ListQuery(labels={MANAGED_LABEL: MANAGED_VALUE}))).items}
        deleted = []
        served = self.served()
        for key, dp in dataplanes.items():
            gone = self._gone_for(insights.get(key), dp, now)
            if gone is None or node_id(*key) in served:
                continue
            try:
                await self.store.delete(dp_type, dp.meta.name, dp.meta.mesh, version=dp.meta.version)
            except (NotFound, Conflict):
                continue  # changed meanwhile (re-registered) or deleted by its instance: next pass decides
            log.info("offline dataplane cleaned up", extra={
                "mesh": dp.meta.mesh, "dataplane": dp.meta.name, "offline_s": round(gone, 1),
                "grace_s": self.grace})
            deleted.append(key)
            await delete_insight(self.store, dp.meta.mesh, dp.meta.name)
        for key, insight in insights.items():
            if key in dataplanes or not isinstance(insight.spec, DataplaneInsightSpec):
                continue
            gone = offline_since(insight.spec, self.heartbeat, now)
            if gone is not None and gone > self.grace and not await self._dataplane_exists(key):
                await delete_insight(self.store, *key)
                log.info("insight of a deleted dataplane cleaned up", extra={"mesh": key[0], "dataplane": key[1]})
        return deleted

    def _gone_for(self, insight: Resource | None, dp: Resource, now: datetime) -> float | None:
        """Seconds past the grace period the dataplane has been offline, or None to keep it."""
        if insight is None or not isinstance(insight.spec, DataplaneInsightSpec):
            # Registered but no subscription ever stored (its instance died before the first flush): judge by
            # the Dataplane's age, allowing for the heartbeats that would have written one.
            created = dp.meta.creation_time
            if created is None:
                return None
            gone = (now - created).total_seconds() - self.heartbeat * STALE_HEARTBEATS
        else:
            since = offline_since(insight.spec, self.heartbeat, now)
            if since is None:
                return None
            gone = since
            # A kuma-dp that reconnected rewrites its Dataplane (controlplane/xds/lifecycle.py) before its new
            # subscription reaches the insight: offline at most since that write.
            if dp.meta.modification_time is not None:
                gone = min(gone, (now - dp.meta.modification_time).total_seconds())
        return gone if gone > self.grace else None

    async def _dataplane_exists(self, key: tuple[str, str]) -> bool:
        dp_type = REGISTRY.by_name("Dataplane")
        assert dp_type is not None
        try:
            await self.store.get(dp_type, key[1], key[0])
            return True
        except NotFound:
            return False
