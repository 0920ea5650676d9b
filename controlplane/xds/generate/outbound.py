"""Outbound: a listener per explicit Dataplane outbound, one cluster per destination service (shared by
every proxy of the mesh that calls it), and that service's endpoints (EDS)."""

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

from ..resources import CLUSTER, ENDPOINT, LISTENER, SECRET, Ref, XdsResource
from ..topology import Endpoint
from .context import ProxyContext
from .envoy import CA_SECRET, IDENTITY_SECRET, pack, seconds, socket_address, stat_name, upstream_mtls
from .inbound import HTTP_PROTOCOLS
from .plugins import plugins

HTTP2 = ("http2", "grpc")
DEFAULT_OUTBOUND_ADDRESS = "127.0.0.1"


def service_cluster(ctx: ProxyContext, service: str, protocol: str, keys: tuple[Hashable, ...]) -> XdsResource:
    cluster = cluster_pb2.Cluster(
        name=service, type=cluster_pb2.Cluster.EDS, connect_timeout=seconds(5),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            service_name=service, eds_config={"ads": {}, "resource_api_version": "V3"}),
    )
    if protocol in HTTP2:
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
        cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
            pack(options))
    refs = [Ref(ENDPOINT, service)]
    if ctx.mtls:
        cluster.transport_socket.CopyFrom(upstream_mtls(ctx.mesh, service))
        refs += [Ref(SECRET, IDENTITY_SECRET.format(mesh=ctx.mesh)), Ref(SECRET, CA_SECRET.format(mesh=ctx.mesh))]
    for plugin, key in zip(plugins(), keys, strict=True):
        if key is not None:
            plugin.apply_outbound_cluster(ctx, service, cluster, key)
    return XdsResource.of(CLUSTER, service, cluster, refs)


def load_assignment(service: str, endpoints: tuple[Endpoint, ...]) -> XdsResource:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=service, endpoints=[
        endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=socket_address(e.address, e.port)),
                health_status=health_check_pb2.HEALTHY)
            for e in endpoints])])
    return XdsResource.of(ENDPOINT, service, cla)


def outbound_listener(ctx: ProxyContext, address: str, port: int, service: str, protocol: str,
                      keys: tuple[Hashable, ...]) -> XdsResource:
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
    return XdsResource.of(LISTENER, name, listener, [Ref(CLUSTER, service)])


def generate(ctx: ProxyContext) -> list[XdsResource]:
    out: list[XdsResource] = []
    topo, mesh = ctx.topology, ctx.mesh
    services: dict[str, tuple[Hashable, ...]] = {}
    for outbound in ctx.spec.networking.outbound:
        service = outbound.service
        protocol = topo.protocol(service)
        keys = services.get(service)
        if keys is None:
            keys = services[service] = tuple(p.outbound_key(ctx, service) for p in plugins())
        address = outbound.address or DEFAULT_OUTBOUND_ADDRESS
        out.append(ctx.memo.get(
            ("outbound-listener", mesh, address, outbound.port, service, protocol, keys),
            partial(outbound_listener, ctx, address, outbound.port, service, protocol, keys)))
    for service, keys in services.items():
        protocol = topo.protocol(service)
        out.append(ctx.memo.get(("cluster", mesh, service, protocol, ctx.mtls, keys),
                                partial(service_cluster, ctx, service, protocol, keys)))
        endpoints = tuple(topo.endpoints.get(service, ()))
        out.append(ctx.memo.get(("endpoints", mesh, service, topo.endpoint_keys.get(service, "")),
                                partial(load_assignment, service, endpoints)))
    return out
