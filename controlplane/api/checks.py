"""Checks the API runs beyond a resource's own validation, where the answer needs the store:
a Mesh's CA backends must be usable (so a broken CA is refused here, not NACKed by every Envoy later), and
a Secret a Mesh's CA uses cannot be deleted while the Mesh names it."""

from __future__ import annotations

from controlplane.ca import CaManager, used_secrets
from controlplane.policies._defaults import default_policies
from controlplane.resources import REGISTRY, Resource, ResourceType
from controlplane.resources.dataplane import DataplaneSpec, with_zone_tag
from controlplane.resources.errors import InvalidParameter
from controlplane.resources.mesh import MeshSpec, membership_refusal
from controlplane.store.base import NotFound, ResourceStore

from .ownership import Ownership


async def dataplane_membership_refusal(store: ResourceStore, dataplane: Resource) -> str | None:
    """Why the Dataplane may not join its mesh (the Mesh's constraints.dataplaneProxy), or None. A missing
    mesh is the store's to refuse."""
    mesh_type = REGISTRY.by_name("Mesh")
    assert mesh_type is not None
    try:
        mesh = await store.get(mesh_type, dataplane.meta.mesh)
    except NotFound:
        return None
    assert isinstance(mesh.spec, MeshSpec) and isinstance(dataplane.spec, DataplaneSpec)
    return membership_refusal(mesh.spec, mesh.meta.name, dataplane.spec.tag_sets())


class WriteChecks:
    def __init__(self, store: ResourceStore, ca: CaManager, *, default_policies: bool = True,
                 ownership: Ownership | None = None) -> None:
        self.store, self.ca = store, ca
        self.default_policies = default_policies  # off on a zone under a global: they come from global
        self.ownership = ownership or Ownership("zone")

    async def not_ours(self, rtype: ResourceType, name: str, mesh: str,
                       labels: dict[str, str] | None = None) -> str | None:
        """Why this control plane may not write the resource (multi-zone ownership), or None: judged by its type,
        the labels written and the labels of the stored copy (where it came from)."""
        try:  # the stored copy first: its labels say which zone to go to
            stored = await self.store.get(rtype, name, mesh)
            refusal = self.ownership.refusal(rtype, dict(stored.meta.labels))
            if refusal is not None:
                return refusal
        except NotFound:
            pass
        return self.ownership.refusal(rtype, labels)

    def prepare(self, resource: Resource) -> Resource:
        """What this control plane stores for a written resource: a zone's Dataplanes carry its kuma.io/zone."""
        if resource.type.name == "Dataplane" and self.ownership.mode == "zone":
            return with_zone_tag(resource, self.ownership.zone)
        return resource

    def created_with(self, resource: Resource) -> list[Resource]:
        """What is created in the same transaction as `resource` when it is new: a Mesh's default policies
        (Kuma's), so a crash right after the create cannot leave the mesh without them."""
        if resource.type.name == "Mesh" and self.default_policies:
            return default_policies(resource)
        return []

    async def before_write(self, resource: Resource) -> list[InvalidParameter]:
        if resource.type.name == "Mesh":
            return await self.ca.validate_backend(resource)
        if resource.type.name == "Dataplane":
            refusal = await dataplane_membership_refusal(self.store, resource)
            return [InvalidParameter("networking", refusal)] if refusal else []
        return []

    async def after_write(self, resource: Resource) -> None:
        """A mesh's builtin CAs exist as soon as the mesh does (Kuma's EnsureBackends), so the first proxy
        doesn't wait for key generation and the CA secrets are visible to operators."""
        if resource.type.name == "Mesh":
            await self.ca.ensure_backends(resource)

    async def before_delete(self, rtype: ResourceType, name: str, mesh: str) -> str | None:
        """A reason to refuse the delete, or None."""
        if rtype.name != "Secret":
            return None
        mesh_type = REGISTRY.by_name("Mesh")
        assert mesh_type is not None
        try:
            owner = await self.store.get(mesh_type, mesh)
        except NotFound:
            return None
        if name in used_secrets(owner):
            return (f"secret {name!r} is used by a CA backend of mesh {mesh!r}: remove it from the mesh's mtls "
                    "backends first")
        return None
