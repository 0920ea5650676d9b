"""State-of-the-world ADS against a real grpc.aio server and the generated client stub."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

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

NODE_KEY = "default.dp-1"  # what TokenAuthenticator makes of node "dp-1"
UNKNOWN = "type.googleapis.com/envoy.service.runtime.v3.Runtime"


def base_snapshot(port: int = 9000):
    return snapshot(eds_cluster("a"), eds_cluster("b"), cla("a", port), cla("b", 9001),
                    listener("l1", 15001, "a"))


async def test_initial_cds_then_ack() -> None:
    async with ads_server() as srv:
        snap = base_snapshot()
        srv.cache.set_snapshot(NODE_KEY, snap)
        c = await srv.client()
        await c.send(CLUSTER)
        resp = await c.recv()
        assert resp.type_url == CLUSTER
        assert resp.version_info == snap.version(CLUSTER)
        assert names_of(resp) == ["a", "b"]
        assert resp.nonce
        # the bodies are the shared serialised bytes, untouched
        assert sorted(r.value for r in resp.resources) == sorted(r.body for r in snap.of_type(CLUSTER).values())
        await c.ack(resp)
        await srv.recorder.wait(lambda r: r.of("ack", CLUSTER))
        assert srv.recorder.of("ack", CLUSTER) == [("ack", NODE_KEY, CLUSTER, snap.version(CLUSTER))]
        opened = srv.recorder.of("open")
        assert len(opened) == 1 and opened[0][2:] == (NODE_KEY, "dp-1")
        sent = srv.recorder.of("sent", CLUSTER)
        assert sent[0][3:6] == (snap.version(CLUSTER), resp.nonce, 2) and sent[0][6] == resp.ByteSize()
        # the authenticator saw the token in lower-case metadata, and the peer
        node, metadata, peer = srv.authenticator.seen[0]
        assert node == "dp-1" and metadata["authorization"] == "Bearer dp-1" and "127.0.0.1" in peer
        await c.expect_nothing()


async def test_eds_by_names_and_name_changes() -> None:
    async with ads_server() as srv:
        snap = base_snapshot()
        srv.cache.set_snapshot(NODE_KEY, snap)
        c = await srv.client()
        await c.send(ENDPOINT, names=("a", "missing"))
        r1 = await c.recv()
        assert names_of(r1) == ["a"]  # only the requested names that exist
        assert r1.version_info == snap.version(ENDPOINT)
        await c.ack(r1, names=("a", "missing"))
        await c.expect_nothing()  # an ACK with the same names gets no answer
        await c.send(ENDPOINT, nonce=r1.nonce, version=r1.version_info, names=("a", "b"))
        r2 = await c.recv()
        assert names_of(r2) == ["a", "b"]
        assert int(r2.nonce) > int(r1.nonce)  # nonces grow on the stream
        await c.ack(r2, names=("a", "b"))
        await srv.recorder.wait(lambda r: len(r.of("ack", ENDPOINT)) == 2)
        # a change to an endpoint nobody asked for pushes nothing; a change to a requested one pushes
        srv.cache.set_snapshot(NODE_KEY, snapshot(eds_cluster("a"), eds_cluster("b"), eds_cluster("c"), cla("a", 9000),
                                                  cla("b", 9001), cla("c", 9002), listener("l1", 15001, "a")))
        await c.expect_nothing()
        srv.cache.set_snapshot(NODE_KEY, snapshot(eds_cluster("a"), eds_cluster("b"), eds_cluster("c"), cla("a", 9100),
                                                  cla("b", 9001), cla("c", 9002), listener("l1", 15001, "a")))
        r3 = await c.recv()
        assert names_of(r3) == ["a", "b"]


async def test_no_push_for_identical_content_push_for_change() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, base_snapshot())
        c = await srv.client()
        await c.send(CLUSTER)
        r1 = await c.recv()
        await c.ack(r1)
        assert srv.cache.set_snapshot(NODE_KEY, base_snapshot()) is False  # rebuilt, same content
        await c.expect_nothing()
        changed = snapshot(eds_cluster("a", connect_timeout_s=2), eds_cluster("b"), cla("a", 9000), cla("b", 9001),
                           listener("l1", 15001, "a"))
        assert srv.cache.set_snapshot(NODE_KEY, changed) is True
        r2 = await c.recv()
        assert r2.version_info == changed.version(CLUSTER) != r1.version_info
        assert names_of(r2) == ["a", "b"]  # SotW CDS: every cluster again
        # a change of another type only: no CDS push (LDS was never requested on this stream)
        srv.cache.set_snapshot(NODE_KEY, snapshot(eds_cluster("a", connect_timeout_s=2), eds_cluster("b"),
                                                  cla("a", 9000), cla("b", 9001), listener("l1", 15002, "a")))
        await c.expect_nothing()


async def test_request_before_snapshot_is_answered_when_it_arrives() -> None:
    async with ads_server() as srv:
        c = await srv.client()
        await c.send(CLUSTER)
        await c.send(LISTENER)
        await c.expect_nothing(0.3)  # held, not answered empty
        snap = base_snapshot()
        srv.cache.set_snapshot(NODE_KEY, snap)
        first, second = await c.recv(), await c.recv()
        assert [first.type_url, second.type_url] == [CLUSTER, LISTENER]  # clusters first
        assert names_of(first) == ["a", "b"] and names_of(second) == ["l1"]


async def test_stale_nonce_is_ignored() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, base_snapshot())
        c = await srv.client()
        await c.send(ENDPOINT, names=("a",))
        r1 = await c.recv()
        srv.cache.set_snapshot(NODE_KEY, base_snapshot(port=9100))
        r2 = await c.recv()  # a push before the client ACKed r1: r1's nonce is now stale
        assert r2.nonce != r1.nonce
        # late ACK of r1, asking for more names: stale, so no ACK recorded and no answer
        await c.send(ENDPOINT, nonce=r1.nonce, version=r1.version_info, names=("a", "b"))
        await c.expect_nothing()
        assert srv.recorder.of("ack", ENDPOINT) == []
        # a stale NACK is ignored too
        await c.send(ENDPOINT, nonce=r1.nonce, version="", names=("a",), error="old news")
        await c.expect_nothing(0.2)
        assert srv.recorder.of("nack") == []
        # the same request with the latest nonce counts
        await c.send(ENDPOINT, nonce=r2.nonce, version=r2.version_info, names=("a", "b"))
        r3 = await c.recv()
        assert names_of(r3) == ["a", "b"]
        await srv.recorder.wait(lambda r: r.of("ack", ENDPOINT))
        assert srv.recorder.of("ack", ENDPOINT)[0][3] == r2.version_info


async def test_nack_recorded_not_resent_and_backoff() -> None:
    backoff = 0.3
    async with ads_server(nack_backoff=backoff) as srv:
        srv.cache.set_snapshot(NODE_KEY, base_snapshot())
        c = await srv.client()
        await c.send(CLUSTER)
        r1 = await c.recv()
        await c.ack(r1)
        await srv.recorder.wait(lambda r: r.of("ack", CLUSTER))
        bad = snapshot(eds_cluster("a", connect_timeout_s=7), eds_cluster("b"), cla("a", 9000), cla("b", 9001),
                       listener("l1", 15001, "a"))
        srv.cache.set_snapshot(NODE_KEY, bad)
        r2 = await c.recv()
        assert r2.version_info == bad.version(CLUSTER)
        # NACK: version_info stays at the last accepted one, error_detail says why
        await c.send(CLUSTER, nonce=r2.nonce, version=r1.version_info, error="cluster a: bad timeout")
        nack = (await srv.recorder.wait(lambda r: r.of("nack", CLUSTER)))[0]
        assert nack == ("nack", NODE_KEY, CLUSTER, bad.version(CLUSTER), "cluster a: bad timeout")
        nacked_at = srv.recorder.time_of(nack)
        await c.expect_nothing(2 * backoff)  # the rejected version is not sent again, not even after the back-off
        # a newer version right after another NACK waits for the back-off
        bad2 = snapshot(eds_cluster("a", connect_timeout_s=8), eds_cluster("b"), cla("a", 9000), cla("b", 9001),
                        listener("l1", 15001, "a"))
        srv.cache.set_snapshot(NODE_KEY, bad2)
        r3 = await c.recv()  # back-off from the first NACK is over: sent at once
        assert time.monotonic() - nacked_at >= backoff
        await c.send(CLUSTER, nonce=r3.nonce, version=r1.version_info, error="still bad")
        await srv.recorder.wait(lambda r: len(r.of("nack", CLUSTER)) == 2)
        nack2 = srv.recorder.of("nack", CLUSTER)[1]
        nacked_at = srv.recorder.time_of(nack2)
        good = snapshot(eds_cluster("a", connect_timeout_s=3), eds_cluster("b"), cla("a", 9000), cla("b", 9001),
                        listener("l1", 15001, "a"))
        srv.cache.set_snapshot(NODE_KEY, good)
        r4 = await c.recv(timeout=3)
        waited = time.monotonic() - nacked_at
        assert waited >= backoff - 0.02, waited
        assert waited < backoff + 1.0, waited
        assert r4.version_info == good.version(CLUSTER)
        await c.ack(r4)
        await srv.recorder.wait(lambda r: any(e[3] == good.version(CLUSTER) for e in r.of("ack", CLUSTER)))
        # only these CDS responses, no loop
        assert len(srv.recorder.of("sent", CLUSTER)) == 4


async def test_unknown_type_gets_an_empty_answer() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, base_snapshot())
        c = await srv.client()
        await c.send(UNKNOWN, names=("x",))
        r = await c.recv()
        assert r.type_url == UNKNOWN and len(r.resources) == 0 and r.nonce
        await c.ack(r, names=("x",))
        await c.expect_nothing()
        # the stream is fine
        await c.send(CLUSTER)
        assert names_of(await c.recv()) == ["a", "b"]
        assert srv.recorder.of("ack") == []  # the unknown type's ACK is not reported


async def test_reconnect_with_current_version_resends_nothing() -> None:
    async with ads_server() as srv:
        snap = base_snapshot()
        srv.cache.set_snapshot(NODE_KEY, snap)
        c = await srv.client()
        await c.send(CLUSTER, version=snap.version(CLUSTER))
        await c.expect_nothing()
        assert srv.recorder.of("ack", CLUSTER) == [("ack", NODE_KEY, CLUSTER, snap.version(CLUSTER))]
        srv.cache.set_snapshot(NODE_KEY, base_snapshot(port=9100))  # EDS only: still nothing for CDS
        await c.expect_nothing(0.2)
        newer = snapshot(eds_cluster("a"), cla("a", 9000), listener("l1", 15001, "a"))
        srv.cache.set_snapshot(NODE_KEY, newer)
        assert names_of(await c.recv()) == ["a"]


async def test_auth_failure_only_ends_that_stream() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, base_snapshot())
        good = await srv.client()
        await good.send(CLUSTER)
        r1 = await good.recv()
        await good.ack(r1)
        bad = await srv.client(metadata=(("authorization", "Bearer someone-else"),))
        await bad.send(CLUSTER)
        code, details = await bad.status()
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert details == "invalid dataplane token for 'dp-1'"
        none = await srv.client(metadata=())
        await none.send(CLUSTER)
        assert (await none.status())[0] == grpc.StatusCode.UNAUTHENTICATED
        # the good stream still gets pushes
        srv.cache.set_snapshot(NODE_KEY, snapshot(eds_cluster("a"), cla("a", 9000), listener("l1", 15001, "a")))
        assert names_of(await good.recv()) == ["a"]
        assert len(srv.recorder.of("open")) == 1 and srv.recorder.of("closed") == []


async def test_missing_node_is_invalid_argument() -> None:
    async with ads_server() as srv:
        c = await srv.client(node=None, metadata=())
        await c.send(CLUSTER)
        code, details = await c.status()
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "node" in details
        assert srv.recorder.events == []


async def test_node_id_change_aborts_the_stream() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, base_snapshot())
        c = await srv.client()
        await c.send(CLUSTER)
        r1 = await c.recv()
        await c.send(CLUSTER, nonce=r1.nonce, version=r1.version_info, node="dp-2")
        code, details = await c.status()
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "'dp-1'" in details and "'dp-2'" in details
        await srv.recorder.wait(lambda r: r.of("closed"))
        # the same node id again (Envoy may repeat it) is fine
        c2 = await srv.client()
        await c2.send(CLUSTER)
        r = await c2.recv()
        await c2.ack(r, with_node=True)
        await srv.recorder.wait(lambda r: r.of("ack", CLUSTER))


async def test_missing_type_url_is_invalid_argument() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, base_snapshot())
        c = await srv.client()
        await c.send("")  # a node-only first message is accepted
        await c.send(CLUSTER)
        r = await c.recv()
        await c.send("", nonce=r.nonce)
        code, details = await c.status()
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "type_url" in details


async def test_stream_close_calls_closed_once_and_leaks_no_task() -> None:
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, base_snapshot())
        before = {t for t in asyncio.all_tasks() if t.get_name().startswith("xds-")}
        c = await srv.client()
        await c.send(CLUSTER)
        await c.recv()
        assert srv.servicer.stream_count == 1
        await c.close()
        await srv.recorder.wait(lambda r: r.of("closed"))
        await asyncio.sleep(0.1)
        opened, closed = srv.recorder.of("open"), srv.recorder.of("closed")
        assert len(opened) == 1 and len(closed) == 1 and closed[0][1] == opened[0][1]
        assert srv.servicer.stream_count == 0
        after = {t for t in asyncio.all_tasks() if t.get_name().startswith("xds-")}
        assert after <= before
        # a client that half-closes ends its stream too
        c2 = await srv.client()
        await c2.send(CLUSTER)
        await c2.recv()
        await c2.call.done_writing()
        assert (await c2.status())[0] == grpc.StatusCode.OK
        await srv.recorder.wait(lambda r: len(r.of("closed")) == 2)


@pytest.mark.parametrize("streams", [50])
async def test_many_streams_each_get_their_own_snapshot(streams: int) -> None:
    async with ads_server() as srv:
        clients = []
        for i in range(streams):
            srv.cache.set_snapshot(f"default.dp-{i}", snapshot(static_cluster(f"c{i}", 9000 + i)))
            clients.append(await srv.client(node=f"dp-{i}"))
        for c in clients:
            await c.send(CLUSTER)
        for i, c in enumerate(clients):
            assert names_of(await c.recv()) == [f"c{i}"]
        srv.cache.set_snapshot("default.dp-7", snapshot(static_cluster("c7", 9100)))
        assert names_of(await clients[7].recv()) == ["c7"]
        for i, c in enumerate(clients):
            if i != 7:
                assert c.responses.empty()


async def test_eds_resent_after_its_cluster_changes() -> None:
    """Envoy re-warms an updated EDS cluster and waits for EDS even when the endpoints are unchanged."""
    async with ads_server() as srv:
        srv.cache.set_snapshot(NODE_KEY, base_snapshot())
        c = await srv.client()
        await c.send(CLUSTER)
        rc = await c.recv()
        await c.ack(rc)
        await c.send(ENDPOINT, names=("a", "b"))
        re = await c.recv()
        await c.ack(re, names=("a", "b"))
        await srv.recorder.wait(lambda r: len(r.of("ack")) == 2)
        srv.cache.set_snapshot(NODE_KEY, snapshot(eds_cluster("a", connect_timeout_s=4), eds_cluster("b"),
                                                  cla("a", 9000), cla("b", 9001), listener("l1", 15001, "a")))
        r1, r2 = await c.recv(), await c.recv()
        assert (r1.type_url, r2.type_url) == (CLUSTER, ENDPOINT)
        assert r2.version_info == re.version_info and names_of(r2) == ["a", "b"]
        # Envoy's EDS request after processing CDS carries the older EDS nonce: stale, no third answer
        await c.send(ENDPOINT, nonce=re.nonce, version=re.version_info, names=("a", "b"))
        await c.ack(r1)
        await c.ack(r2, names=("a", "b"))
        await c.expect_nothing()
        # a CDS change that updates no EDS cluster (a static cluster added) sends no EDS
        srv.cache.set_snapshot(NODE_KEY, snapshot(eds_cluster("a", connect_timeout_s=4), eds_cluster("b"),
                                                  static_cluster("s", 9500), cla("a", 9000), cla("b", 9001),
                                                  listener("l1", 15001, "a")))
        r3 = await c.recv()
        assert r3.type_url == CLUSTER and names_of(r3) == ["a", "b", "s"]
        await c.expect_nothing()


async def test_a_cluster_stays_in_cds_until_the_listener_that_stops_using_it_is_acked() -> None:
    """Make before break: a SotW CDS response removes what it omits, so it keeps b until the new listener
    (routing to a) is ACKed."""
    async with ads_server() as srv:
        c = await listener_moved_from_b_to_a(srv, NODE_KEY, delta=False)
        lds = await c.recv()
        assert lds.type_url == LISTENER
        await c.expect_nothing()  # CDS without b would break the listener Envoy still runs
        await c.ack(lds)
        cds = await c.recv()
        assert (cds.type_url, names_of(cds)) == (CLUSTER, ["a"])
        await c.ack(cds)
        await c.expect_nothing()
        # A cluster that is added and one that goes away in the same change: the new one at once, with the old
        srv.cache.set_snapshot(NODE_KEY, snapshot(static_cluster("c", 9002), listener("l1", 15001, "c")))
        cds2 = await c.recv()
        assert (cds2.type_url, names_of(cds2)) == (CLUSTER, ["a", "c"])
        await c.ack(cds2)
        lds2 = await c.recv()
        assert lds2.type_url == LISTENER
        await c.ack(lds2)
        cds3 = await c.recv()
        assert (cds3.type_url, names_of(cds3)) == (CLUSTER, ["c"])


async def test_a_cluster_outlives_the_ack_of_the_listener_that_stops_using_it_by_the_break_delay() -> None:
    async with ads_server(break_delay=1.5) as srv:
        c = await listener_moved_from_b_to_a(srv, NODE_KEY, delta=False)
        await c.ack(await c.recv())
        await c.expect_nothing(0.5)  # within the delay: the CDS response would drop b
        cds = await c.recv()
        assert (cds.type_url, names_of(cds)) == (CLUSTER, ["a"])
