"""Leader-only component that creates the `default` mesh, as Kuma does (KUMA_DEFAULTS_SKIP_MESH_CREATION)."""

from __future__ import annotations

import logging

from controlplane.resources import REGISTRY, from_wire
from controlplane.store.base import AlreadyExists, NotFound, ResourceStore

log = logging.getLogger("kuma.defaults")


class DefaultMesh:
    name = "default-mesh"

    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    async def start(self) -> None:
        mesh_type = REGISTRY.by_name("Mesh")
        assert mesh_type is not None
        try:
            await self.store.get(mesh_type, "default")
            return
        except NotFound:
            pass
        try:
            await self.store.create(from_wire({"type": "Mesh", "name": "default"}))
            log.info("resource created", extra={"type": "Mesh", "name": "default", "reason": "default mesh"})
        except AlreadyExists:
            pass  # another instance made it first

    async def stop(self) -> None:
        pass
