"""Make before use, on both ADS protocols (a real grpc.aio server and client): a listener update that routes
to a cluster the client has not warmed yet waits until the client has ACKed that cluster and its endpoints
(Envoy's xDS docs, "eventual consistency considerations": LDS after the CDS and EDS it uses). A new EDS
cluster is warming at the client until its endpoints arrive; a listener routing to it meanwhile fails
requests with "no cluster" (the 503 once seen in test_crosszone)."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER
from tests.unit.test_ads_support import (
    AdsClient,
    ads_server,
    cla,
    eds_cluster,
    listener,
    listener_moved_to_new_cluster_b,
    listener_on_warm_cluster_a,
    names_of,
    snapshot,
)

NODE_KEY = "default.dp-1"

pytestmark = pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])


async def subscribe_to_b(c: AdsClient, eds_a: Any) -> None:
    """What Envoy asks for once it has processed the clusters: b's endpoints too."""
    if c.delta:
        await c.send(ENDPOINT, subscribe=("b",))
    else:
        await c.send(ENDPOINT, nonce=eds_a.nonce, version=eds_a.version_info, names=("a", "b"))


async def ack_endpoints(c: AdsClient, eds: Any) -> None:
    if c.delta:
        await c.ack(eds)
    else:
        await c.ack(eds, names=("a", "b"))


async def test_a_listener_waits_until_the_new_cluster_it_routes_to_has_its_endpoints(delta: bool) -> None:
    async with ads_server() as srv:
        c, cds, eds_a = await listener_moved_to_new_cluster_b(srv, NODE_KEY, delta=delta)
        await c.expect_nothing()  # not with the clusters: b has no endpoints at the client yet
        await c.ack(cds)
        await c.expect_nothing()  # b's endpoints not asked for yet
        await subscribe_to_b(c, eds_a)
        eds = await c.recv()
        assert eds.type_url == ENDPOINT and "b" in names_of(eds)
        await c.expect_nothing()  # sent, not processed yet
        await ack_endpoints(c, eds)
        lds = await c.recv()
        assert (lds.type_url, names_of(lds)) == (LISTENER, ["l1"])


async def test_a_listener_held_for_a_cluster_that_never_warms_goes_after_the_warm_timeout(delta: bool) -> None:
    """A client that never asks for the new cluster's endpoints still gets the listener, `warm_timeout` later."""
    async with ads_server(warm_timeout=1.0) as srv:
        c, cds, _ = await listener_moved_to_new_cluster_b(srv, NODE_KEY, delta=delta)
        await c.ack(cds)
        await c.expect_nothing(0.5)
        lds = await c.recv(timeout=3.0)  # without anything else happening
        assert (lds.type_url, names_of(lds)) == (LISTENER, ["l1"])


async def test_a_listener_of_a_rejected_cluster_is_not_held(delta: bool) -> None:
    """Waiting cannot warm a cluster the client NACKed: the listener goes on (Envoy keeps its old one if it
    cannot use it), without waiting for the timeout."""
    async with ads_server(warm_timeout=30.0) as srv:
        c, cds, _ = await listener_moved_to_new_cluster_b(srv, NODE_KEY, delta=delta)
        await c.send(CLUSTER, nonce=cds.nonce, error="rejected")  # SotW: no version (it runs the older one)
        lds = await c.recv()
        assert (lds.type_url, names_of(lds)) == (LISTENER, ["l1"])


async def test_an_updated_cluster_does_not_hold_its_listener(delta: bool) -> None:
    """Envoy keeps serving an updated cluster's previous version while the new one warms: a listener update
    that goes with it is not held back (no extra round trip for a protocol change)."""
    async with ads_server(warm_timeout=30.0) as srv:
        c, _ = await listener_on_warm_cluster_a(srv, NODE_KEY, delta=delta)
        srv.cache.set_snapshot(NODE_KEY, snapshot(eds_cluster("a", connect_timeout_s=2), cla("a", 9000),
                                                  listener("l1", 15002, "a", ref=True)))
        types = {(await c.recv()).type_url for _ in range(3)}  # no ACK in between
        assert types == {CLUSTER, ENDPOINT, LISTENER}  # EDS: Envoy re-warms the cluster and waits for it
