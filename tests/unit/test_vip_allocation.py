"""VIP allocation: plan() rules, the allocator against a store, and two allocators racing."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlplane.dns.allocator import VipAllocator, plan
from controlplane.dns.ranges import VipRange, VipRangeError, check_ranges
from controlplane.dns.vips import VipMap, load_vip_map
from controlplane.resources import Resource, from_wire
from controlplane.resources.base import ResourceType
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.mesh import MESH
from controlplane.resources.vip import VIP_ALLOCATION, VIP_ALLOCATION_NAME, VipAllocationSpec
from controlplane.store.memory import MemoryStore

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
GRACE = timedelta(minutes=10)
PRIMARY = VipRange("127.240.0.0/12")
TPROXY = VipRange("240.0.0.0/4", "KUMA_DNS_SERVER_TRANSPARENT_PROXY_CIDR")


def vips(spec: VipAllocationSpec, mesh: str) -> dict[str, str]:
    alloc = spec.meshes.get(mesh)
    return {s: e.ip for s, e in alloc.services.items()} if alloc else {}


def all_ips(spec: VipAllocationSpec) -> list[str]:
    return [e.ip for a in spec.meshes.values() for e in a.services.values()] + \
        [e.tproxy_ip for a in spec.meshes.values() for e in a.services.values() if e.tproxy_ip]


def step(spec: VipAllocationSpec, desired: dict[str, set[str]], now: datetime = T0, *,
         primary: VipRange = PRIMARY, tproxy: VipRange | None = TPROXY) -> VipAllocationSpec:
    return plan(spec, desired, primary, tproxy, now, GRACE).spec


# --- ranges --------------------------------------------------------------------------------------------------


def test_ranges_skip_network_and_broadcast() -> None:
    r = VipRange("240.0.0.0/4")
    assert ipaddress.IPv4Address(r.first) == ipaddress.IPv4Address("240.0.0.1")
    assert ipaddress.IPv4Address(r.last) == ipaddress.IPv4Address("255.255.255.254")  # never the broadcast
    small = VipRange("10.0.0.0/30")
    assert small.size == 2
    assert small.next_free(set(), None) == small.first
    assert small.next_free({small.first}, None) == small.last
    assert small.next_free({small.first, small.last}, None) is None
    # After the cursor, wrapping around.
    assert small.next_free(set(), small.last) == small.first


def test_range_settings_that_cannot_work() -> None:
    with pytest.raises(VipRangeError, match="IPv4"):
        VipRange("fd00::/64")
    with pytest.raises(VipRangeError, match="not a CIDR"):
        VipRange("nonsense")
    with pytest.raises(VipRangeError, match="overlap"):
        check_ranges(VipRange("240.0.0.0/4"), VipRange("250.0.0.0/8", "KUMA_DNS_SERVER_TRANSPARENT_PROXY_CIDR"))


# --- plan() --------------------------------------------------------------------------------------------------


def test_one_vip_per_service_per_mesh_unique_across_meshes() -> None:
    spec = step(VipAllocationSpec(), {"default": {"backend", "web"}, "other": {"backend"}})
    assert vips(spec, "default") == {"backend": "127.240.0.1", "web": "127.240.0.2"}
    assert vips(spec, "other") == {"backend": "127.240.0.3"}
    assert spec.meshes["default"].services["backend"].tproxy_ip == "240.0.0.1"
    assert len(set(all_ips(spec))) == len(all_ips(spec)) == 6


def test_stable_allocation_changes_nothing() -> None:
    desired = {"default": {"backend", "web"}}
    spec = step(VipAllocationSpec(), desired)
    p = plan(spec, desired, PRIMARY, TPROXY, T0 + timedelta(hours=5), GRACE)
    assert not p.changed and p.spec == spec
    # Adding a service leaves the others where they are.
    more = step(spec, {"default": {"backend", "web", "aaa-first-in-order"}})
    assert vips(more, "default")["backend"] == vips(spec, "default")["backend"]
    assert vips(more, "default")["web"] == vips(spec, "default")["web"]
    assert vips(more, "default")["aaa-first-in-order"] == "127.240.0.3"


def test_gone_service_is_reserved_for_the_grace_period_then_released() -> None:
    spec = step(VipAllocationSpec(), {"default": {"backend", "web"}})
    web_ip = vips(spec, "default")["web"]
    gone = step(spec, {"default": {"backend"}}, T0 + timedelta(minutes=1))
    entry = gone.meshes["default"].services["web"]
    assert entry.gone_since is not None and entry.ip == web_ip
    # Not served while gone...
    assert "web" not in VipMap.from_spec(gone, "mesh").mesh("default").vips
    # ...and not handed to anyone else while reserved.
    crowded = step(gone, {"default": {"backend", "new"}}, T0 + timedelta(minutes=2))
    assert vips(crowded, "default")["new"] != web_ip
    # Back within the grace period: the same VIP.
    back = step(crowded, {"default": {"backend", "new", "web"}}, T0 + timedelta(minutes=10))
    assert vips(back, "default")["web"] == web_ip
    assert back.meshes["default"].services["web"].gone_since is None
    # Gone for longer than the grace period: released.
    p = plan(back, {"default": {"backend", "new"}}, PRIMARY, TPROXY, T0 + timedelta(minutes=11), GRACE)
    assert p.next_release == T0 + timedelta(minutes=21)
    still = step(p.spec, {"default": {"backend", "new"}}, T0 + timedelta(minutes=20, seconds=59))
    assert "web" in still.meshes["default"].services
    p = plan(still, {"default": {"backend", "new"}}, PRIMARY, TPROXY, T0 + timedelta(minutes=21), GRACE)
    assert "web" not in p.spec.meshes["default"].services
    assert p.released == [("default", "web", web_ip)]


def test_released_vip_is_the_last_one_handed_out_again() -> None:
    rng = VipRange("10.0.0.0/29")  # 6 usable
    spec = step(VipAllocationSpec(), {"m": {"a", "b"}}, primary=rng, tproxy=None)
    a_ip = vips(spec, "m")["a"]
    spec = step(spec, {"m": {"b"}}, primary=rng, tproxy=None)
    spec = step(spec, {"m": {"b"}}, T0 + GRACE, primary=rng, tproxy=None)  # released
    assert "a" not in spec.meshes["m"].services
    order = []
    for name in ("c", "d", "e", "f", "g"):
        spec = step(spec, {"m": {"b", *order, name}}, T0 + GRACE, primary=rng, tproxy=None)
        order.append(name)
    handed = [vips(spec, "m")[n] for n in order]
    assert handed[-1] == a_ip and a_ip not in handed[:-1]


def test_exhausted_range_allocates_nothing_half_and_says_why() -> None:
    tiny = VipRange("10.0.0.0/30")  # 2 usable
    p = plan(VipAllocationSpec(), {"m": {"a", "b", "c"}}, tiny, TPROXY, T0, GRACE)
    assert sorted(vips(p.spec, "m")) == ["a", "b"]
    assert set(p.unallocated) == {"m"} and set(p.unallocated["m"]) == {"c"}
    assert "10.0.0.0/30" in p.unallocated["m"]["c"] and "exhausted" in p.unallocated["m"]["c"]
    # No transparent-proxy address was taken for the service without a primary one.
    assert sorted(e.tproxy_ip or "" for e in p.spec.meshes["m"].services.values()) == ["240.0.0.1", "240.0.0.2"]
    assert p.spec.cursors[TPROXY.cidr] == "240.0.0.2"
    # The other way round: the transparent-proxy range full, the primary one not.
    p2 = plan(VipAllocationSpec(), {"m": {"a", "b", "c"}}, PRIMARY, VipRange("10.0.0.0/30", "T"), T0, GRACE)
    assert sorted(vips(p2.spec, "m")) == ["a", "b"] and p2.spec.cursors[PRIMARY.cidr] == "127.240.0.2"
    # Once an address frees up (after the grace period), the waiting service gets it.
    p3 = plan(p.spec, {"m": {"b", "c"}}, tiny, TPROXY, T0, GRACE)
    assert "c" in p3.unallocated["m"]
    p4 = plan(p3.spec, {"m": {"b", "c"}}, tiny, TPROXY, T0 + GRACE, GRACE)
    assert vips(p4.spec, "m")["c"] == vips(p.spec, "m")["a"] and not p4.unallocated
    # The per-mesh map says which services have no VIP and why.
    served = VipMap.from_spec(p.spec, "mesh").mesh("m")
    assert served.unallocated == {"c": p.unallocated["m"]["c"]}


def test_changed_ranges_reallocate_and_switch_off() -> None:
    spec = step(VipAllocationSpec(), {"m": {"a"}})
    moved = step(spec, {"m": {"a"}}, primary=VipRange("127.100.0.0/16"))
    assert vips(moved, "m")["a"] == "127.100.0.1"
    assert moved.meshes["m"].services["a"].tproxy_ip == "240.0.0.1"  # unchanged
    off = step(moved, {"m": {"a"}}, primary=VipRange("127.100.0.0/16"), tproxy=None)
    assert off.meshes["m"].services["a"].tproxy_ip is None and vips(off, "m")["a"] == "127.100.0.1"


def test_duplicates_in_a_stored_document_are_healed() -> None:
    spec = step(VipAllocationSpec(), {"m": {"a", "b"}})
    doc = spec.model_dump(by_alias=True)
    doc["meshes"]["m"]["services"]["b"]["ip"] = doc["meshes"]["m"]["services"]["a"]["ip"]
    broken = VipAllocationSpec.model_validate(doc)
    healed = step(broken, {"m": {"a", "b"}})
    assert vips(healed, "m")["a"] == vips(spec, "m")["a"]
    assert vips(healed, "m")["b"] not in (vips(spec, "m")["a"],)
    assert len(set(all_ips(healed))) == 4


# --- the allocator against a store ---------------------------------------------------------------------------


def dataplane(name: str, *services: str, mesh: str = "default") -> Resource:
    return from_wire({"type": "Dataplane", "mesh": mesh, "name": name, "networking": {
        "address": "10.0.0.1",
        "inbound": [{"port": 8000 + i, "tags": {"kuma.io/service": s}} for i, s in enumerate(services)]}})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def store() -> Any:
    s = MemoryStore()
    await s.start()
    await s.create(from_wire({"type": "Mesh", "name": "default"}))
    yield s
    await s.close()


async def test_allocator_follows_dataplanes_ingresses_and_meshes(store: MemoryStore) -> None:
    clock = Clock()
    alloc = VipAllocator(store, PRIMARY, TPROXY, grace=GRACE, clock=clock)
    await store.create(dataplane("dp-1", "backend", "web"))
    await store.create(from_wire({"type": "ZoneIngress", "name": "zi-east", "networking": {
        "address": "10.0.0.9", "port": 10001},
        "availableServices": [{"mesh": "default", "tags": {"kuma.io/service": "remote"}},
                              {"mesh": "nomesh", "tags": {"kuma.io/service": "ignored"}}]}))
    await alloc.reconcile()
    m = (await load_vip_map(store)).mesh("default")
    assert sorted(m.vips) == ["backend", "remote", "web"]
    assert m.names["backend.mesh"] == "backend"
    # Idempotent: a second pass writes nothing.
    before = (await store.get(VIP_ALLOCATION, VIP_ALLOCATION_NAME)).meta.version
    await alloc.reconcile()
    assert (await store.get(VIP_ALLOCATION, VIP_ALLOCATION_NAME)).meta.version == before
    # A dataplane gone: its services leave the map, their VIPs are released after the grace period.
    await store.delete(DATAPLANE, "dp-1", "default")
    await alloc.reconcile()
    assert sorted((await load_vip_map(store)).mesh("default").vips) == ["remote"]
    clock.now += GRACE
    p = await alloc.reconcile()
    assert sorted(s for _, s, _ in p.released) == ["backend", "web"]
    # A mesh deleted: its services are gone too.
    await store.delete(MESH, "default")
    await alloc.reconcile()
    assert (await load_vip_map(store)).mesh("default").vips == {}


async def test_a_resource_that_cannot_be_read_does_not_stop_allocation(
        store: MemoryStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from controlplane.dns import allocator as allocator_module

    real = allocator_module._dp_services

    def broken_for_dp_2(dp: Resource) -> frozenset[str]:
        if dp.meta.name == "dp-2":
            raise ValueError("a Dataplane stored by an older version")
        return real(dp)

    monkeypatch.setattr(allocator_module, "_dp_services", broken_for_dp_2)
    alloc = VipAllocator(store, PRIMARY, TPROXY, grace=GRACE, clock=Clock())
    await store.create(dataplane("dp-1", "backend"))
    await store.create(dataplane("dp-2", "web"))
    with caplog.at_level(logging.ERROR, logger="kuma.dns"):
        await alloc.reconcile()
        await store.create(dataplane("dp-3", "api"))
        await alloc.reconcile()
    assert sorted((await load_vip_map(store)).mesh("default").vips) == ["api", "backend"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].resource == "dp-2" and "older version" in errors[0].error


async def test_allocator_exhaustion_is_logged_once(store: MemoryStore, caplog: pytest.LogCaptureFixture) -> None:
    alloc = VipAllocator(store, VipRange("10.0.0.0/30"), None, grace=GRACE, clock=Clock())
    await store.create(dataplane("dp-1", "a", "b", "c"))
    with caplog.at_level(logging.ERROR, logger="kuma.dns"):
        await alloc.reconcile()
        await alloc.reconcile()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "'c'" in errors[0].getMessage() and "10.0.0.0/30" in errors[0].getMessage()
    stored = (await store.get(VIP_ALLOCATION, VIP_ALLOCATION_NAME)).spec
    assert isinstance(stored, VipAllocationSpec) and set(stored.unallocated["default"]) == {"c"}


async def test_allocator_component_reacts_to_changes_and_restarts_stably(store: MemoryStore) -> None:
    alloc = VipAllocator(store, PRIMARY, TPROXY, grace=GRACE, debounce=0.01)
    await alloc.start()
    try:
        await store.create(dataplane("dp-1", "backend"))
        for _ in range(200):
            m = (await load_vip_map(store)).mesh("default")
            if "backend" in m.vips:
                break
            await asyncio.sleep(0.01)
        assert m.vips == {"backend": "127.240.0.1"}
    finally:
        await alloc.stop()
    # Another allocator (a restarted or new leader) keeps what is stored.
    again = VipAllocator(store, PRIMARY, TPROXY, grace=GRACE)
    await store.create(dataplane("dp-2", "web"))
    await again.reconcile()
    assert (await load_vip_map(store)).mesh("default").vips == {"backend": "127.240.0.1", "web": "127.240.0.2"}


class RacyStore(MemoryStore):
    """Yields between a read and the caller's next step, so concurrent allocators interleave for real."""

    def __init__(self) -> None:
        super().__init__()
        self.conflicts = 0

    async def get(self, rtype: ResourceType, name: str, mesh: str = "") -> Resource:
        r = await super().get(rtype, name, mesh)
        await asyncio.sleep(0)
        return r

    async def update(self, resource: Resource) -> Resource:
        try:
            return await super().update(resource)
        except Exception:
            self.conflicts += 1
            raise

    async def create(self, resource: Resource) -> Resource:
        try:
            return await super().create(resource)
        except Exception:
            self.conflicts += 1
            raise


async def test_two_allocators_racing_never_hand_out_one_vip_twice() -> None:
    store = RacyStore()
    await store.start()
    for mesh in ("default", "other"):
        await store.create(from_wire({"type": "Mesh", "name": mesh}))
    a = VipAllocator(store, VipRange("127.240.0.0/24"), VipRange("240.0.0.0/24", "T"), grace=GRACE)
    b = VipAllocator(store, VipRange("127.240.0.0/24"), VipRange("240.0.0.0/24", "T"), grace=GRACE)
    for i in range(30):
        mesh = "default" if i % 2 else "other"
        await store.create(dataplane(f"dp-{i}", f"svc-{i}", f"shared-{i % 3}", mesh=mesh))
        await asyncio.gather(a.reconcile(), b.reconcile())
    assert store.conflicts > 0  # they did collide
    spec = (await store.get(VIP_ALLOCATION, VIP_ALLOCATION_NAME)).spec
    assert isinstance(spec, VipAllocationSpec)
    ips = all_ips(spec)
    assert len(ips) == len(set(ips))
    allocated = {(m, s) for m, alloc in spec.meshes.items() for s in alloc.services}
    expected = {("default" if i % 2 else "other", f"svc-{i}") for i in range(30)} | \
        {("default" if i % 2 else "other", f"shared-{i % 3}") for i in range(30)}
    assert allocated == expected
    await store.close()



# --- settings -------------------------------------------------------------------------------------------------


def test_settings_and_wiring() -> None:
    from controlplane.config import load
    from controlplane.dns import DnsServer, VipView, add_dns
    from controlplane.runtime import Runtime
    from controlplane.store.base import AlwaysLeader

    cfg = load(env={"KUMA_DNS_SERVER_TRANSPARENT_PROXY_CIDR": "", "KUMA_DNS_SERVER_TTL": "30",
                    "KUMA_DNS_SERVER_VIP_RELEASE_GRACE_PERIOD": "120", "KUMA_DNS_SERVER_INTERFACE": "127.0.0.1"})
    assert cfg.dns_server.transparent_proxy_cidr is None and cfg.dns_server.ttl == 30
    rt = Runtime(config=cfg, store=MemoryStore(), elector=AlwaysLeader())
    api = add_dns(rt)
    assert [type(c) for c in rt.components] == [VipView, DnsServer]
    assert [type(c) for c in rt.leader_components] == [VipAllocator]
    alloc = rt.leader_components[0]
    assert isinstance(alloc, VipAllocator) and alloc.tproxy is None and alloc.grace == timedelta(seconds=120)
    assert api.view is rt.components[0]
    for env, problem in (({"KUMA_DNS_SERVER_CIDR": "fd00::/64"}, "IPv4"),
                         ({"KUMA_DNS_SERVER_CIDR": "240.0.0.0/8"}, "overlap"),
                         ({"KUMA_DNS_SERVER_DOMAIN": "bad domain"}, "not a DNS name")):
        bad = Runtime(config=load(env=env), store=MemoryStore(), elector=AlwaysLeader())
        with pytest.raises(VipRangeError, match=problem):
            add_dns(bad)
