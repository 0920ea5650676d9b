"""The KDS Delta sync engine between two real stores (memory and sqlite), with no transport in between."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.kds import kds_pb2
from controlplane.kds.codec import encode
from controlplane.kds.naming import zone_qualified_name
from controlplane.kds.sync import (
    INITIAL_MORE,
    FromGlobal,
    FromZone,
    Receiver,
    Sender,
    SendType,
    run_receiver,
    run_sender,
)
from controlplane.resources import from_wire, load_all
from controlplane.resources.base import REGISTRY, Resource, ResourceType
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.mesh import MESH
from controlplane.store.base import ListQuery, NotFound, ResourceStore
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore

load_all()
MESH_TIMEOUT = REGISTRY.by_name("MeshTimeout")
assert MESH_TIMEOUT is not None
Msg = discovery_pb2.DeltaDiscoveryResponse


def mesh(name: str = "default", labels: dict[str, str] | None = None) -> Resource:
    return from_wire({"type": "Mesh", "name": name, "labels": labels or {}})


def timeout(name: str, idle: str = "5s", mesh_: str = "default", labels: dict[str, str] | None = None) -> Resource:
    return from_wire({"type": "MeshTimeout", "name": name, "mesh": mesh_, "labels": labels or {},
                      "spec": {"targetRef": {"kind": "Mesh"},
                               "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": idle}}]}})


def dataplane(name: str, address: str = "10.0.0.1") -> Resource:
    return from_wire({"type": "Dataplane", "name": name, "mesh": "default",
                      "networking": {"address": address,
                                     "inbound": [{"port": 8080, "tags": {"kuma.io/service": "backend"}}]}})


@pytest.fixture(params=["memory", "sqlite"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[ResourceStore, ResourceStore]]:
    made: list[ResourceStore] = []
    for side in ("global", "zone"):
        s: ResourceStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / f"{side}.db")
        await s.start()
        made.append(s)
    yield made[0], made[1]
    for s in made:
        await s.close()


async def names(store: ResourceStore, rtype: ResourceType) -> dict[str, Resource]:
    return {r.meta.name: r for r in (await store.list(rtype, ListQuery())).items}


Req = discovery_pb2.DeltaDiscoveryRequest


async def exchange(sender: Sender, receiver: Receiver, responses: list[Msg]) -> list[Req]:
    """Deliver responses to the receiver and its answers back to the sender; returns the answers."""
    answers = []
    for resp in responses:
        ack = await receiver.apply(resp)
        answers.append(ack)
        assert await sender.handle(ack) == []
    return answers


async def connect(sender: Sender, receiver: Receiver) -> list[discovery_pb2.DeltaDiscoveryRequest]:
    answers = []
    for sub in await receiver.subscriptions():
        answers += await exchange(sender, receiver, await sender.handle(sub))
    return answers


def global_to_zone(glob: ResourceStore, zone: ResourceStore, *, max_bytes: int = 4 << 20,
                   restore_versions: bool = True) -> tuple[Sender, Receiver]:
    types = [MESH, MESH_TIMEOUT]
    sender = Sender(glob, [SendType(t) for t in types], peer="zone 'zone-1'", max_bytes=max_bytes)
    return sender, Receiver(zone, types, FromGlobal("zone-1"), node_id="zone-1", restore_versions=restore_versions)


async def test_a_restarted_zone_declares_what_it_holds_and_is_sent_only_what_changed(
        stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    await glob.create(mesh())
    for i in range(5):
        await glob.create(timeout(f"t{i}"))
    await connect(*global_to_zone(glob, zone))
    t1 = await glob.get(MESH_TIMEOUT, "t1", "default")
    await glob.update(timeout("t1", idle="9s").with_meta(version=t1.meta.version))
    # A new zone process: a new receiver on the same store, and global sees a new stream.
    sender, receiver = global_to_zone(glob, zone)
    subs = {s.type_url: s for s in await receiver.subscriptions()}
    assert set(subs["MeshTimeout"].initial_resource_versions) == {f"t{i}.default" for i in range(5)}
    first = await sender.handle(subs["MeshTimeout"])
    assert [r.name for resp in first for r in resp.resources] == ["t1.default"]  # only what changed
    await exchange(sender, receiver, first)
    assert (await zone.get(MESH_TIMEOUT, "t1", "default")).spec == timeout("t1", idle="9s").spec


async def test_global_resources_reach_the_zone_labelled_and_changes_and_deletions_follow(
        stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    await glob.create(mesh())
    await glob.create(timeout("t1"))
    await glob.create(timeout("t2"))
    sender, receiver = global_to_zone(glob, zone)
    answers = await connect(sender, receiver)
    assert all(not a.HasField("error_detail") for a in answers)
    got = await names(zone, MESH_TIMEOUT)
    assert set(got) == {"t1", "t2"} and got["t1"].meta.labels["kuma.io/origin"] == "global"
    assert (await zone.get(MESH, "default")).meta.labels["kuma.io/origin"] == "global"

    t1 = await glob.get(MESH_TIMEOUT, "t1", "default")
    await glob.update(timeout("t1", idle="9s").with_meta(version=t1.meta.version))
    await glob.delete(MESH_TIMEOUT, "t2", "default")
    await glob.create(timeout("t3"))
    changes = await sender.changed()
    assert len(changes) == 1 and sorted(r.name for r in changes[0].resources) == ["t1.default", "t3.default"]
    assert list(changes[0].removed_resources) == ["t2.default"]
    await exchange(sender, receiver, changes)
    got = await names(zone, MESH_TIMEOUT)
    assert set(got) == {"t1", "t3"}
    assert got["t1"].spec.to_wire()["to"][0]["default"] == {"idleTimeout": "9s"}
    assert await sender.changed() == []  # nothing new: nothing sent
    stats = sender.stats()["MeshTimeout"]
    assert stats.acked == stats.responses_sent == 2 and stats.nacked == 0


async def test_zone_resources_are_stored_on_global_zone_qualified_and_deletions_propagate(
        stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    for s in (glob, zone):
        await s.create(mesh())
    await zone.create(dataplane("backend-1"))
    await zone.create(dataplane("web-1.kuma-demo"))  # a Kubernetes zone's name.namespace round-trips
    sender = Sender(zone, [SendType(DATAPLANE)], peer="global")
    receiver = Receiver(glob, [DATAPLANE], FromZone("zone-1"), node_id="global")
    await connect(sender, receiver)
    got = await names(glob, DATAPLANE)
    qualified = zone_qualified_name("backend-1", "default", "zone-1")
    assert set(got) == {qualified, zone_qualified_name("web-1.kuma-demo", "default", "zone-1")}
    assert dict(got[qualified].meta.labels) == {"kuma.io/origin": "zone", "kuma.io/zone": "zone-1",
                                                "kuma.io/display-name": "backend-1"}
    # A restarted global declares the zone's resources with the versions the zone gives them: nothing re-sent.
    restarted = Receiver(glob, [DATAPLANE], FromZone("zone-1"), node_id="global")
    [sub] = await restarted.subscriptions()
    assert set(sub.initial_resource_versions) == {"backend-1.default", "web-1.kuma-demo.default"}
    again = Sender(zone, [SendType(DATAPLANE)], peer="global")
    assert [r for resp in await again.handle(sub) for r in resp.resources] == []
    await zone.delete(DATAPLANE, "backend-1", "default")
    await exchange(sender, receiver, await sender.changed(["Dataplane"]))
    assert set(await names(glob, DATAPLANE)) == {zone_qualified_name("web-1.kuma-demo", "default", "zone-1")}


async def test_a_big_first_answer_spans_responses_and_full_replacement_waits_for_its_end(
        stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    for s in (glob, zone):
        await s.create(mesh())
    for i in range(30):
        await glob.create(timeout(f"t{i:02d}"))
    # What the zone holds from an earlier life of global that global no longer has: the first answer removes it.
    await zone.create(timeout("stale", labels={"kuma.io/origin": "global"}))
    await zone.create(timeout("local"))  # the zone's own: never touched
    one = encode(await glob.get(MESH_TIMEOUT, "t00", "default")).message.ByteSize()
    # A receiver that declares only what it received in this process: the stale one is not declared.
    sender, receiver = global_to_zone(glob, zone, max_bytes=one * 5 + 600, restore_versions=False)
    subs = {s.type_url: s for s in await receiver.subscriptions()}
    await exchange(sender, receiver, await sender.handle(subs["Mesh"]))
    first = await sender.handle(subs["MeshTimeout"])
    assert len(first) > 3 and [r.system_version_info for r in first] == [INITIAL_MORE] * (len(first) - 1) + [""]
    for i, resp in enumerate(first):
        await exchange(sender, receiver, [resp])
        held = set(await names(zone, MESH_TIMEOUT))
        assert ("stale" in held) == (i < len(first) - 1)  # deleted only when the first answer is whole
    assert held == {f"t{i:02d}" for i in range(30)} | {"local"}


async def test_reconnect_resends_only_what_changed_and_a_restarted_receiver_gets_everything(
        stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    await glob.create(mesh())
    for i in range(5):
        await glob.create(timeout(f"t{i}"))
    sender, receiver = global_to_zone(glob, zone)
    await connect(sender, receiver)
    # the stream drops; meanwhile global changes one, deletes one, adds one
    t0 = await glob.get(MESH_TIMEOUT, "t0", "default")
    await glob.update(timeout("t0", idle="7s").with_meta(version=t0.meta.version))
    await glob.delete(MESH_TIMEOUT, "t1", "default")
    await glob.create(timeout("t9"))
    fresh, _ = global_to_zone(glob, zone)  # a new stream: a new sender, the same zone-side receiver
    subs = {s.type_url: s for s in await receiver.subscriptions()}
    assert set(subs["MeshTimeout"].initial_resource_versions) == {f"t{i}.default" for i in range(5)}
    first = await fresh.handle(subs["MeshTimeout"])
    assert sorted(r.name for r in first[0].resources) == ["t0.default", "t9.default"]
    assert list(first[0].removed_resources) == ["t1.default"]
    await exchange(fresh, receiver, first)
    assert set(await names(zone, MESH_TIMEOUT)) == {"t0", "t2", "t3", "t4", "t9"}

    # A zone control plane restart forgets what it was sent: it gets everything, and the full replacement
    # removes what global deleted while the zone was down.
    await glob.delete(MESH_TIMEOUT, "t2", "default")
    again, restarted = global_to_zone(glob, zone)
    before = {r.meta.name: r.meta.version for r in (await names(zone, MESH_TIMEOUT)).values()}
    await connect(again, restarted)
    after = {r.meta.name: r.meta.version for r in (await names(zone, MESH_TIMEOUT)).values()}
    assert set(after) == {"t0", "t3", "t4", "t9"}
    assert all(after[n] == before[n] for n in after)  # unchanged content is not rewritten


async def test_a_bad_resource_is_nacked_with_its_reason_while_the_rest_applies(
        stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    for s in (glob, zone):
        await s.create(mesh())
    await zone.create(timeout("mine"))  # left from the zone's standalone days: global's of that name replaces it
    sender, receiver = global_to_zone(glob, zone)
    await connect(sender, receiver)
    good = encode(timeout("good")).message
    clash = encode(timeout("mine", idle="1s")).message
    bad = discovery_pb2.Resource()
    bad.CopyFrom(encode(timeout("bad")).message)
    kr = kds_pb2.KumaResource.FromString(bad.resource.value)
    kr.spec.value = json.dumps({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Nope"},
                                                                       "default": {"idleTimeout": "1s"}}]}).encode()
    bad.resource.value = kr.SerializeToString()
    resp = Msg(type_url="MeshTimeout", nonce="n1", resources=[bad, good, clash])
    nack = await receiver.apply(resp)
    assert nack.response_nonce == "n1" and nack.HasField("error_detail")
    message = nack.error_detail.message
    assert "MeshTimeout 'bad.default'" in message and "spec.to[0].targetRef.kind" in message
    assert "mine" not in message
    held = await names(zone, MESH_TIMEOUT)
    assert set(held) == {"good", "mine"} and held["mine"].spec == timeout("mine", idle="1s").spec
    assert held["mine"].meta.labels["kuma.io/origin"] == "global"
    assert receiver.stats()["MeshTimeout"].rejected == 1


async def policy_before_its_mesh(glob: ResourceStore, zone: ResourceStore
                                 ) -> tuple[Sender, Receiver, dict[str, Req], list[Req]]:
    """Global has a mesh and a policy in it; the zone is answered MeshTimeout before Mesh, so it NACKs the
    policy (its mesh does not exist there yet). Returns the pair, the zone's subscriptions and its answers."""
    await glob.create(mesh())
    await glob.create(timeout("t1"))
    sender, receiver = global_to_zone(glob, zone)
    subs = {s.type_url: s for s in await receiver.subscriptions()}
    answers = await exchange(sender, receiver, await sender.handle(subs["MeshTimeout"]))
    return sender, receiver, subs, answers


async def test_a_nack_is_recorded_and_the_same_version_is_not_resent(
        stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    sender, receiver, subs, answers = await policy_before_its_mesh(glob, zone)
    assert answers[0].HasField("error_detail") and "mesh 'default' does not exist here" in \
        answers[0].error_detail.message
    stats = sender.stats()["MeshTimeout"]
    assert stats.nacked == 1 and "mesh 'default'" in stats.last_nack
    assert await sender.changed(["MeshTimeout"]) == []  # not re-sent in a loop
    await exchange(sender, receiver, await sender.handle(subs["Mesh"]))
    t1 = await glob.get(MESH_TIMEOUT, "t1", "default")
    await glob.update(timeout("t1", idle="8s").with_meta(version=t1.meta.version))
    await exchange(sender, receiver, await sender.changed(["MeshTimeout"]))
    assert set(await names(zone, MESH_TIMEOUT)) == {"t1"}  # the change after the mesh arrived applies


async def test_rejected_resources_are_resent_after_a_backoff_without_changing(
        stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    sender, receiver, subs, answers = await policy_before_its_mesh(glob, zone)
    assert answers[0].HasField("error_detail") and sender.retry_scheduled.is_set()
    due = sender.next_retry()
    assert due is not None
    assert await sender.retry_rejected(now=due - 1) == []  # not before the back-off
    await exchange(sender, receiver, await sender.handle(subs["Mesh"]))
    # Nothing changed on global, yet the re-send after the back-off now applies.
    await exchange(sender, receiver, await sender.retry_rejected(now=due))
    assert set(await names(zone, MESH_TIMEOUT)) == {"t1"}
    assert sender.next_retry() is None and sender.stats()["MeshTimeout"].acked == 1


async def test_unknown_types_are_refused_by_name(stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    _, receiver = global_to_zone(glob, zone)
    nack = await receiver.apply(Msg(type_url="Dataplane", nonce="1"))
    assert "type 'Dataplane' is not synced from global here" in nack.error_detail.message


async def test_run_loops_sync_store_changes_over_queues(stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    await glob.create(mesh())
    await glob.create(timeout("t1"))
    sender, receiver = global_to_zone(glob, zone)
    to_global: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
    to_zone: asyncio.Queue[Msg | None] = asyncio.Queue()

    async def drain(q: asyncio.Queue) -> AsyncIterator:  # type: ignore[type-arg]
        while (item := await q.get()) is not None:
            yield item

    async def until(pred: Callable[[dict[str, Resource]], bool]) -> None:
        async with zone.watch() as events:
            while not pred(await names(zone, MESH_TIMEOUT)):
                await asyncio.wait_for(events.get(), timeout=10)

    tasks = [asyncio.create_task(run_sender(sender, drain(to_global), to_zone.put)),
             asyncio.create_task(run_receiver(receiver, drain(to_zone), to_global.put))]
    try:
        await until(lambda held: "t1" in held)
        await glob.create(timeout("t2"))
        await glob.delete(MESH_TIMEOUT, "t1", "default")
        await until(lambda held: set(held) == {"t2"})
        with pytest.raises(NotFound):
            await zone.get(MESH_TIMEOUT, "t1", "default")
    finally:
        await to_global.put(None)
        await to_zone.put(None)
        await asyncio.gather(*tasks)
    assert sender.stats()["MeshTimeout"].acked >= 2


async def test_a_reconnect_declares_only_what_the_store_still_holds(
        stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    await glob.create(mesh())
    await glob.create(timeout("t1"))
    sender, receiver = global_to_zone(glob, zone)
    await connect(sender, receiver)
    await zone.delete(MESH, "default")  # gone on the zone with everything in it, behind the receiver's back
    fresh, _ = global_to_zone(glob, zone)
    subs = {s.type_url: s for s in await receiver.subscriptions()}
    assert not subs["Mesh"].initial_resource_versions and not subs["MeshTimeout"].initial_resource_versions
    for type_url in ("Mesh", "MeshTimeout"):
        await exchange(fresh, receiver, await fresh.handle(subs[type_url]))
    assert set(await names(zone, MESH_TIMEOUT)) == {"t1"} and set(await names(zone, MESH)) == {"default"}


async def test_a_nack_of_many_resources_stays_small(stores: tuple[ResourceStore, ResourceStore]) -> None:
    glob, zone = stores
    _, receiver = global_to_zone(glob, zone)
    await receiver.subscriptions()
    orphans = [encode(timeout(f"t{i}", mesh_="nowhere")).message for i in range(100)]  # no such mesh here
    nack = await receiver.apply(Msg(type_url="MeshTimeout", nonce="1", resources=orphans))
    message = nack.error_detail.message
    assert message.count("mesh 'nowhere' does not exist here") == 20 and message.endswith("; and 80 more")
    assert receiver.stats()["MeshTimeout"].rejected == 100


async def test_a_resource_sent_again_unchanged_is_not_validated_again_unless_the_copy_here_differs(
        stores: tuple[ResourceStore, ResourceStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """What a NACK's back-off re-sends includes the resources that were accepted: the receiver compares content
    versions and skips decoding them, but still restores a copy that changed or went away here."""
    import controlplane.kds.sync as sync_module

    glob, zone = stores
    await glob.create(mesh())
    for name in ("t1", "t2", "t3"):
        await glob.create(timeout(name))
    sender, receiver = global_to_zone(glob, zone)
    await connect(sender, receiver)
    decoded: list[str] = []
    real_decode = sync_module.decode

    def counting_decode(rtype: ResourceType, res: discovery_pb2.Resource) -> Resource:
        decoded.append(res.name)
        return real_decode(rtype, res)
    monkeypatch.setattr(sync_module, "decode", counting_decode)

    again = [encode(await glob.get(MESH_TIMEOUT, n, "default")).message for n in ("t1", "t2", "t3")]
    before = {n: r.meta.version for n, r in (await names(zone, MESH_TIMEOUT)).items()}
    ack = await receiver.apply(Msg(type_url="MeshTimeout", nonce="again-1", resources=again))
    assert not ack.HasField("error_detail") and decoded == []
    assert {n: r.meta.version for n, r in (await names(zone, MESH_TIMEOUT)).items()} == before  # nothing written

    # Here, t2 was changed behind KDS's back and t3 went away: both are stored again from what global sent.
    t2 = await zone.get(MESH_TIMEOUT, "t2", "default")
    await zone.update(timeout("t2", idle="1s", labels=dict(t2.meta.labels)).with_meta(version=t2.meta.version))
    await zone.delete(MESH_TIMEOUT, "t3", "default")
    ack = await receiver.apply(Msg(type_url="MeshTimeout", nonce="again-2", resources=again))
    assert not ack.HasField("error_detail") and decoded == ["t2.default", "t3.default"]
    held = await names(zone, MESH_TIMEOUT)
    assert held["t2"].spec == timeout("t2").spec and held["t3"].spec == timeout("t3").spec


async def test_a_response_is_created_chunk_by_chunk_and_a_bad_resource_in_any_chunk_is_nacked_alone(
        stores: tuple[ResourceStore, ResourceStore], monkeypatch: pytest.MonkeyPatch) -> None:
    import controlplane.kds.sync as sync_module

    monkeypatch.setattr(sync_module, "FRESH_CHUNK", 2)
    glob, zone = stores
    for s in (glob, zone):
        await s.create(mesh())
    sender, receiver = global_to_zone(glob, zone)
    await connect(sender, receiver)
    good = [encode(timeout(f"t{i}", idle=f"{i + 1}s")).message for i in range(7)]
    bad = discovery_pb2.Resource()
    bad.CopyFrom(encode(timeout("bad")).message)
    kr = kds_pb2.KumaResource.FromString(bad.resource.value)
    kr.spec.value = b'{"targetRef": {"kind": "Nope"}}'
    bad.resource.value = kr.SerializeToString()
    nack = await receiver.apply(Msg(type_url="MeshTimeout", nonce="n1", resources=[*good[:3], bad, *good[3:]]))
    assert nack.HasField("error_detail") and "MeshTimeout 'bad.default'" in nack.error_detail.message
    assert "t0" not in nack.error_detail.message and receiver.stats()["MeshTimeout"].rejected == 1
    held = await names(zone, MESH_TIMEOUT)
    assert set(held) == {f"t{i}" for i in range(7)}
    assert held["t6"].spec == timeout("t6", idle="7s").spec and held["t6"].meta.labels["kuma.io/origin"] == "global"
    # Every created one is known as the peer's: its removal deletes it here.
    ack = await receiver.apply(Msg(type_url="MeshTimeout", nonce="n2", removed_resources=["t0.default", "t5.default"]))
    assert not ack.HasField("error_detail")
    assert set(await names(zone, MESH_TIMEOUT)) == {"t1", "t2", "t3", "t4", "t6"}
