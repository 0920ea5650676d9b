"""The zone ingress's Envoy config: where other zones' traffic enters this zone.

One listener on the ingress's `networking.address:port` with the TLS inspector and one filter chain per
destination it can reach, matched by SNI (`envoy.sni`, Kuma's `<service>{mesh=M,tag=value}`), each a TCP proxy
to a cluster of this zone's own healthy instances. No TLS is terminated here: the mTLS session runs from the
caller's Envoy to the destination's Envoy, which checks the caller's identity (MeshTrafficPermission applies
at the destination as for local traffic). An SNI that names nothing here matches no chain, so the connection is
closed. Only meshes with mTLS on are served: without TLS there is no SNI to route by.

Destinations are every service with local instances, plus each subset a route of the mesh can name
(`PolicyPlugin.mesh_destinations`: MeshHTTPRoute/MeshTCPRoute backendRefs by tags, `kuma.io/zone` included)
that matches at least one local instance, so a caller's subset cluster finds its chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from controlplane.resources.base import Resource
from controlplane.resources.zone import ZoneIngressSpec

from ..resources import CLUSTER, ENDPOINT, LISTENER, Ref, XdsResource
from ..snapshot import Snapshot
from ..topology import Endpoint, MeshTopology
from .envoy import TCP_PROXY_FILTER, pack, seconds, sni, socket_address, stat_name
from .memo import ResourceMemo
from .outbound import load_assignment
from .plugins import Backend, plugins
from .targeting import tags_match


def ingress_destinations(topo: MeshTopology) -> list[tuple[Backend, tuple[Endpoint, ...]]]:
    """(destination, its local healthy instances) of one mesh, for every destination with at least one."""
    subsets: dict[str, set[Backend]] = {}
    for plugin in plugins():
        found = topo.policies.get(plugin.policy_type)
        if found:
            for backend in plugin.mesh_destinations(found):
                if backend.tags:
                    subsets.setdefault(backend.service, set()).add(backend)
    out = []
    for service in topo.services():
        local = tuple(e for e in topo.endpoints[service] if not e.remote)
        if not local:
            continue
        out.append((Backend(service), local))
        for backend in sorted(subsets.get(service, ()), key=lambda b: b.tags):
            want = dict(backend.tags)
            matching = tuple(e for e in local if tags_match(want, dict(e.tags)))
            if matching:
                out.append((backend, matching))
    return out


def cluster_name(mesh: str, backend: Backend) -> str:
    return f"{mesh}:{backend.cluster_name}"


def ingress_cluster(name: str) -> XdsResource:
    cluster = cluster_pb2.Cluster(
        name=name, type=cluster_pb2.Cluster.EDS, connect_timeout=seconds(5),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            service_name=name, eds_config={"ads": {}, "resource_api_version": "V3"}))
    return XdsResource.of(CLUSTER, name, cluster, [Ref(ENDPOINT, name)])


def ingress_listener(address: str, port: int, chains: tuple[tuple[str, str], ...]) -> XdsResource:
    """`chains`: (SNI, cluster) pairs, sorted."""
    name = f"inbound:{address}:{port}"
    listener = listener_pb2.Listener(
        name=name, address=socket_address(address, port), traffic_direction=base_pb2.INBOUND,
        enable_reuse_port={"value": False},
        listener_filters=[listener_components_pb2.ListenerFilter(
            name="envoy.filters.listener.tls_inspector", typed_config=pack(tls_inspector_pb2.TlsInspector()))])
    for server_name, cluster in chains:
        chain = listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name=TCP_PROXY_FILTER,
            typed_config=pack(tcp_proxy_pb2.TcpProxy(stat_prefix=stat_name(f"ingress_{cluster}"), cluster=cluster)))])
        chain.filter_chain_match.server_names.append(server_name)
        chain.filter_chain_match.transport_protocol = "tls"
        listener.filter_chains.append(chain)
    return XdsResource.of(LISTENER, name, listener, [Ref(CLUSTER, c) for _, c in chains])


def generate_ingress(ingress: Resource, topologies: Iterable[MeshTopology], memo: ResourceMemo) -> Snapshot:
    """The snapshot of the zone ingress `ingress` given every mesh's topology."""
    spec = ingress.spec
    assert isinstance(spec, ZoneIngressSpec)
    items: list[XdsResource] = []
    chains: list[tuple[str, str]] = []
    for topo in sorted(topologies, key=lambda t: t.name):
        if not topo.mtls_enabled:
            continue
        for backend, endpoints in ingress_destinations(topo):
            name = cluster_name(topo.name, backend)
            chains.append((sni(topo.name, backend.service, backend.tags), name))
            items.append(memo.get(("ingress-cluster", name), partial(ingress_cluster, name)))
            items.append(memo.get(("ingress-endpoints", name, endpoints), partial(load_assignment, name, endpoints)))
    net = spec.networking
    ordered = tuple(sorted(chains))
    if not ordered:
        return Snapshot.build(items)  # nothing to offer yet: Envoy refuses a listener without filter chains
    items.append(memo.get(("ingress-listener", net.address, net.port, ordered),
                          partial(ingress_listener, net.address, net.port, ordered)))
    return Snapshot.build(items)
