"""Leader-only components that create what Kuma creates on first start: the `default` mesh
(KUMA_DEFAULTS_SKIP_MESH_CREATION) and the admin user token (GlobalSecret `admin-user-token`, readable by
local admins: `kumactl get global-secret admin-user-token -o json`)."""

from __future__ import annotations

import logging

from controlplane.policies._defaults import default_policies
from controlplane.resources import REGISTRY, from_wire
from controlplane.store.base import AlreadyExists, NotFound, ResourceStore
from controlplane.tokens.service import TokenService

log = logging.getLogger("kuma.defaults")


class DefaultMesh:
    name = "default-mesh"

    def __init__(self, store: ResourceStore, *, default_policies: bool = True) -> None:
        self.store, self.default_policies = store, default_policies

    async def start(self) -> None:
        mesh_type = REGISTRY.by_name("Mesh")
        assert mesh_type is not None
        try:
            await self.store.get(mesh_type, "default")
            return
        except NotFound:
            pass
        try:
            mesh = from_wire({"type": "Mesh", "name": "default"})
            # With Kuma's default policies, in one transaction: a crash cannot leave the mesh without them.
            await self.store.create_all([mesh, *(default_policies(mesh) if self.default_policies else [])])
            log.info("resource created", extra={"type": "Mesh", "resource": "default", "reason": "default mesh"})
        except AlreadyExists:
            pass  # another instance made it first

    async def stop(self) -> None:
        pass


class AdminUserToken:
    name = "admin-user-token"

    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    async def start(self) -> None:
        await self.tokens.ensure_admin_user_token()  # logs when it creates one

    async def stop(self) -> None:
        pass
