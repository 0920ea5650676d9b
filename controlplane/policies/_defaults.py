"""The policies Kuma creates in every new mesh, and the leader-only component that creates them.

Kuma (pkg/defaults/mesh) creates, when a mesh is created: `mesh-gateways-timeout-all-<mesh>`,
`mesh-timeout-all-<mesh>`, `mesh-circuit-breaker-all-<mesh>` and `mesh-retry-all-<mesh>`, with the specs
below (its documentation's "Skipping default resource creation"). The mesh field
`skipCreatingInitialPolicies` turns that off: `['*']` skips all, otherwise it lists policy type names
(`MeshRetry`, `MeshTimeout`, ...) to skip. Defaults are created once, when the mesh is created, and never
recreated: an operator may delete or change them.

The API and the `default` mesh created on first start create them in the same transaction as the Mesh
(`ResourceStore.create_all`), so a crash right after the create cannot lose them. `DefaultMeshPolicies` also
watches the store for Mesh creations by any other path (a global control plane), as a net. A zone connected to a
global control plane creates none: they come from global with the mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from controlplane.resources import REGISTRY, Resource, from_wire
from controlplane.resources.mesh import MeshSpec
from controlplane.store.base import AlreadyExists, ChangeEvent, MeshNotFound, NotFound, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait

log = logging.getLogger("kuma.defaults")

MESH_ALL = {"kind": "Mesh"}

# (name prefix, type, spec), in Kuma's words.
DEFAULT_POLICIES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("mesh-gateways-timeout-all", "MeshTimeout", {
        "targetRef": {"kind": "Mesh", "proxyTypes": ["Gateway"]},
        "from": [{"targetRef": MESH_ALL, "default": {
            "idleTimeout": "5m", "http": {"streamIdleTimeout": "5s", "requestHeadersTimeout": "500ms"}}}],
        "to": [{"targetRef": MESH_ALL, "default": {"idleTimeout": "1h", "http": {"streamIdleTimeout": "5s"}}}],
    }),
    ("mesh-timeout-all", "MeshTimeout", {
        "targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
        "from": [{"targetRef": MESH_ALL, "default": {
            "connectionTimeout": "10s", "idleTimeout": "2h",
            "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h", "maxStreamDuration": "0s"}}}],
        "to": [{"targetRef": MESH_ALL, "default": {
            "connectionTimeout": "5s", "idleTimeout": "1h",
            "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"}}}],
    }),
    ("mesh-circuit-breaker-all", "MeshCircuitBreaker", {
        "targetRef": MESH_ALL,
        "to": [{"targetRef": MESH_ALL, "default": {"connectionLimits": {
            "maxConnections": 1024, "maxPendingRequests": 1024, "maxRequests": 1024, "maxRetries": 3}}}],
    }),
    ("mesh-retry-all", "MeshRetry", {
        "targetRef": MESH_ALL,
        "to": [{"targetRef": MESH_ALL, "default": {
            "tcp": {"maxConnectAttempt": 5},
            "http": {"numRetries": 5, "perTryTimeout": "16s",
                     "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}},
            "grpc": {"numRetries": 5, "perTryTimeout": "16s",
                     "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}}}}],
    }),
)


def default_policies(mesh: Resource) -> list[Resource]:
    """The default policies a new mesh gets, minus those its `skipCreatingInitialPolicies` skips."""
    spec = mesh.spec
    skip = set(spec.skip_creating_initial_policies or ()) if isinstance(spec, MeshSpec) else set()
    if "*" in skip:
        return []
    name = mesh.meta.name
    return [from_wire({"type": kind, "mesh": name, "name": f"{prefix}-{name}", "spec": policy_spec})
            for prefix, kind, policy_spec in DEFAULT_POLICIES if kind not in skip]


async def ensure_default_policies(store: ResourceStore, mesh: Resource) -> list[str]:
    """Create the mesh's default policies that do not exist yet; returns the names created."""
    created: list[str] = []
    for policy in default_policies(mesh):
        try:
            await store.get(policy.type, policy.meta.name, policy.meta.mesh)
            continue
        except NotFound:
            pass
        try:
            await store.create(policy)
        except AlreadyExists:
            continue
        except MeshNotFound:
            return created  # the mesh was deleted meanwhile
        created.append(policy.meta.name)
        log.info("resource created", extra={"type": policy.type.name, "mesh": policy.meta.mesh,
                                            "resource": policy.meta.name, "reason": "default policy of a new mesh"})
    return created


class DefaultMeshPolicies:
    """Leader-only: creates the default policies of every mesh created while it runs."""

    name = "default-mesh-policies"

    def __init__(self, store: ResourceStore, *, enabled: bool = True, supervisor: Supervisor | None = None) -> None:
        self.store, self.enabled = store, enabled
        self.supervisor = supervisor or Supervisor()
        self._stack: contextlib.AsyncExitStack | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.enabled:
            return
        # Subscribe before returning, so a mesh created by a component started after this one is seen.
        self._stack = contextlib.AsyncExitStack()
        events = await self._stack.enter_async_context(self.store.watch())
        self._task = self.supervisor.spawn("default-mesh-policies", lambda: self._run(events))

    async def _run(self, events: asyncio.Queue[ChangeEvent]) -> None:
        mesh_type = REGISTRY.by_name("Mesh")
        assert mesh_type is not None
        while True:
            event = await events.get()
            if event.op != "create" or event.type != "Mesh":
                continue
            try:
                mesh = await self.store.get(mesh_type, event.name)
                await ensure_default_policies(self.store, mesh)
            except NotFound:
                continue
            except Exception:
                log.exception("cannot create the default policies of a mesh", extra={"mesh": event.name})

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
