"""Incremental (Delta) ADS against a real grpc.aio server and the generated client stub."""

from __future__ import annotations

import time

import grpc

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER
from tests.unit.test_ads_support import (
    ads_server,
    cla,
    eds_cluster,
    listener,
    listener_moved_from_b_to_a,
    names_of,
    snapshot,
    static_cluster,
)

NODE_KEY = "default.dp-1"
UNKNOWN = "type.googleapis.com/envoy.service.runtime.v3.Runtime"


def snap3(**ports: int):
    """Clusters a, b, c with EDS; `ports` overrides an endpoint's port (a change of that CLA only)."""
    return snapshot(*(eds_cluster(n) for n in "abc"), *(cla(n, ports.get(n, 9000)) for n in "abc"),
                    listener("l1", 15001, "a"))


def versions(response) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


async def test_initial_wildcard_and_ack() -> None:
    async with ads_server() as srv:
        snap = snap3()
        srv.cache.set_snapshot(NODE_KEY, snap)
        c = await srv.client(delta=True)
        await c.send(CLUSTER)
        r = await c.recv()
        assert r.type_url == CLUSTER and r.system_version_info == snap.version(CLUSTER)
        assert versions(r) == {n: x.hash for n, x in snap.of_type(CLUSTER).items()}
        assert {x.resource.value for x in r.resources} == {x.body for x in snap.of_type(CLUSTER).values()}
        assert all(x.resource.type_url == CLUSTER for x in r.resources)
        assert list(r.removed_resources) == []
        await c.ack(r)
        await srv.recorder.wait(lambda rec: rec.of("ack", CLUSTER))
        assert srv.recorder.of("ack", CLUSTER) == [("ack", NODE_KEY, CLUSTER, snap.version(CLUSTER))]
        sent = srv.recorder.of("sent", CLUSTER)[0]
        assert sent[3:6] == (snap.version(CLUSTER), r.nonce, 3)
        await c.expect_nothing()


async def test_explicit_wildcard_and_empty_first_answer() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, snapshot(eds_cluster("a"), cla("a", 9000)))
        c = await srv.client(delta=True)
        await c.send(LISTENER)  # wildcard, and there are no listeners: still one (empty) answer
        r = await c.recv()
        assert r.type_url == LISTENER and len(r.resources) == 0
        await c.send(CLUSTER, subscribe=("*",))
        assert names_of(await c.recv()) == ["a"]
        c2 = await srv.client(delta=True)
        await c2.send(LISTENER, subscribe=("*",))  # explicit wildcard, nothing there: answered too
        r = await c2.recv()
        assert r.type_url == LISTENER and len(r.resources) == 0
        await c2.send(ENDPOINT, subscribe=("nope",))  # a name that does not exist: no answer
        await c2.expect_nothing()


async def test_subscribe_unsubscribe_changed_only_and_removals() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, snap3())
        c = await srv.client(delta=True)
        await c.send(ENDPOINT, subscribe=("a",))
        r1 = await c.recv()
        assert names_of(r1) == ["a"]
        await c.ack(r1, subscribe=("b", "nope"))  # ACK and subscribe more in one request
        r2 = await c.recv()
        assert names_of(r2) == ["b"]  # only what the client does not have yet
        await c.ack(r2)
        await c.expect_nothing()
        # a change of one CLA sends that one only
        srv.cache.set_snapshot(NODE_KEY, snap3(b=9100))
        r3 = await c.recv()
        assert names_of(r3) == ["b"] and list(r3.removed_resources) == []
        await c.ack(r3)
        # a change to an unsubscribed CLA sends nothing
        srv.cache.set_snapshot(NODE_KEY, snap3(b=9100, c=9200))
        await c.expect_nothing()
        # unsubscribing from something the client had: confirmed as removed
        await c.send(ENDPOINT, unsubscribe=("a",))
        r4 = await c.recv()
        assert names_of(r4) == [] and list(r4.removed_resources) == ["a"]
        await c.ack(r4)
        # subscribing again sends it again, unchanged as it is
        await c.send(ENDPOINT, subscribe=("a",))
        r5 = await c.recv()
        assert names_of(r5) == ["a"]
        await c.ack(r5)
        # the resource that did not exist appears: it is sent
        srv.cache.set_snapshot(NODE_KEY, snapshot(*(eds_cluster(n) for n in ("a", "b", "c", "nope")),
                                                  cla("a", 9000), cla("b", 9100), cla("c", 9200), cla("nope", 1),
                                                  listener("l1", 15001, "a")))
        assert names_of(await c.recv()) == ["nope"]


async def test_deleted_resources_are_removed_in_order() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, snap3())
        c = await srv.client(delta=True)
        await c.send(CLUSTER)
        rc = await c.recv()
        await c.ack(rc, with_node=False)
        await c.send(ENDPOINT, subscribe=("a", "b", "c"))
        re = await c.recv()
        assert names_of(re) == ["a", "b", "c"]
        await c.ack(re)
        await srv.recorder.wait(lambda rec: len(rec.of("ack")) == 2)
        srv.cache.set_snapshot(NODE_KEY, snapshot(eds_cluster("a"), eds_cluster("c"), cla("a", 9000), cla("c", 9000),
                                                  listener("l1", 15001, "a")))
        r1, r2 = await c.recv(), await c.recv()
        assert (r1.type_url, list(r1.removed_resources), len(r1.resources)) == (CLUSTER, ["b"], 0)
        assert (r2.type_url, list(r2.removed_resources), len(r2.resources)) == (ENDPOINT, ["b"], 0)
        # the client then unsubscribes from b: it is already gone, nothing more to say
        await c.ack(r1)
        await c.ack(r2, unsubscribe=("b",))
        await c.expect_nothing()


async def test_reconnect_with_initial_resource_versions() -> None:
    async with ads_server() as srv:
        snap = snap3()
        srv.cache.set_snapshot(NODE_KEY, snap)
        have_clusters = {n: r.hash for n, r in snap.of_type(CLUSTER).items()}
        have_cla = {n: r.hash for n, r in snap.of_type(ENDPOINT).items()}
        c = await srv.client(delta=True)
        await c.send(CLUSTER, initial_versions=have_clusters)
        await c.send(ENDPOINT, subscribe=("a", "b", "c"), initial_versions=have_cla)
        await c.expect_nothing()  # everything matches: nothing resent
        # a client whose copy differs gets only the differences
        c2 = await srv.client(delta=True)
        stale = dict(have_cla, b="0000", gone="1234")
        await c2.send(ENDPOINT, subscribe=("a", "b", "c"), initial_versions=stale)
        r = await c2.recv()
        assert names_of(r) == ["b"] and list(r.removed_resources) == ["gone"]
        await c2.send(CLUSTER, initial_versions={"a": have_clusters["a"], "old": "99"})
        r = await c2.recv()
        assert names_of(r) == ["b", "c"] and list(r.removed_resources) == ["old"]


async def test_nack_recorded_not_resent_and_backoff() -> None:
    backoff = 0.3
    async with ads_server(nack_backoff=backoff) as srv:
        srv.cache.set_snapshot(NODE_KEY, snap3())
        c = await srv.client(delta=True)
        await c.send(CLUSTER)
        r1 = await c.recv()
        await c.ack(r1)
        await srv.recorder.wait(lambda rec: rec.of("ack", CLUSTER))
        bad = snapshot(eds_cluster("a", connect_timeout_s=9), eds_cluster("b"), eds_cluster("c"),
                       *(cla(n, 9000) for n in "abc"), listener("l1", 15001, "a"))
        srv.cache.set_snapshot(NODE_KEY, bad)
        r2 = await c.recv()
        assert names_of(r2) == ["a"]
        await c.send(CLUSTER, nonce=r2.nonce, error="cluster a rejected")
        await srv.recorder.wait(lambda rec: rec.of("nack", CLUSTER))
        nack = srv.recorder.of("nack", CLUSTER)[0]
        assert nack == ("nack", NODE_KEY, CLUSTER, bad.version(CLUSTER), "cluster a rejected")
        nacked_at = srv.recorder.time_of(nack)
        # a fix right away waits for the back-off; the rejected one is never resent
        good = snapshot(eds_cluster("a", connect_timeout_s=3), eds_cluster("b"), eds_cluster("c"),
                        *(cla(n, 9000) for n in "abc"), listener("l1", 15001, "a"))
        srv.cache.set_snapshot(NODE_KEY, good)
        r3 = await c.recv(timeout=3)
        waited = time.monotonic() - nacked_at
        assert backoff - 0.02 <= waited < backoff + 1.0, waited
        assert names_of(r3) == ["a"] and versions(r3)["a"] == good.of_type(CLUSTER)["a"].hash
        await c.ack(r3)
        await srv.recorder.wait(lambda rec: len(rec.of("ack", CLUSTER)) == 2)
        await c.expect_nothing()
        assert len(srv.recorder.of("sent", CLUSTER)) == 3
        # an ACK for an unknown nonce is not an ACK
        await c.send(CLUSTER, nonce="12345")
        await c.expect_nothing(0.2)
        assert len(srv.recorder.of("ack", CLUSTER)) == 2


async def test_unknown_type_gets_nothing_and_stream_lives() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, snap3())
        c = await srv.client(delta=True)
        await c.send(UNKNOWN, subscribe=("x",))
        await c.expect_nothing()
        await c.send(CLUSTER)
        assert names_of(await c.recv()) == ["a", "b", "c"]


async def test_request_before_snapshot_is_answered_when_it_arrives() -> None:
    async with ads_server() as srv:
        c = await srv.client(delta=True)
        await c.send(CLUSTER)
        await c.expect_nothing(0.3)
        srv.cache.set_snapshot(NODE_KEY, snap3())
        assert names_of(await c.recv()) == ["a", "b", "c"]


async def test_auth_node_and_malformed_requests() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, snap3())
        good = await srv.client(delta=True)
        await good.send(CLUSTER)
        await good.recv()
        bad = await srv.client(delta=True, metadata=(("authorization", "nope"),))
        await bad.send(CLUSTER)
        assert await bad.status() == (grpc.StatusCode.UNAUTHENTICATED, "invalid dataplane token for 'dp-1'")
        anonymous = await srv.client(delta=True, node=None, metadata=())
        await anonymous.send(CLUSTER)
        assert (await anonymous.status())[0] == grpc.StatusCode.INVALID_ARGUMENT
        switch = await srv.client(delta=True)
        await switch.send(CLUSTER)
        await switch.recv()
        await switch.send(ENDPOINT, subscribe=("a",), node="dp-9")
        assert (await switch.status())[0] == grpc.StatusCode.PERMISSION_DENIED
        typeless = await srv.client(delta=True)
        await typeless.send(CLUSTER)
        await typeless.recv()
        await typeless.send("")
        assert (await typeless.status())[0] == grpc.StatusCode.INVALID_ARGUMENT
        # the first stream is unaffected
        srv.cache.set_snapshot(NODE_KEY, snap3(a=9999))
        await good.send(ENDPOINT, subscribe=("a",))
        assert names_of(await good.recv()) == ["a"]
        await srv.recorder.wait(lambda rec: len(rec.of("closed")) == 2)  # switch and typeless; good still open
        assert len(srv.recorder.of("open")) == 3


async def test_cla_resent_after_its_cluster_changes() -> None:
    """Envoy re-warms an updated EDS cluster and waits for its CLA even when the endpoints are unchanged."""
    async with ads_server() as srv:
        snap = snap3()
        srv.cache.set_snapshot(NODE_KEY, snap)
        c = await srv.client(delta=True)
        await c.send(CLUSTER)
        await c.ack(await c.recv())
        await c.send(ENDPOINT, subscribe=("a", "b"))
        await c.ack(await c.recv())
        changed_a = snapshot(eds_cluster("a", connect_timeout_s=5), eds_cluster("b"), eds_cluster("c"),
                             *(cla(n, 9000) for n in "abc"), listener("l1", 15001, "a"))
        srv.cache.set_snapshot(NODE_KEY, changed_a)
        r1, r2 = await c.recv(), await c.recv()
        assert (r1.type_url, names_of(r1)) == (CLUSTER, ["a"])
        assert (r2.type_url, names_of(r2)) == (ENDPOINT, ["a"])  # unchanged, resent for warming; b is not
        await c.ack(r1)
        await c.ack(r2)
        await c.expect_nothing()
        # on a reconnect, EDS subscribed after CDS: the updated cluster's CLA is still sent
        c2 = await srv.client(delta=True)
        await c2.send(CLUSTER, initial_versions={n: r.hash for n, r in snap.of_type(CLUSTER).items()})
        assert names_of(await c2.recv()) == ["a"]
        await c2.send(ENDPOINT, subscribe=("a", "b"),
                      initial_versions={n: r.hash for n, r in changed_a.of_type(ENDPOINT).items() if n in "ab"})
        r = await c2.recv()
        assert names_of(r) == ["a"] and list(r.removed_resources) == []


async def test_a_cluster_is_removed_only_after_the_listener_that_stops_using_it_is_acked() -> None:
    """Make before break: Envoy's old listener routes to b until the new one (routing to a) is in place."""
    async with ads_server() as srv:
        c = await listener_moved_from_b_to_a(srv, NODE_KEY, delta=True)
        lds = await c.recv()
        assert (lds.type_url, names_of(lds)) == (LISTENER, ["l1"])
        await c.expect_nothing()  # b is still what the client's current listener uses
        await c.ack(lds)
        cds = await c.recv()
        assert (cds.type_url, list(cds.removed_resources), len(cds.resources)) == (CLUSTER, ["b"], 0)
        await c.ack(cds)
        # A NACKed listener keeps the old one in Envoy: the cluster it uses is kept too.
        srv.cache.set_snapshot(NODE_KEY, snapshot(static_cluster("a", 9000), static_cluster("c", 9002),
                                                  listener("l1", 15001, "c")))
        first, second = await c.recv(), await c.recv()
        assert (first.type_url, names_of(first)) == (CLUSTER, ["c"])
        assert (second.type_url, names_of(second)) == (LISTENER, ["l1"])
        await c.ack(first)
        srv.cache.set_snapshot(NODE_KEY, snapshot(static_cluster("c", 9002), listener("l1", 15001, "c")))
        await c.send(LISTENER, nonce=second.nonce, error="rejected")
        await c.expect_nothing()  # a is not removed: the client still runs a listener from before


async def test_a_cluster_outlives_the_ack_of_the_listener_that_stops_using_it_by_the_break_delay() -> None:
    """Envoy serves connections it accepted on the old filter chain with the old routes: the cluster they use
    goes `break_delay` after the new listener's ACK, not at once (at once, a request read on such a connection
    just after the ACK found no cluster: 503)."""
    async with ads_server(break_delay=1.5) as srv:
        c = await listener_moved_from_b_to_a(srv, NODE_KEY, delta=True)
        lds = await c.recv()
        await c.ack(lds)
        await c.expect_nothing(0.5)  # within the delay: b stays
        cds = await c.recv()  # then it goes, without anything else happening
        assert (cds.type_url, list(cds.removed_resources), len(cds.resources)) == (CLUSTER, ["b"], 0)
