"""Outbound: a listener per explicit Dataplane outbound, one cluster per destination (shared by every proxy
of the mesh that calls it with the same policies), and that destination's endpoints (EDS).

A destination is a service, or a subset of its endpoints selected by tags when a route (MeshHTTPRoute,
MeshTCPRoute) splits traffic by version: such a subset gets a cluster and an EDS resource of its own,
`<service>-<hash of the tags>`, holding only the endpoints whose tags match. Policy plugins say which
destinations a listener needs (`backends`) and shape listeners and clusters through their summaries.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from controlplane.xds.generate.targeting import tags_match

from ..resources import CLUSTER, ENDPOINT, LISTENER, SECRET, Ref, XdsResource
from ..topology import Endpoint, MeshTopology
from .context import Assignment, ProxyContext
from .envoy import CA_SECRET, IDENTITY_SECRET, pack, seconds, socket_address, stat_name, upstream_mtls
from .inbound import HTTP_PROTOCOLS
from .memo import ResourceMemo
from .plugins import Backend, PolicyPlugin, plugins

HTTP2 = ("http2", "grpc")
DEFAULT_OUTBOUND_ADDRESS = "127.0.0.1"


def service_cluster(ctx: ProxyContext, backend: Backend, protocol: str, keys: tuple[Hashable, ...],
                    cross_zone: bool = False) -> XdsResource:
    service, name = backend.service, backend.cluster_name
    cluster = cluster_pb2.Cluster(
        name=name, type=cluster_pb2.Cluster.EDS, connect_timeout=seconds(5),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            service_name=name, eds_config={"ads": {}, "resource_api_version": "V3"}),
    )
    if protocol in HTTP2:
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
        cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
            pack(options))
    refs = [Ref(ENDPOINT, name)]
    if ctx.mtls:
        cluster.transport_socket.CopyFrom(upstream_mtls(ctx.mesh, service, backend.tags))
        refs += [Ref(SECRET, IDENTITY_SECRET.format(mesh=ctx.mesh)), Ref(SECRET, CA_SECRET.format(mesh=ctx.mesh))]
    if cross_zone:
        # Other zones' ingresses are endpoints here: one that goes away (or whose zone loses the service)
        # is ejected after a few failed connections, before the zone's KDS update removes it.
        cluster.outlier_detection.consecutive_5xx.value = 3
        cluster.outlier_detection.interval.CopyFrom(seconds(5))
        cluster.outlier_detection.base_ejection_time.CopyFrom(seconds(30))
        cluster.outlier_detection.max_ejection_percent.value = 100
    for plugin, key in zip(plugins(), keys, strict=True):
        if key is not None:
            plugin.apply_outbound_cluster(ctx, service, cluster, key)
    return XdsResource.of(CLUSTER, name, cluster, refs)


def load_assignment(name: str, endpoints: tuple[Endpoint, ...], *, one_priority: bool = False) -> XdsResource:
    """Endpoints grouped by (priority, zone): one group in a single zone; with other zones' ingresses, the local
    zone at priority 0 and each other zone at priority 1 weighted by the instances it fronts, so Envoy uses
    them only as local instances fail (locality failover). `one_priority`: every zone at priority 0
    (MeshLoadBalancingStrategy `localityAwareness.disabled`)."""
    groups: dict[tuple[int, str], dict[tuple[str, int], int]] = {}
    for e in endpoints:
        # An ingress listing several tag sets of one service is one endpoint, weighted by all its instances.
        weights = groups.setdefault((0 if one_priority else e.priority, e.zone), {})
        weights[e.key] = weights.get(e.key, 0) + e.weight
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[
        endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(zone=zone) if zone else None, priority=priority,
            lb_endpoints=[_lb_endpoint(address, port, weight) for (address, port), weight in group.items()])
        for (priority, zone), group in sorted(groups.items())])
    return XdsResource.of(ENDPOINT, name, cla)


def _lb_endpoint(address: str, port: int, weight: int) -> endpoint_components_pb2.LbEndpoint:
    lb = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(address, port)),
        health_status=health_check_pb2.HEALTHY)
    if weight != 1:
        lb.load_balancing_weight.value = weight
    return lb


def subset_load_assignment(name: str, endpoints: tuple[Endpoint, ...], tags: tuple[tuple[str, str], ...],
                           one_priority: bool = False) -> XdsResource:
    """The endpoints of a destination: all of the service's, or those whose tags match the subset's."""
    if tags:
        want = dict(tags)
        endpoints = tuple(e for e in endpoints if tags_match(want, dict(e.tags)))
    return load_assignment(name, endpoints, one_priority=one_priority)


def outbound_listener(ctx: ProxyContext, address: str, port: int, service: str, protocol: str,
                      keys: tuple[Hashable, ...], backends: tuple[Backend, ...]) -> XdsResource:
    name = f"outbound:{address}:{port}"
    prefix = stat_name(f"outbound_{service}")
    if protocol in HTTP_PROTOCOLS:
        manager = hcm.HttpConnectionManager(
            stat_prefix=prefix, codec_type=hcm.HttpConnectionManager.AUTO,
            route_config=route_pb2.RouteConfiguration(name=name, virtual_hosts=[route_components_pb2.VirtualHost(
                name=service, domains=["*"], routes=[route_components_pb2.Route(
                    match=route_components_pb2.RouteMatch(prefix="/"),
                    route=route_components_pb2.RouteAction(cluster=service, timeout=seconds(15)))])]),
            http_filters=[hcm.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))],
        )
        if protocol in HTTP2:
            manager.http2_protocol_options.SetInParent()
        filters = [listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager",
                                                  typed_config=pack(manager))]
    else:
        filters = [listener_components_pb2.Filter(
            name="envoy.filters.network.tcp_proxy",
            typed_config=pack(tcp_proxy_pb2.TcpProxy(stat_prefix=prefix, cluster=service)))]
    listener = listener_pb2.Listener(
        name=name, address=socket_address(address, port), traffic_direction=base_pb2.OUTBOUND,
        enable_reuse_port={"value": False},
        filter_chains=[listener_components_pb2.FilterChain(filters=filters)])
    for plugin, key in zip(plugins(), keys, strict=True):
        if key is not None:
            plugin.apply_outbound_listener(ctx, service, listener, key)
    return XdsResource.of(LISTENER, name, listener, [Ref(CLUSTER, b.cluster_name) for b in backends])


def policy_types() -> tuple[str, ...]:
    ordered = plugins()
    if _policy_types and _policy_types[0][0] is ordered:
        return _policy_types[0][1]
    _policy_types[:] = [(ordered, tuple(p.policy_type for p in ordered if p.policy_type))]
    return _policy_types[0][1]


_policy_types: list[tuple[tuple[PolicyPlugin, ...], tuple[str, ...]]] = []  # for the plugins() it was made of


def listener_plan(ctx: ProxyContext, service: str) -> tuple[tuple[Hashable, ...], tuple[Backend, ...]]:
    """The plugins' summaries for the outbound listener of `service`, and the destinations it sends to."""
    keys = tuple(p.listener_key(ctx, service) for p in plugins())
    backends: list[Backend] | None = None
    for plugin, key in zip(plugins(), keys, strict=True):
        if key is not None:
            found = plugin.backends(ctx, service, key)
            if found is not None:
                backends = list(found)
    if backends is None:
        return keys, (Backend(service),)
    return keys, tuple(dict.fromkeys(backends))  # unique, in order


def cluster_plan(ctx: ProxyContext, service: str) -> tuple[Hashable, ...]:
    """The plugins' summaries for the clusters of destination `service`."""
    return tuple(p.cluster_key(ctx, service) for p in plugins())


VIP_PORT = 80  # the seed article's promise: <service>.mesh:80 reaches the service on its real port


def outbound_targets(ctx: ProxyContext) -> list[tuple[str, int, str]]:
    """(address, port, service) of every outbound listener: the Dataplane's explicit outbounds, then, for the
    proxy that owns the host's VIPs, VIP:80 and VIP:<each real port> of every service in the mesh."""
    targets = [(o.address or DEFAULT_OUTBOUND_ADDRESS, o.port, o.service) for o in ctx.spec.networking.outbound]
    taken = {(a, p) for a, p, _ in targets}
    for service, vip in sorted((ctx.vips or {}).items()):
        for port in (VIP_PORT, *ctx.topology.service_ports.get(service, ())):
            if (vip, port) not in taken:
                taken.add((vip, port))
                targets.append((vip, port, service))
    return targets


def generate(ctx: ProxyContext) -> list[XdsResource]:
    out: list[XdsResource] = []
    topo, mesh = ctx.topology, ctx.mesh
    rules = ctx.rules
    # Plugins' outbound summaries depend only on the proxy's `to[]` rules (and the mesh): proxies with the same
    # rules share them, computed once per mesh generation.
    signature = (rules.outbound_signature(ctx.dataplane, policy_types()),
                 tuple(p.outbound_source_key(ctx) for p in plugins()))
    plans: dict[str, tuple[tuple[Hashable, ...], tuple[Backend, ...]]] = {}
    destinations: dict[str, Backend] = {}
    for address, port, service in outbound_targets(ctx):
        protocol = topo.protocol(service)
        plan = plans.get(service)
        if plan is None:
            plan = plans[service] = rules.cached(("listener-plan", signature, service),
                                                 partial(listener_plan, ctx, service))
        keys, backends = plan
        for backend in backends:
            destinations.setdefault(backend.cluster_name, backend)
            ctx.used_services.add(backend.service)
        out.append(ctx.memo.get(
            ("outbound-listener", mesh, address, port, service, protocol, keys, backends),
            partial(outbound_listener, ctx, address, port, service, protocol, keys, backends)))
    cluster_keys: dict[str, tuple[Hashable, ...]] = {}
    for name, backend in destinations.items():
        service = backend.service
        protocol = topo.protocol(service)
        ckeys = cluster_keys.get(service)
        if ckeys is None:
            ckeys = cluster_keys[service] = rules.cached(("cluster-keys", signature, service),
                                                         partial(cluster_plan, ctx, service))
        cross_zone = is_cross_zone(topo, service)
        out.append(ctx.memo.get(("cluster", mesh, name, backend, protocol, ctx.mtls, ckeys, cross_zone),
                                partial(service_cluster, ctx, backend, protocol, ckeys, cross_zone)))
        one_priority = cross_zone and rules.cached(
            ("one-priority", signature, service),
            partial(_spreads_across_zones, ctx, service))
        key, assignment = endpoints_resource(ctx.memo, topo, name, backend, one_priority)
        out.append(assignment)
        ctx.assignments.append(Assignment(name, service, backend.tags, one_priority, key))
    return out


def endpoints_resource(memo: ResourceMemo, topo: MeshTopology, name: str, backend: Backend,
                       one_priority: bool) -> tuple[tuple[object, ...], XdsResource]:
    """The ClusterLoadAssignment `name` of destination `backend` in `topo`, and its memo key: the one place
    that says how it is built, for the full generation and for an endpoint-only patch (eds_patch.py) alike."""
    service = backend.service
    key = ("endpoints", topo.name, name, backend, topo.endpoint_keys.get(service, ""), one_priority)
    return key, memo.get(key, partial(subset_load_assignment, name, tuple(topo.endpoints.get(service, ())),
                                      backend.tags, one_priority))


def is_cross_zone(topo: MeshTopology, service: str) -> bool:
    """Whether some of the service's endpoints are other zones' ingresses (its clusters then eject failing
    ones, and MeshLoadBalancingStrategy may put every zone at one priority)."""
    return any(e.remote for e in topo.endpoints.get(service, ()))


def _spreads_across_zones(ctx: ProxyContext, service: str) -> bool:
    return any(p.spreads_across_zones(ctx, service) for p in plugins())
