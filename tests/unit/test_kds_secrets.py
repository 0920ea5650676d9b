"""The mesh CA in multi-zone: which Secrets go to zones, and a zone never making the CA of a mesh global owns."""

from __future__ import annotations

import pytest

from controlplane.ca import CaManager
from controlplane.ca.errors import CaNotSynced
from controlplane.kds.types import ca_secrets
from controlplane.resources import from_wire
from controlplane.resources.base import Meta, Resource
from controlplane.resources.secret import SECRET, SecretSpec
from controlplane.store.base import ListQuery
from controlplane.store.memory import MemoryStore

MTLS = {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}


async def store_with_mesh(labels: dict[str, str] | None = None) -> tuple[MemoryStore, Resource]:
    store = MemoryStore()
    await store.start()
    mesh = await store.create(from_wire({"type": "Mesh", "name": "default", "mtls": MTLS, "labels": labels or {}}))
    return store, mesh


async def test_only_the_secrets_a_mesh_ca_uses_go_to_zones() -> None:
    glob, mesh = await store_with_mesh()
    await CaManager(glob).ensure_backends(mesh)
    await glob.create(Resource(SECRET, Meta(name="dataplane-token-signing-key-default-1", mesh="default"),
                               SecretSpec.of(b"private")))
    await glob.create(Resource(SECRET, Meta(name="my-app-password", mesh="default"), SecretSpec.of(b"x")))
    select = await ca_secrets(glob)
    sent = {r.meta.name for r in (await glob.list(SECRET, ListQuery())).items if select(r.meta)}
    assert sent == {"default.ca-builtin-cert-ca-1", "default.ca-builtin-key-ca-1"}


async def test_a_zone_waits_for_globals_ca_and_uses_it() -> None:
    glob, glob_mesh = await store_with_mesh()
    made = await CaManager(glob).get_ca(glob_mesh)
    assert made is not None
    zone, zone_mesh = await store_with_mesh({"kuma.io/origin": "global"})
    ca = CaManager(zone)
    ca.wait_for_global_ca = True
    with pytest.raises(CaNotSynced, match="has not arrived from the global control plane"):
        await ca.get_ca(zone_mesh)
    assert (await zone.list(SECRET, ListQuery())).items == []  # nothing made here
    for r in (await glob.list(SECRET, ListQuery())).items:  # what KDS delivers
        await zone.create(r.with_meta(labels={"kuma.io/origin": "global"}, version=0))
    got = await ca.get_ca(zone_mesh)
    assert got is not None and got.fingerprint == made.fingerprint


async def test_a_zone_still_makes_the_ca_of_its_own_mesh() -> None:
    zone, mesh = await store_with_mesh()  # a mesh from the zone's standalone days: no origin label
    ca = CaManager(zone)
    ca.wait_for_global_ca = True
    assert await ca.get_ca(mesh) is not None
