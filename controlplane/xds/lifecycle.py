"""Dataplane lifecycle on ADS streams (Kuma's behaviour):

- a kuma-dp that sent its own Dataplane definition registers it when its Envoy connects: created, or updated
  if it exists; created ones are labelled `kuma.io/managed-by: kuma-dp`;
- when the last stream of such a dataplane closes, it is deleted after a grace period (Kuma: 10 s), unless
  it reconnected meanwhile; a Dataplane an operator created through the API is never deleted this way;
- several instances share the store: a kuma-dp that moved to another instance within the grace period has
  a newer, open subscription there, so its Dataplane is left alone (the insight is read before deleting);
- the DataplaneInsight goes with its Dataplane (right after it; the leader's GC, controlplane/xds/gc.py,
  removes leftovers and the Dataplanes of instances that died without a word).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from envoy.config.core.v3.base_pb2 import Node

from controlplane.resources import Resource
from controlplane.resources.insights import DataplaneInsightSpec, ZoneIngressInsightSpec, insight_type_of
from controlplane.resources.zone import ZoneIngressSpec
from controlplane.store.base import AlreadyExists, Conflict, MeshNotFound, NotFound, ResourceStore

from .auth import MANAGED_LABEL, MANAGED_VALUE, Caller, DataplaneAuthenticator
from .liveness import connected, instance_heartbeats, newest
from .reconciler import Reconciler

log = logging.getLogger("kuma.xds")

class DataplaneLifecycle:
    def __init__(self, store: ResourceStore, auth: DataplaneAuthenticator, reconciler: Reconciler, *,
                 grace: float = 10.0, instance_id: str = "", heartbeat: float = 10.0) -> None:
        self.store, self.auth, self.reconciler, self.grace = store, auth, reconciler, grace
        self.instance_id, self.heartbeat = instance_id, heartbeat
        self._streams: dict[str, set[int]] = {}
        self._pending_delete: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- StreamCallbacks -----------------------------------------------------------------------------------------

    def on_stream_open(self, stream_id: int, node_id: str, node: Node) -> None:
        self._streams.setdefault(node_id, set()).add(stream_id)
        pending = self._pending_delete.pop(node_id, None)
        if pending is not None:
            pending.cancel()
        caller = self.auth.callers.get(node_id)
        if caller is not None and caller.registering:
            self._spawn(self._register(caller), f"register {node_id}")
        self.reconciler.proxy_connected(node_id, vip_listeners=caller is not None and caller.vip_listeners)

    def on_stream_closed(self, stream_id: int, node_id: str) -> None:
        streams = self._streams.get(node_id, set())
        streams.discard(stream_id)
        self.reconciler.proxy_disconnected(node_id)
        if streams:
            return
        self._streams.pop(node_id, None)
        caller = self.auth.callers.get(node_id)
        if self._stopping:
            return  # the control plane is going away, not the dataplane: its Dataplane stays
        if caller is not None and caller.registering:
            self._pending_delete[node_id] = self._spawn(self._delete_later(caller, node_id), f"unregister {node_id}")

    def served(self) -> frozenset[str]:
        """Node ids with an open stream on this instance."""
        return frozenset(self._streams)

    def on_response_sent(self, *args: object) -> None:
        pass

    def on_ack(self, *args: object) -> None:
        pass

    def on_nack(self, *args: object) -> None:
        pass

    # --- store work ----------------------------------------------------------------------------------------------

    async def _register(self, caller: Caller) -> None:
        dp_type = caller.dataplane.type  # Dataplane, or ZoneIngress (mesh "")
        kind = _kind(caller)
        wanted = caller.dataplane
        for _ in range(5):
            try:
                current = await self.store.get(dp_type, caller.name, caller.mesh)
            except NotFound:
                try:
                    labels = {**wanted.meta.labels, MANAGED_LABEL: MANAGED_VALUE}
                    await self.store.create(wanted.with_meta(labels=labels, version=0))
                    log.info(f"{kind} registered", extra={"mesh": caller.mesh, "dataplane": caller.name})
                    return
                except AlreadyExists:
                    continue
                except MeshNotFound as e:
                    log.error(f"{kind} not registered", extra={"mesh": caller.mesh, "dataplane": caller.name,
                                                               "error": str(e)})
                    return
            labels = dict(wanted.meta.labels)
            managed = current.meta.labels.get(MANAGED_LABEL) == MANAGED_VALUE
            if isinstance(current.spec, ZoneIngressSpec) and isinstance(wanted.spec, ZoneIngressSpec):
                # Its available services are the zone's to keep (ingress_services.py), not the definition's.
                wanted = replace(wanted, spec=wanted.spec.model_copy(
                    update={"available_services": current.spec.available_services}))
            if managed:
                labels[MANAGED_LABEL] = MANAGED_VALUE
            unchanged = current.spec == wanted.spec and dict(current.meta.labels) == labels
            if unchanged and not managed:
                return
            # A managed Dataplane is written even when unchanged: the new version and modification time tell
            # the leader's cleanup (controlplane/xds/gc.py), which may have read the insight of the previous,
            # ended connection, that the dataplane is back; its versioned delete then fails.
            try:
                await self.store.update(_replace(wanted, labels, current.meta.version))
                if not unchanged:
                    log.info(f"{kind} updated on connect", extra={"mesh": caller.mesh, "dataplane": caller.name})
                return
            except (Conflict, NotFound):
                continue
        log.error(f"{kind} kept changing while being registered; giving up",
                  extra={"mesh": caller.mesh, "dataplane": caller.name})

    async def _delete_later(self, caller: Caller, node_id: str) -> None:
        await asyncio.sleep(self.grace)
        self._pending_delete.pop(node_id, None)
        if node_id in self._streams:
            return
        dp_type, kind = caller.dataplane.type, _kind(caller)
        try:
            current = await self.store.get(dp_type, caller.name, caller.mesh)
            if current.meta.labels.get(MANAGED_LABEL) != MANAGED_VALUE:
                return  # an operator's Dataplane: theirs to delete
            elsewhere = await self._connected_elsewhere(caller)
            if elsewhere:
                log.info(f"{kind} not unregistered: it reconnected to another instance",
                         extra={"mesh": caller.mesh, "dataplane": caller.name, "instance": elsewhere})
                return
            await self.store.delete(dp_type, caller.name, caller.mesh, version=current.meta.version)
            log.info(f"{kind} unregistered after disconnect",
                     extra={"mesh": caller.mesh, "dataplane": caller.name, "grace_s": self.grace})
            await delete_insight(self.store, caller.mesh, caller.name, dp_type.name)
        except (NotFound, Conflict):
            pass  # gone already, or changed meanwhile (re-registered): leave it
        finally:
            self.auth.callers.pop(node_id, None)

    async def _connected_elsewhere(self, caller: Caller) -> str | None:
        """The instance holding the dataplane's newest subscription, if that is another, live one."""
        rtype = insight_type_of(caller.dataplane.type.name)
        try:
            insight = await self.store.get(rtype, caller.name, caller.mesh)
        except NotFound:
            return None
        if not isinstance(insight.spec, DataplaneInsightSpec | ZoneIngressInsightSpec):
            return None
        sub = newest(insight.spec)
        if sub is None or sub.control_plane_instance_id == self.instance_id:
            return None
        if connected(sub, self.heartbeat, await instance_heartbeats(self.store)):
            return sub.control_plane_instance_id
        return None

    async def stop(self) -> None:
        """Called before the dp-server closes its streams: those closures are not disconnects."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def delete_insight(store: ResourceStore, mesh: str, name: str, proxy_type: str = "Dataplane") -> None:
    """Delete a dataplane's (or zone ingress's) insight, after the proxy's resource; already gone is fine."""
    rtype = insight_type_of(proxy_type)
    with contextlib.suppress(NotFound):
        await store.delete(rtype, name, mesh)


def _kind(caller: Caller) -> str:
    return "zone ingress" if caller.dataplane.type.name == "ZoneIngress" else "dataplane"


def _replace(wanted: Resource, labels: dict[str, str], version: int) -> Resource:
    return wanted.with_meta(labels=labels, version=version)
