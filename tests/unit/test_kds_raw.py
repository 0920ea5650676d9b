"""The KDS sender's raw path (stored JSON straight into the wire message, `encode_raw` over `list_raw`) sends
byte for byte what the model path (`encode` of the resource read as a model) sends, for every resource type,
from every store that keeps JSON (memory dumps its models the same way)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.kds.codec import encode, encode_raw
from controlplane.kds.sync import Sender, SendType
from controlplane.kds.types import summarise_insight
from controlplane.kds.zone_insights import ZoneInsights
from controlplane.resources import Resource, from_wire, load_all
from controlplane.resources.insights import DATAPLANE_INSIGHT
from controlplane.resources.mesh import MESH
from controlplane.resources.zone import ZONE_INSIGHT
from controlplane.store.base import ListQuery, ResourceStore
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore
from tests.unit.test_kds_proto_specs import EXAMPLE_RESOURCES
from tests.unit.test_policy_plugins import VALID, load

REGISTRY = load_all()


async def _zone_insight() -> Resource:
    """A ZoneInsight as global's registry writes it."""
    store = MemoryStore()
    zi = ZoneInsights(store, "global-1", dict)
    zi.opened("zone-1", version="2.9.0", environment="universal")
    await zi.flush()
    return (await store.get(ZONE_INSIGHT, "zone-1")).with_meta(version=0)


def _examples() -> list[Resource]:
    """One or more of every type, uniquely named: the protobuf-spec examples, every policy example, the rest."""
    out = [*EXAMPLE_RESOURCES, *(load(path) for path in VALID),
           from_wire({"type": "Zone", "name": "zone-2", "enabled": False, "labels": {"team": "ops"}}),
           from_wire({"type": "MeshAccessLog", "name": "unicode", "mesh": "default", "spec": {  # not ASCII
               "targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
                   {"type": "File", "file": {"path": "/tmp/caf\u00e9.log", "format": {
                       "type": "Plain", "plain": "\u2603 %KUMA_MESH% \u00e9\U0001F600"}}}]}}]}}),
           from_wire({"type": "VipAllocation", "name": "vips", "spec": {
               "meshes": {"default": {"services": {
                   "backend": {"ip": "127.240.0.1", "tproxyIp": "240.0.0.1", "allocated": "2026-05-01T10:00:00Z"},
                   "old": {"ip": "127.240.0.2", "allocated": "2026-05-01T10:00:00Z",
                           "goneSince": "2026-05-02T10:00:00Z"}}}},
               "cursors": {"127.240.0.0/12": "127.240.0.2"}, "unallocated": {"other": {"web": "range exhausted"}}}})]
    return [r.with_meta(name=f"{r.meta.name}-{i}") for i, r in enumerate(out)]


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResourceStore]:
    s: ResourceStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "kuma.db")
    await s.start()
    examples = [*_examples(), (await _zone_insight()).with_meta(name="zone-1")]
    assert {r.type.name for r in examples} == {t.name for t in REGISTRY.all()}, "a type without an example"
    owned = {r.meta.name for r in examples if r.type is MESH}
    meshes = [from_wire({"type": "Mesh", "name": m}) for m in sorted({r.meta.mesh for r in examples} - {""} - owned)]
    await s.create_all([*(r for r in examples if r.type is MESH), *meshes,
                        *(r for r in examples if r.type is not MESH)])
    yield s
    await s.close()


def _bytes(w: object) -> bytes:
    return w.message.SerializeToString(deterministic=True)  # type: ignore[attr-defined,no-any-return]


async def test_raw_and_model_paths_send_the_same_bytes_for_every_type(store: ResourceStore) -> None:
    checked = 0
    for rtype in REGISTRY.all():
        models, raws = (await store.list(rtype, ListQuery())).items, (await store.list_raw(rtype, ListQuery())).items
        assert models and len(models) == len(raws), rtype.name
        for model, raw in zip(models, raws, strict=True):
            by_model, by_raw = encode(model), encode_raw(raw)
            assert (by_raw.key, by_raw.version) == (by_model.key, by_model.version), (rtype.name, model.meta.name)
            assert _bytes(by_raw) == _bytes(by_model), (rtype.name, model.meta.name)
            checked += 1
    assert checked > 60


async def test_a_senders_first_answer_is_the_model_paths_bytes(store: ResourceStore) -> None:
    """The Sender lists raw rows; what it sends is what encoding the listed models gives, the insight summary
    (a transform, sent from the model) included."""
    types = [SendType(t, transform=summarise_insight if t is DATAPLANE_INSIGHT else None) for t in REGISTRY.all()]
    sender = Sender(store, types, peer="zone 'zone-1'")
    for t in types:
        responses = await sender.handle(discovery_pb2.DeltaDiscoveryRequest(type_url=t.rtype.name,
                                                                            resource_names_subscribe=["*"]))
        sent = [res.SerializeToString(deterministic=True) for resp in responses for res in resp.resources]
        models = (await store.list(t.rtype, ListQuery())).items
        assert sent == [_bytes(t.encode(m)) for m in models], t.rtype.name
