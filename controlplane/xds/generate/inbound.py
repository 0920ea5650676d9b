"""Inbound: one listener per Dataplane inbound (HTTP connection manager for http, TCP proxy otherwise),
and the local cluster that reaches the application behind it."""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from controlplane.resources.dataplane import PROTOCOL_TAG, Inbound

from ..resources import CLUSTER, LISTENER, SECRET, Ref, XdsResource
from .context import ProxyContext
from .envoy import CA_SECRET, IDENTITY_SECRET, downstream_mtls, pack, seconds, socket_address, stat_name
from .plugins import plugins

HTTP_PROTOCOLS = ("http", "http2", "grpc")


def local_cluster_name(inbound: Inbound) -> str:
    return f"localhost:{inbound.workload_port}" if inbound.service_address in (None, "127.0.0.1") \
        else f"{inbound.service_address}:{inbound.workload_port}"


def inbound_address(ctx: ProxyContext, inbound: Inbound) -> str:
    return inbound.address or ctx.spec.networking.address


def local_cluster(ctx: ProxyContext, inbound: Inbound, keys: tuple[Hashable, ...]) -> XdsResource:
    name = local_cluster_name(inbound)
    address = inbound.service_address or "127.0.0.1"
    cluster = cluster_pb2.Cluster(
        name=name, type=cluster_pb2.Cluster.STATIC, connect_timeout=seconds(5),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=socket_address(address, inbound.workload_port)))])]),
    )
    for plugin, key in zip(plugins(), keys, strict=True):
        if key is not None:
            plugin.apply_local_cluster(ctx, inbound, cluster, key)
    return XdsResource.of(CLUSTER, name, cluster)


def _network_filters(ctx: ProxyContext, inbound: Inbound, listener_name: str, tls: bool) -> list[
        listener_components_pb2.Filter]:
    protocol = inbound.tags.get(PROTOCOL_TAG, "tcp")
    target = local_cluster_name(inbound)
    prefix = stat_name(listener_name)
    if protocol not in HTTP_PROTOCOLS:
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=prefix, cluster=target)
        return [listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(proxy))]
    manager = hcm.HttpConnectionManager(
        stat_prefix=prefix, codec_type=hcm.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(name=listener_name, virtual_hosts=[
            route_components_pb2.VirtualHost(name=inbound.service, domains=["*"], routes=[route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix="/"),
                route=route_components_pb2.RouteAction(cluster=target, timeout=seconds(0)))])]),
        http_filters=[hcm.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))],
    )
    if protocol in ("http2", "grpc"):
        manager.http2_protocol_options.SetInParent()
    if tls:
        # Tell the application who called, as Kuma does: the caller's URI SAN (its SPIFFE ID) in XFCC.
        manager.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
        manager.set_current_client_cert_details.uri = True
    else:
        manager.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE
    return [listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager",
                                           typed_config=pack(manager))]


def inbound_listener(ctx: ProxyContext, inbound: Inbound, plugin_keys: tuple[Hashable, ...]) -> XdsResource:
    address = inbound_address(ctx, inbound)
    name = f"inbound:{address}:{inbound.port}"
    # No SO_REUSEPORT: a second proxy on the same host and port must fail to bind, not split the traffic.
    listener = listener_pb2.Listener(name=name, address=socket_address(address, inbound.port),
                                     traffic_direction=base_pb2.INBOUND, enable_reuse_port={"value": False})
    refs = [Ref(CLUSTER, local_cluster_name(inbound))]
    if ctx.mtls:
        refs += [Ref(SECRET, IDENTITY_SECRET.format(mesh=ctx.mesh)), Ref(SECRET, CA_SECRET.format(mesh=ctx.mesh))]
        tls_chain = listener_components_pb2.FilterChain(
            filters=_network_filters(ctx, inbound, name, tls=True), transport_socket=downstream_mtls(ctx.mesh))
        if ctx.topology.permissive:
            # PERMISSIVE: mTLS when the client speaks TLS, plaintext otherwise (migration aid, as in Kuma).
            listener.listener_filters.append(listener_components_pb2.ListenerFilter(
                name="envoy.filters.listener.tls_inspector", typed_config=pack(tls_inspector_pb2.TlsInspector())))
            tls_chain.filter_chain_match.transport_protocol = "tls"
            plain = listener_components_pb2.FilterChain(filters=_network_filters(ctx, inbound, name, tls=False))
            plain.filter_chain_match.transport_protocol = "raw_buffer"
            listener.filter_chains.extend([tls_chain, plain])
        else:
            listener.filter_chains.append(tls_chain)
    else:
        listener.filter_chains.append(listener_components_pb2.FilterChain(
            filters=_network_filters(ctx, inbound, name, tls=False)))
    for plugin, key in zip(plugins(), plugin_keys, strict=True):
        if key is not None:
            plugin.apply_inbound(ctx, inbound, listener, key)
    return XdsResource.of(LISTENER, name, listener, refs)


def generate(ctx: ProxyContext) -> list[XdsResource]:
    out: list[XdsResource] = []
    topo = ctx.topology
    for inbound in ctx.spec.networking.inbound:
        keys = tuple(p.inbound_key(ctx, inbound) for p in plugins())
        listener_key = ("inbound", ctx.mesh, inbound_address(ctx, inbound), inbound.model_dump_json(),
                        ctx.mtls, topo.permissive, keys)
        out.append(ctx.memo.get(listener_key, partial(inbound_listener, ctx, inbound, keys)))
        local_keys = tuple(p.local_cluster_key(ctx, inbound) for p in plugins())
        out.append(ctx.memo.get(("local", local_cluster_name(inbound), inbound.service_address, local_keys),
                                partial(local_cluster, ctx, inbound, local_keys)))
    return out
