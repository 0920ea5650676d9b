"""Snapshots: consistency (no EDS/RDS/SDS name without its owner, no owner without what it needs), content
versions (same content, same version: no spurious pushes)."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, Ref, XdsResource
from controlplane.xds.snapshot import InconsistentSnapshot, Snapshot


def cluster(name: str, *, eds: bool = True, timeout: int = 5) -> XdsResource:
    msg = cluster_pb2.Cluster(name=name)
    msg.connect_timeout.seconds = timeout
    return XdsResource.of(CLUSTER, name, msg, [Ref(ENDPOINT, name)] if eds else [])


def cla(name: str) -> XdsResource:
    return XdsResource.of(ENDPOINT, name, endpoint_pb2.ClusterLoadAssignment(cluster_name=name))


def test_consistent_snapshot_builds() -> None:
    snap = Snapshot.build([cluster("a"), cla("a")])
    assert set(snap.of_type(CLUSTER)) == {"a"} and set(snap.of_type(ENDPOINT)) == {"a"}


def test_cluster_without_its_endpoints_is_refused() -> None:
    with pytest.raises(InconsistentSnapshot, match="needs ClusterLoadAssignment 'a'"):
        Snapshot.build([cluster("a")])


def test_endpoints_without_a_cluster_are_refused() -> None:
    with pytest.raises(InconsistentSnapshot, match="no cluster that uses them"):
        Snapshot.build([cluster("a", eds=False), cla("b")])


def test_listener_needs_its_cluster() -> None:
    from envoy.config.listener.v3 import listener_pb2

    listener = XdsResource.of(LISTENER, "l", listener_pb2.Listener(name="l"), [Ref(CLUSTER, "missing")])
    with pytest.raises(InconsistentSnapshot, match="needs Cluster 'missing'"):
        Snapshot.build([listener])


def test_same_name_different_content_is_refused() -> None:
    with pytest.raises(InconsistentSnapshot, match="two different"):
        Snapshot.build([cluster("a", timeout=1), cluster("a", timeout=2), cla("a")])


def test_versions_follow_content_only() -> None:
    a = Snapshot.build([cluster("a"), cla("a"), cluster("b"), cla("b")])
    b = Snapshot.build([cla("b"), cluster("b"), cla("a"), cluster("a")])  # other order, same content
    assert a.version(CLUSTER) == b.version(CLUSTER) and a.version(ENDPOINT) == b.version(ENDPOINT)
    c = Snapshot.build([cluster("a", timeout=9), cla("a"), cluster("b"), cla("b")])
    assert c.version(CLUSTER) != a.version(CLUSTER)
    assert c.version(ENDPOINT) == a.version(ENDPOINT)  # only what changed gets a new version
    assert Snapshot.build([]).version(CLUSTER) == ""
