"""The xDS reconciler on a real store, CA manager and snapshot cache: one mesh's or one proxy's failure never
stops the others, failures are retried with a back-off and logged without flooding, renewals are not starved
by change traffic, and the resource memo holds only what current configs use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from controlplane.ca import CaManager
from controlplane.ca import builtin as builtin_module
from controlplane.ca.material import X509_MAX_NOT_AFTER
from controlplane.resources import Resource, from_wire
from controlplane.resources.base import Meta
from controlplane.resources.fields import MAX_DURATION
from controlplane.resources.mesh import MESH, MeshSpec
from controlplane.resources.secret import SECRET, SecretSpec
from controlplane.store.memory import MemoryStore
from controlplane.supervise import Supervisor
from controlplane.xds import reconciler as reconciler_module
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.reconciler import Reconciler
from controlplane.xds.resources import CLUSTER, ENDPOINT
from tests.unit.waiting import wait_until

from .xds_fixtures import dataplane, mesh


def builtin_mesh(name: str, **ca_cert: Any) -> Resource:
    """Built without the API's validation: what an older version may have stored (100000y is refused now)."""
    conf = {"caCert": ca_cert} if ca_cert else {}
    spec = {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin", "conf": conf}]}}
    return Resource(MESH, Meta(name=name), MeshSpec.model_validate(spec))


@pytest.fixture
async def rig() -> AsyncIterator[tuple[MemoryStore, SnapshotCache, Reconciler]]:
    store = MemoryStore()
    await store.start()
    cache = SnapshotCache()
    reconciler = Reconciler(store, cache, CaManager(store), debounce=0.001,
                            supervisor=Supervisor(backoff_min=0.05, backoff_max=0.2))
    yield store, cache, reconciler
    await reconciler.stop()
    await store.close()


async def add_dp(store: MemoryStore, mesh_name: str, name: str, service: str, port: int,
                 outbounds: tuple[tuple[int, str], ...] = ()) -> Resource:
    dp = dataplane(name, service, port=port, service_port=port + 1000, mesh_name=mesh_name, outbounds=outbounds)
    await store.create(dp)
    return dp


def connect(reconciler: Reconciler, mesh_name: str, name: str) -> str:
    node_id = f"{mesh_name}.{name}"
    reconciler.proxy_connected(node_id)
    return node_id


async def test_a_poison_ca_expiration_is_rendered_and_other_meshes_keep_getting_config(rig: Any) -> None:
    """A builtin CA with `expiration: 100000y` stored before the API bounded durations used to overflow a date
    and kill the reconciler: now it reads as the longest duration (and dates clamp at X.509's last one), and
    both meshes are served."""
    store, cache, reconciler = rig
    await store.create(builtin_mesh("poison", expiration="100000y", RSAbits=2048))
    await store.create(mesh("good"))
    await add_dp(store, "poison", "a", "svc-a", 10001)
    await add_dp(store, "good", "b", "svc-b", 10002)
    poison, good = connect(reconciler, "poison", "a"), connect(reconciler, "good", "b")
    await reconciler.reconcile_once()
    assert cache.get_snapshot(good) is not None
    assert cache.get_snapshot(poison) is not None
    ca = await reconciler.ca.get_ca(await store.get(MESH, "poison"))
    # The stored 100000y reads as the longest duration there is (292 years): the CA is made, not refused.
    assert ca is not None and datetime.now(UTC) + MAX_DURATION - timedelta(days=1) < ca.not_after <= X509_MAX_NOT_AFTER


async def expire_builtin_ca(store: MemoryStore, mesh_name: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = builtin_module.make_ca_cert(mesh_name, key, timedelta(days=1), now=datetime.now(UTC) - timedelta(days=2))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    for name, data in ((builtin_module.key_secret_name(mesh_name, "ca-1"), key_pem),
                       (builtin_module.cert_secret_name(mesh_name, "ca-1"), cert_pem)):
        await store.create(Resource(SECRET, Meta(name=name, mesh=mesh_name), SecretSpec.of(data)))


async def test_a_mesh_with_an_expired_ca_is_retried_with_backoff_logged_once_and_others_go_on(
        rig: Any, caplog: pytest.LogCaptureFixture) -> None:
    store, cache, reconciler = rig
    await store.create(builtin_mesh("expired"))
    await expire_builtin_ca(store, "expired")
    await store.create(mesh("good"))
    for i in range(5):
        await add_dp(store, "expired", f"dp-{i}", "svc", 10010 + i)
        connect(reconciler, "expired", f"dp-{i}")
    await add_dp(store, "good", "b", "svc-b", 10002)
    good = connect(reconciler, "good", "b")
    caplog.set_level(logging.ERROR, logger="kuma.xds")
    for _ in range(20):  # twenty passes, as change traffic would cause: one line, not one per pass or proxy
        reconciler.mesh_changed("expired")
        reconciler.mesh_changed("good")
        await reconciler.reconcile_once()
    assert cache.get_snapshot(good) is not None
    assert "expired" in reconciler.mesh_retries
    lines = [r for r in caplog.records if getattr(r, "mesh", "") == "expired"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "expired" in lines[0].error and lines[0].retry_in > 0

    # The operator fixes the CA (a fresh one replaces the expired secrets): the retry serves the mesh.
    for name in (builtin_module.key_secret_name("expired", "ca-1"), builtin_module.cert_secret_name("expired", "ca-1")):
        await store.delete(SECRET, name, "expired")
    reconciler.mesh_retries.failed("expired", 0.0)  # due now (its real back-off is seconds)
    assert reconciler.mesh_retries.due(1e18) == ["expired"]
    reconciler.mesh_changed("expired")
    await reconciler.reconcile_once()
    assert "expired" not in reconciler.mesh_retries
    assert all(cache.get_snapshot(f"expired.dp-{i}") is not None for i in range(5))


async def test_an_unexpected_error_for_one_proxy_keeps_the_others_and_the_loop_running(
        rig: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    store, cache, reconciler = rig
    await store.create(mesh("m"))
    await add_dp(store, "m", "ok", "svc-ok", 10001)
    await add_dp(store, "m", "bad", "svc-bad", 10002)
    real = reconciler_module.generate_snapshot

    def failing_for_bad(ctx: Any) -> Any:
        if ctx.dataplane.meta.name == "bad":
            raise ZeroDivisionError("a bug in one generator")
        return real(ctx)

    monkeypatch.setattr(reconciler_module, "generate_snapshot", failing_for_bad)
    caplog.set_level(logging.ERROR, logger="kuma.xds")
    await reconciler.start()
    ok, bad = connect(reconciler, "m", "ok"), connect(reconciler, "m", "bad")
    await cache.wait_for_change(ok, 0)
    await wait_until(lambda: bad in reconciler.node_retries)
    assert cache.get_snapshot(bad) is None
    failure = next(r for r in caplog.records if getattr(r, "dataplane", "") == "bad")
    assert failure.exc_info is not None and "a bug in one generator" in failure.error  # a traceback: a bug

    # The loop is alive: a later change is still pushed, and the failed proxy is retried until it works.
    monkeypatch.setattr(reconciler_module, "generate_snapshot", real)
    before = cache.generation(ok)
    await store.update(dataplane("ok", "svc-ok", port=10001, service_port=12001, mesh_name="m",
                                 extra_tags={"version": "2"}).with_meta(version=1))
    await asyncio.wait_for(cache.wait_for_change(ok, before), 5)
    await asyncio.wait_for(cache.wait_for_change(bad, 0), 5)  # its retry (or the mesh's next rebuild) works
    await wait_until(lambda: bad not in reconciler.node_retries)


async def test_renewals_are_not_starved_by_steady_change_traffic(rig: Any) -> None:
    """On Python 3.12+ wait_for() on an already-set event never times out: the deadline must be checked on
    every pass, or a change every few ms would keep certificates from ever being renewed."""
    store, cache, reconciler = rig
    await store.create(from_wire({"type": "Mesh", "name": "m", "mtls": {
        "enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin",
                                                "dpCert": {"rotation": {"expiration": "2s"}}}]}}))
    await add_dp(store, "m", "a", "svc-a", 10001)
    await reconciler.start()
    node = connect(reconciler, "m", "a")
    await wait_until(lambda: reconciler.identities.get(("m", "a")) is not None)
    first = reconciler.identities.get(("m", "a"))
    assert first is not None

    async def churn() -> None:
        while True:
            reconciler.mesh_changed("other")  # a mesh with no proxies: wakes the loop, renews nothing
            await asyncio.sleep(0.002)

    churner = asyncio.create_task(churn())
    try:
        await wait_until(lambda: (c := reconciler.identities.get(("m", "a"))) is not None and c.serial != first.serial,
                         timeout=15)
    finally:
        churner.cancel()
    assert cache.get_snapshot(node) is not None


async def test_the_memo_holds_what_current_configs_use_after_1000_endpoint_changes(rig: Any) -> None:
    store, cache, reconciler = rig
    await store.create(mesh("m"))
    await add_dp(store, "m", "client", "web", 10001, outbounds=((20001, "backend"),))
    await add_dp(store, "m", "backend-1", "backend", 10002)
    client = connect(reconciler, "m", "client")
    connect(reconciler, "m", "backend-1")
    await reconciler.reconcile_once()
    memo = reconciler.memos["m"]
    size = len(memo)
    assert size == memo.referenced() > 0
    for i in range(1000):  # the backend moves: only the client's endpoints change (partial rebuilds)
        current = await store.get(dataplane("x", "x", port=1, service_port=2).type, "backend-1", "m")
        moved = dataplane("backend-1", "backend", port=10002, service_port=11002, mesh_name="m",
                          address=f"127.0.{i // 250}.{i % 250 + 1}")
        await store.update(moved.with_meta(version=current.meta.version))
        reconciler.mesh_changed("m")
        await reconciler.reconcile_once()
    endpoints = cache.get_snapshot(client).of_type(ENDPOINT)
    assert any("127.0.3.250" in r.body.decode("latin-1") for r in endpoints.values())
    assert len(memo) == memo.referenced() == size
    assert cache.get_snapshot(client).of_type(CLUSTER)

    reconciler.proxy_disconnected(client)
    assert len(memo) == memo.referenced() < size  # what only the client used is gone with it


async def test_the_pass_start_hook_runs_before_a_pass_that_rebuilds_and_pending_shows_a_waiting_change(
        rig: Any) -> None:
    """What gc_pacing relies on: the hook runs before a pass's first rebuild (not after, not for an empty
    pass), and pending() is true from a change until the pass that takes it begins."""
    store, cache, reconciler = rig
    await store.create(mesh("default"))
    await add_dp(store, "default", "a", "svc-a", 10001)
    node = connect(reconciler, "default", "a")
    assert reconciler.pending()  # the connect woke the loop
    seen: list[tuple[bool, bool]] = []  # (snapshot already set, change still pending) when the hook ran
    reconciler.on_pass_start.append(lambda: seen.append((cache.get_snapshot(node) is not None,
                                                         reconciler.pending())))
    reconciler._wake.clear()  # reconcile_once() is called directly here, not by the loop that clears it
    await reconciler.reconcile_once()
    assert seen == [(False, False)]
    assert cache.get_snapshot(node) is not None
    await reconciler.reconcile_once()  # nothing dirty: no rebuild, no hook
    assert seen == [(False, False)]
    assert not reconciler.pending()
    reconciler.mesh_changed("default")
    assert reconciler.pending()


async def test_a_change_after_a_quiet_spell_waits_first_debounce_and_one_in_a_burst_waits_debounce(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Leading edge: a single change is not held for a burst that is not coming (the 50-Envoy EDS push paid the
    whole 20 ms debounce); changes that keep coming are coalesced by the full debounce. The loop's waits are
    recorded (and not slept), so this checks which wait each pass chose, not how long anything took."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(delay: float, *args: Any) -> Any:
        if delay > 0:
            waits.append(delay)
        return await real_sleep(0, *args)

    monkeypatch.setattr(reconciler_module.asyncio, "sleep", recorded)
    store = MemoryStore()
    await store.start()
    cache = SnapshotCache()
    reconciler = Reconciler(store, cache, CaManager(store), debounce=5.0, first_debounce=0.25)
    try:
        await store.create(mesh("default"))
        await add_dp(store, "default", "a", "svc-a", 10001)
        node = connect(reconciler, "default", "a")
        reconciler.last_pass_at -= 10.0  # no pass for ten seconds: a quiet spell
        await reconciler.start()
        for _ in range(500):
            if cache.get_snapshot(node) is not None:
                break
            await real_sleep(0.01)
        assert waits == [0.25]  # the first pass after the quiet spell
        passes = reconciler.rebuilds
        reconciler.mesh_changed("default")  # right after a pass: part of a burst
        for _ in range(500):
            if reconciler.rebuilds > passes:
                break
            await real_sleep(0.01)
        assert waits == [0.25, 5.0]
        reconciler.last_pass_at -= 10.0  # as if ten quiet seconds had passed since
        reconciler.mesh_changed("default")
        for _ in range(500):
            if reconciler.rebuilds > passes + 1:
                break
            await real_sleep(0.01)
        assert waits == [0.25, 5.0, 0.25]
    finally:
        await reconciler.stop()
        await store.close()


async def test_another_zones_ingress_rebuilds_only_the_meshes_whose_remote_endpoints_it_changes() -> None:
    """A ZoneIngress of another zone is a remote endpoint of the services it offers, in their meshes: its change
    rebuilds those meshes, and no other (before, every mesh of the zone was rebuilt for any of them). The store's
    events are handed to the reconciler one by one here, and each pass is run by the test."""
    from controlplane.resources.zone import ZONE_INGRESS
    from controlplane.store.base import ChangeEvent
    from tests.unit.test_crosszone_xds import ingress

    def offer(mesh_name: str, service: str, instances: int) -> dict[str, Any]:
        return {"mesh": mesh_name, "instances": instances, "tags": {"kuma.io/service": service}}

    store = MemoryStore()
    await store.start()
    reconciler = Reconciler(store, SnapshotCache(), CaManager(store), debounce=0.001, zone="zone-1")
    rebuilt: list[str] = []
    rebuild = reconciler._rebuild_mesh

    async def counting(mesh_name: str, **kwargs: Any) -> None:
        rebuilt.append(mesh_name)
        await rebuild(mesh_name, **kwargs)

    reconciler._rebuild_mesh = counting  # type: ignore[method-assign]
    events: asyncio.Queue[ChangeEvent] = asyncio.Queue()
    consumer = asyncio.create_task(reconciler._consume(events, set()))

    def remote_ports(mesh_name: str, service: str) -> set[int]:
        return {e.port for e in reconciler.topologies[mesh_name].endpoints.get(service, ())}

    async def change(resource: Resource | None, name: str = "") -> list[str]:
        """Store the ingress (None: delete `name`), hand its event over, run one pass: the meshes rebuilt."""
        name = resource.meta.name if resource is not None else name
        try:
            current = await store.get(ZONE_INGRESS, name)
        except Exception:
            assert resource is not None
            stored = await store.create(resource)
            op = "create"
        else:
            if resource is None:
                await store.delete(ZONE_INGRESS, name)
                stored, op = current, "delete"
            else:
                stored, op = await store.update(resource.with_meta(version=current.meta.version)), "update"
        rebuilt.clear()
        await events.put(ChangeEvent(op, ZONE_INGRESS.name, "", name, stored.meta.version))  # type: ignore[arg-type]
        await wait_until(lambda: events.empty() and reconciler.pending())
        await reconciler.reconcile_once()
        return list(rebuilt)

    try:
        for name in ("a", "b"):
            await store.create(mesh(name, mtls="STRICT"))
            await add_dp(store, name, f"caller-{name}", f"caller-{name}", 10001,
                         outbounds=((20001, "billing"), (20002, "invoices")))
            connect(reconciler, name, f"caller-{name}")
        await wait_until(reconciler.pending)  # the consumer's start: every mesh looked at again
        await reconciler.reconcile_once()
        assert {"a", "b"} <= reconciler.topologies.keys()
        # billing in mesh a only: a is rebuilt with the remote endpoint, b is not.
        assert await change(ingress("z2", "zone-2", [offer("a", "billing", 1)], advertised=None, port=30001)) == ["a"]
        assert remote_ports("a", "billing") == {30001}
        # What no mesh here takes anything from: zone-1's own ingress (local traffic goes direct), a mesh this
        # zone does not have.
        assert await change(ingress("z1", "zone-1", [offer("a", "billing", 3), offer("b", "invoices", 2)])) == []
        assert await change(ingress("z3", "zone-3", [offer("elsewhere", "billing", 4)])) == []
        # invoices in mesh b, then more instances behind z2 (its weight): one mesh each time.
        assert await change(ingress("z2-b", "zone-2", [offer("b", "invoices", 2)], advertised=None,
                                    port=30004)) == ["b"]
        assert remote_ports("b", "invoices") == {30004}
        assert await change(ingress("z2", "zone-2", [offer("a", "billing", 5)], advertised=None, port=30001)) == ["a"]
        assert [e.weight for e in reconciler.topologies["a"].endpoints["billing"]] == [5]
        # The ingress goes: mesh a loses its remote endpoint.
        assert await change(None, "z2") == ["a"]
        assert remote_ports("a", "billing") == set()
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await reconciler.stop()
        await store.close()
