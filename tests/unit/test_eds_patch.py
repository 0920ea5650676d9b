"""The endpoint-only patch path (controlplane/xds/generate/eds_patch.py) on the real reconciler, store, CA and
cache: a rich mesh (every policy example, mTLS, subsets by version and by zone, other zones' ingresses) goes
through a series of changes; after every pass, each connected proxy's snapshot equals, resource by resource
(serialised bytes, hashes, references) and version by version, the one a full generation gives for the same
topology and identity, whichever path built it; endpoint-only changes took the patch path, every other kind
of change the full one; and the memo holds exactly what fresh full builds of the current configs use."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlplane.ca import CaManager
from controlplane.dns.vips import MeshVips, VipMap, VipView
from controlplane.resources import Resource, from_wire
from controlplane.resources.zone import ZONE_INGRESS
from controlplane.store.memory import MemoryStore
from controlplane.supervise import Supervisor
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.generate import eds_patch
from controlplane.xds.generate.context import Identity, ProxyContext
from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.generate.outbound import is_cross_zone
from controlplane.xds.generate.proxy import generate_snapshot
from controlplane.xds.reconciler import Reconciler
from controlplane.xds.resources import CLUSTER, ENDPOINT, TYPE_ORDER, Ref, XdsResource
from controlplane.xds.snapshot import InconsistentSnapshot, Snapshot
from tests.unit.test_crosszone_xds import ingress, offer
from tests.unit.test_policy_plugins import BACKENDS, OUTBOUNDS, VALID, fixture_dataplanes, load
from tests.unit.xds_fixtures import mesh

MESH = "default"
ZONE = "zone-1"
DATAPLANE = fixture_dataplanes()[0].type


def dp(name: str, service: str, *, port: int, protocol: str = "http", tags: dict[str, str] | None = None,
       address: str = "127.0.0.1", service_port: int | None = None, healthy: bool = True,
       outbounds: dict[str, int] | None = None) -> Resource:
    inbound: dict[str, Any] = {"port": port, "servicePort": service_port or port + 1000,
                               "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol, **(tags or {})}}
    if not healthy:
        inbound["health"] = {"ready": False}
    return from_wire({"type": "Dataplane", "mesh": MESH, "name": name, "networking": {
        "address": address, "inbound": [inbound],
        "outbound": [{"port": p, "tags": {"kuma.io/service": s}} for s, p in (outbounds or {}).items()]}})


def zone2_ingress(backend_v1: int, batch: bool) -> Resource:
    offers = [offer("backend", backend_v1, version="v1"), offer("reports", 1)]
    if batch:
        offers.append(offer("batch", 2))
    return ingress("z2-a", "zone-2", offers)


def example_policies() -> list[Resource]:
    """Every policy example, the first of each (type, name) (several examples share a name)."""
    found: dict[tuple[str, str], Resource] = {}
    for path in VALID:
        policy = load(path)
        found.setdefault((policy.type.name, policy.meta.name), policy)
    return list(found.values())


# Every zone at one priority for backend, for frontend-2 only (MeshLoadBalancingStrategy: `one_priority`).
SPREAD = from_wire({"type": "MeshLoadBalancingStrategy", "mesh": MESH, "name": "spread-backend", "spec": {
    "targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "frontend", "version": "v1"}},
    "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
            "default": {"localityAwareness": {"disabled": True}}}]}})
# batch-caller sends batch traffic by zone: a subset per kuma.io/zone (ours, and zone-2's through its ingress).
BY_ZONE = from_wire({"type": "MeshTCPRoute", "mesh": MESH, "name": "batch-by-zone", "spec": {
    "targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "batch-caller"}},
    "to": [{"targetRef": {"kind": "MeshService", "name": "batch"}, "rules": [{"default": {"backendRefs": [
        {"kind": "MeshServiceSubset", "name": "batch", "tags": {"kuma.io/zone": zone}, "weight": 50}
        for zone in (ZONE, "zone-2")]}}]}]}})
POLICIES = [*example_policies(), SPREAD, BY_ZONE]

# frontend-2 owns its host's VIPs: outbound listeners on VIP:80 and VIP:<real port> of these services.
VIPS = {"backend": "240.0.0.1", "batch": "240.0.0.2", "cache": "240.0.0.3", "reports": "240.0.0.4"}
VIP_OWNER = "frontend-2"

# Callers besides the fixture's frontend-1 and cache-client-1: one calling a service that does not exist yet.
CALLERS = [
    dp("frontend-2", "frontend", port=10003, address="10.9.0.2", tags={"version": "v1"},
       outbounds={**OUTBOUNDS, "later": 20900}),
    dp("batch-caller", "batch-caller", port=10004, protocol="tcp", address="10.9.0.3",
       outbounds={"batch": 20001, "backend": 20002}),
]


@pytest.fixture
async def rig() -> AsyncIterator[tuple[MemoryStore, SnapshotCache, Reconciler]]:
    store = MemoryStore()
    await store.start()
    cache = SnapshotCache()
    vips = VipView(store)  # not started: the map below stands for the stored allocation
    vips.map = VipMap("mesh", {MESH: MeshVips.build(MESH, VIPS, {}, "mesh")})
    reconciler = Reconciler(store, cache, CaManager(store), debounce=0.001, zone=ZONE, vips=vips,
                            supervisor=Supervisor(backoff_min=0.05, backoff_max=0.2))
    await store.create(mesh(MESH, mtls="STRICT"))
    for policy in POLICIES:
        await store.create(policy)
    for resource in (*fixture_dataplanes(), *CALLERS):
        await store.create(resource)
        reconciler.proxy_connected(f"{MESH}.{resource.meta.name}", vip_listeners=resource.meta.name == VIP_OWNER)
    await store.create(zone2_ingress(2, batch=True))
    await reconciler.reconcile_once()
    yield store, cache, reconciler
    await reconciler.stop()
    await store.close()


def full_generation(reconciler: Reconciler, memo: ResourceMemo, node_id: str) -> Snapshot:
    topo = reconciler.topologies[MESH]
    name = node_id.split(".", 1)[1]
    cert = reconciler.identities.get((MESH, name))
    assert cert is not None
    identity = Identity(cert_pem=cert.cert_pem, key_pem=cert.key_pem, fingerprint=f"{cert.serial}")
    vips = VIPS if name == VIP_OWNER else None
    ctx = ProxyContext(topology=topo, dataplane=topo.dataplanes[name], identity=identity, memo=memo, vips=vips)
    with memo.for_proxy(node_id):
        return generate_snapshot(ctx)


def assert_same(got: Snapshot, want: Snapshot, where: str) -> None:
    for type_url in TYPE_ORDER:
        short = type_url.rsplit(".", 1)[-1]
        have, expected = got.of_type(type_url), want.of_type(type_url)
        assert sorted(have) == sorted(expected), f"{where}: {short} names"
        for name, r in expected.items():
            assert (have[name].body, have[name].hash, have[name].refs) == (r.body, r.hash, r.refs), \
                f"{where}: {short} {name!r} differs"
        assert got.version(type_url) == want.version(type_url), f"{where}: {short} version"
    assert not got.consistency_errors(), where


def check_every_proxy(cache: SnapshotCache, reconciler: Reconciler, where: str) -> None:
    fresh = ResourceMemo()
    for node_id in sorted(reconciler.connected):
        got = cache.get_snapshot(node_id)
        assert got is not None, f"{where}: {node_id} has no config"
        assert_same(got, full_generation(reconciler, fresh, node_id), f"{where}, {node_id}")
        assert reconciler.builds[node_id].snapshot is got
    memo = reconciler.memos[MESH]
    assert memo.keys() == fresh.keys(), f"{where}: the memo holds other entries than the configs use"
    assert len(memo) == memo.referenced()


class Mesh:
    """The changes of the series, each of one kind, on the store."""

    def __init__(self, store: MemoryStore, rnd: random.Random) -> None:
        self.store, self.rnd = store, rnd
        self.extras: dict[str, tuple[int, str, bool]] = {}  # name -> (BACKENDS index, address, healthy)
        self.backend_v1 = 2
        self.batch_offered = True
        self.counter = 0

    async def put(self, resource: Resource) -> None:
        try:
            current = await self.store.get(resource.type, resource.meta.name, resource.meta.mesh)
        except Exception:
            await self.store.create(resource)
        else:
            await self.store.update(resource.with_meta(version=current.meta.version))

    def _extra(self, name: str) -> Resource:
        i, address, healthy = self.extras[name]
        service, protocol, tags = BACKENDS[i]
        # The same inbound port and real port as the fixture's instance of the service: only the endpoint differs.
        return dp(name, service, port=10100 + i, service_port=11100 + i, protocol=protocol, tags=tags,
                  address=address, healthy=healthy)

    def _address(self) -> str:
        self.counter += 1
        return f"10.1.{self.counter // 200}.{self.counter % 200 + 1}"

    # --- endpoint-only changes (the patch path) ---

    async def add_instance(self) -> None:
        name = f"extra-{self.counter}"
        self.extras[name] = (self.rnd.randrange(len(BACKENDS)), self._address(), True)
        await self.put(self._extra(name))

    async def remove_instance(self) -> None:
        if not self.extras:
            return await self.add_instance()
        name = self.rnd.choice(sorted(self.extras))
        del self.extras[name]
        await self.store.delete(DATAPLANE, name, MESH)

    async def toggle_health(self) -> None:
        if not self.extras:
            return await self.add_instance()
        name = self.rnd.choice(sorted(self.extras))
        i, address, healthy = self.extras[name]
        self.extras[name] = (i, address, not healthy)
        await self.put(self._extra(name))

    async def move_instance(self) -> None:
        if not self.extras:
            return await self.add_instance()
        name = self.rnd.choice(sorted(self.extras))
        i, _, healthy = self.extras[name]
        self.extras[name] = (i, self._address(), healthy)
        await self.put(self._extra(name))

    async def remote_instances(self) -> None:
        self.backend_v1 = 1 + self.backend_v1 % 4  # other zones' instances of backend v1: 1-4, never none
        await self.put(zone2_ingress(self.backend_v1, self.batch_offered))

    # --- everything else (the full path) ---

    async def new_service(self) -> None:
        self.counter += 1
        await self.put(dp("later-1", "later", port=10500, address=self._address()))

    async def protocol_disagreement(self) -> None:
        self.counter += 1
        await self.put(dp(f"reports-tcp-{self.counter}", "reports", port=10104, service_port=11104,
                          protocol="tcp", address=self._address()))

    async def new_real_port(self) -> None:
        self.counter += 1
        await self.put(dp(f"cache-port-{self.counter}", "cache", port=10105, service_port=12000 + self.counter,
                          address=self._address()))

    async def cross_zone_flip(self) -> None:
        self.batch_offered = not self.batch_offered
        await self.put(zone2_ingress(self.backend_v1, self.batch_offered))

    async def own_dataplane(self) -> None:
        self.counter += 1
        await self.put(dp("batch-caller", "batch-caller", port=10004, protocol="tcp", address="10.9.0.3",
                          outbounds={"batch": 20001, "backend": 20002, "reports": 20100 + self.counter % 50}))

    async def recreated_in_one_pass(self) -> None:
        """Deleted and created again before the pass: version 1 both times, other content."""
        await self.store.delete(DATAPLANE, "batch-caller", MESH)
        self.counter += 1
        await self.store.create(dp("batch-caller", "batch-caller", port=10004, protocol="tcp", address="10.9.0.3",
                                   outbounds={"batch": 20001, "cache": 20200 + self.counter % 50}))

    async def policy(self) -> None:
        policy = self.rnd.choice(POLICIES)
        try:
            await self.store.get(policy.type, policy.meta.name, MESH)
        except Exception:
            await self.store.create(policy)
        else:
            await self.store.delete(policy.type, policy.meta.name, MESH)


ENDPOINT_ONLY = ("add_instance", "remove_instance", "toggle_health", "move_instance", "remote_instances")
OTHER = ("new_service", "protocol_disagreement", "cross_zone_flip", "own_dataplane", "recreated_in_one_pass",
         "policy")
VIP_OWNER_FULL = ("new_real_port",)  # the VIP owner's listeners change (full); for the others: endpoints only


async def test_patched_snapshots_equal_full_generation_and_only_endpoint_changes_are_patched(rig: Any) -> None:
    store, cache, reconciler = rig
    check_every_proxy(cache, reconciler, "start")
    # The fixture has what the patch must rebuild right: subsets (by version, by zone), assignments with every
    # zone at one priority, cross-zone services.
    assignments = [a for build in reconciler.builds.values() for a in build.assignments]
    assert any(a.tags for a in assignments) and any(a.one_priority for a in assignments)
    assert any(dict(a.tags).get("kuma.io/zone") for a in assignments)
    assert is_cross_zone(reconciler.topologies[MESH], "backend")
    rnd = random.Random(2026)
    changes = Mesh(store, rnd)
    kinds = [*ENDPOINT_ONLY * 4, *OTHER, *VIP_OWNER_FULL * 2]  # every kind, endpoint changes most often
    rnd.shuffle(kinds)
    patched_in_total = 0
    for step, kind in enumerate(kinds):
        await getattr(changes, kind)()
        reconciler.mesh_changed(MESH)
        await reconciler.reconcile_once()
        where = f"step {step} ({kind})"
        check_every_proxy(cache, reconciler, where)
        paths = set(reconciler.last_paths.values())
        if kind in ENDPOINT_ONLY:  # (none, for an instance of a service every caller's routes send elsewhere)
            assert paths <= {"patch"}, f"{where}: {reconciler.last_paths}"
            patched_in_total += len(reconciler.last_paths)
        elif kind in VIP_OWNER_FULL:
            owner = reconciler.last_paths.pop(f"{MESH}.{VIP_OWNER}")
            assert owner == "full" and set(reconciler.last_paths.values()) == {"patch"}, \
                f"{where}: {reconciler.last_paths}"
            patched_in_total += len(reconciler.last_paths)
        else:
            assert paths == {"full"}, f"{where}: {reconciler.last_paths}"
    assert reconciler.patched == patched_in_total >= len(ENDPOINT_ONLY) * 4


async def test_a_proxy_that_must_be_regenerated_anyway_takes_the_full_path(rig: Any) -> None:
    """In the same pass as an endpoint change of a service they all call: a proxy that reconnected, one whose
    last build failed, one whose certificate is due get the full generation (a patch would keep what must
    change, or start from a config that is not the current one); the others are patched."""
    store, cache, reconciler = rig
    changes = Mesh(store, random.Random(7))
    backend_callers = {f"{MESH}.{n}" for n in ("frontend-1", "frontend-2", "batch-caller")}
    assert all("backend" in reconciler.uses[n] for n in backend_callers)

    async def add_backend_instance() -> None:
        changes.counter += 1
        name = f"extra-{changes.counter}"
        changes.extras[name] = (0, changes._address(), True)  # BACKENDS[0]: backend v1
        await changes.put(changes._extra(name))
        reconciler.mesh_changed(MESH)

    await add_backend_instance()
    await reconciler.reconcile_once()
    assert {n: reconciler.last_paths[n] for n in backend_callers} == dict.fromkeys(backend_callers, "patch")

    reconciler.proxy_disconnected(f"{MESH}.frontend-1")
    reconciler.proxy_connected(f"{MESH}.frontend-1")
    reconciler.node_retries.failed(f"{MESH}.frontend-2", 1e18)  # as after a failed build (retry not due yet)
    reconciler.builds.pop(f"{MESH}.frontend-2")
    await add_backend_instance()
    await reconciler.reconcile_once()
    assert reconciler.last_paths == {f"{MESH}.frontend-1": "full", f"{MESH}.frontend-2": "full",
                                     f"{MESH}.batch-caller": "patch"}
    check_every_proxy(cache, reconciler, "after a reconnect and a failed build")

    key = (MESH, "batch-caller")
    entry = reconciler.identities._entries[key]
    before = entry.cert
    due = dataclasses.replace(before, renew_at=datetime.now(UTC) - timedelta(seconds=1))
    reconciler.identities._entries[key] = dataclasses.replace(entry, cert=due)
    await add_backend_instance()
    await reconciler.reconcile_once()
    assert reconciler.last_paths[f"{MESH}.batch-caller"] == "full"
    renewed = reconciler.identities.get(key)
    assert renewed is not None and renewed.serial != before.serial
    check_every_proxy(cache, reconciler, "after a renewal")


async def test_a_ca_less_mesh_is_patched_too_and_the_memo_drops_replaced_assignments() -> None:
    """mTLS off (no identity), one service moving 50 times: one shared new assignment per change, the old one
    released, the memo as small as after the first build."""
    store = MemoryStore()
    await store.start()
    cache = SnapshotCache()
    reconciler = Reconciler(store, cache, CaManager(store), debounce=0.001)
    try:
        await store.create(mesh(MESH))
        callers = [dp(f"web-{i}", "web", port=10000 + i, address=f"10.3.0.{i + 1}", outbounds={"backend": 20000})
                   for i in range(5)]
        for resource in (*callers, dp("backend-1", "backend", port=9000, address="10.4.0.1")):
            await store.create(resource)
        for c in callers:
            reconciler.proxy_connected(f"{MESH}.{c.meta.name}")
        await reconciler.reconcile_once()
        memo = reconciler.memos[MESH]
        size = len(memo)
        for i in range(50):
            current = await store.get(DATAPLANE, "backend-1", MESH)
            moved = dp("backend-1", "backend", port=9000, address=f"10.4.{i // 200}.{i % 200 + 2}")
            await store.update(moved.with_meta(version=current.meta.version))
            reconciler.mesh_changed(MESH)
            await reconciler.reconcile_once()
            assert set(reconciler.last_paths.values()) == {"patch"}
            assignments = {id(cache.get_snapshot(f"{MESH}.{c.meta.name}").of_type(ENDPOINT)["backend"])
                           for c in callers}
            assert len(assignments) == 1  # every caller holds the same new object
        assert len(memo) == memo.referenced() == size
        fresh = ResourceMemo()
        for c in callers:
            node_id = f"{MESH}.{c.meta.name}"
            topo = reconciler.topologies[MESH]
            ctx = ProxyContext(topology=topo, dataplane=topo.dataplanes[c.meta.name], identity=None, memo=fresh)
            with fresh.for_proxy(node_id):
                assert_same(cache.get_snapshot(node_id), generate_snapshot(ctx), node_id)
        assert memo.keys() == fresh.keys()
    finally:
        await reconciler.stop()
        await store.close()


async def test_a_failing_patch_falls_back_to_the_full_generation(rig: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, cache, reconciler = rig

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a defect in the patch")

    monkeypatch.setattr(eds_patch.EndpointPatch, "apply", broken)
    await Mesh(store, random.Random(3)).add_instance()
    reconciler.mesh_changed(MESH)
    await reconciler.reconcile_once()
    assert set(reconciler.last_paths.values()) == {"full"}
    check_every_proxy(cache, reconciler, "after a failed patch")
    memo = reconciler.memos[MESH]
    assert len(memo) == memo.referenced()


def test_replacing_keeps_names_and_refuses_what_could_break_consistency() -> None:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2

    def cla(name: str, marker: str) -> XdsResource:
        return XdsResource.of(ENDPOINT, name, endpoint_pb2.ClusterLoadAssignment(cluster_name=name + marker))

    cluster = XdsResource.of(CLUSTER, "a", cluster_pb2.Cluster(name="a"), [Ref(ENDPOINT, "a")])
    snap = Snapshot.build([cluster, cla("a", "")])
    cluster_version = snap.version(CLUSTER)
    patched = snap.replacing(ENDPOINT, {"a": cla("a", "-2")})
    assert patched.of_type(CLUSTER) is snap.of_type(CLUSTER)
    assert patched.version(CLUSTER) == cluster_version and patched.version(ENDPOINT) != snap.version(ENDPOINT)
    assert patched.version(ENDPOINT) == Snapshot.build([cluster, cla("a", "-2")]).version(ENDPOINT)
    assert snap.of_type(ENDPOINT)["a"].body != patched.of_type(ENDPOINT)["a"].body  # the original is unchanged
    with pytest.raises(InconsistentSnapshot, match="'b'"):
        snap.replacing(ENDPOINT, {"b": cla("b", "")})  # no cluster would own it
    with pytest.raises(InconsistentSnapshot, match="'a'"):
        snap.replacing(ENDPOINT, {})  # the cluster would miss its endpoints
    with pytest.raises(InconsistentSnapshot, match="'a'"):
        snap.replacing(CLUSTER, {"a": cluster})  # a cluster references its endpoints


def test_service_changes_say_which_are_endpoint_only() -> None:
    from tests.unit.xds_fixtures import topology

    base = [dp("a-1", "a", port=1000, address="10.0.0.1"), dp("b-1", "b", port=1001, address="10.0.0.2")]
    old = topology(mesh(), base)
    moved = topology(mesh(), [dp("a-1", "a", port=1000, address="10.0.0.9"), base[1]])
    new_port = topology(mesh(), [dp("a-1", "a", port=1000, service_port=3000, address="10.0.0.1"), base[1]])
    gone = topology(mesh(), [base[0]])
    a, b, none = frozenset({"a"}), frozenset({"b"}), frozenset[str]()
    assert eds_patch.service_changes(old, moved) == eds_patch.ServiceChanges(a, a, none)
    # Another real port: an endpoint-only change, except for the VIP owner's listeners (the reconciler's part).
    assert eds_patch.service_changes(old, new_port) == eds_patch.ServiceChanges(a, a, a)
    assert eds_patch.service_changes(old, gone) == eds_patch.ServiceChanges(b, none, b)
    assert ZONE_INGRESS.name == "ZoneIngress"


def test_a_group_patch_survives_its_first_proxy_going_away_mid_pass() -> None:
    """The pass yields between proxies: the first proxy of a group may disconnect (its memo references are
    released) before the others are patched; they still get the group's new assignment, held again."""
    from tests.unit.xds_fixtures import topology

    callers = [dp(f"web-{i}", "web", port=10000 + i, address=f"10.3.0.{i + 1}", outbounds={"backend": 20000})
               for i in range(2)]
    old = topology(mesh(), [*callers, dp("backend-1", "backend", port=9000, address="10.4.0.1")])
    new = topology(mesh(), [*callers, dp("backend-1", "backend", port=9000, address="10.4.0.2")], generation=2)
    memo = ResourceMemo()
    builds = {}
    for c in callers:
        ctx = ProxyContext(topology=old, dataplane=old.dataplanes[c.meta.name], identity=None, memo=memo)
        with memo.for_proxy(c.meta.name):
            snapshot = generate_snapshot(ctx)
        builds[c.meta.name] = eds_patch.ProxyBuild(snapshot, tuple(ctx.assignments), None, None)
    patch = eds_patch.EndpointPatch(new, memo)
    patch.apply(builds["web-0"], "web-0", frozenset({"backend"}))
    memo.forget("web-0")  # disconnected while the pass yielded
    patched = patch.apply(builds["web-1"], "web-1", frozenset({"backend"}))
    fresh = ResourceMemo()
    ctx = ProxyContext(topology=new, dataplane=new.dataplanes["web-1"], identity=None, memo=fresh)
    with fresh.for_proxy("web-1"):
        assert_same(patched.snapshot, generate_snapshot(ctx), "web-1")
    assert memo.keys() == fresh.keys() and len(memo) == memo.referenced()
