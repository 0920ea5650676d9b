"""Collectors outside the mesh that Envoy sends telemetry to (a tracing backend, an OpenTelemetry collector):
where they are (parsed and checked once, at the API) and the cluster Envoy reaches them through.

An address is a URL (`http://zipkin:9411/api/v2/spans`, `https://otel:4318/v1/traces`) or, for gRPC
OpenTelemetry, `host:port` (`otel-collector:4317`; the port defaults to 4317 as in Kuma). The cluster is
STATIC for an IP and STRICT_DNS for a hostname (Kuma's ProvidedEndpointCluster); `https` adds TLS with the
hostname as SNI. The policies name no CA for a collector, so its certificate is not verified: the traffic is
encrypted, the collector is not authenticated (say so to operators who need that).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from controlplane.resources.errors import Violations
from controlplane.resources.fields import check_address
from controlplane.xds.generate.envoy import HTTP_OPTIONS_KEY, pack, seconds, socket_address
from controlplane.xds.resources import CLUSTER, XdsResource

OTLP_GRPC_PORT = 4317  # Kuma's default when an OpenTelemetry endpoint names no port


@dataclass(frozen=True, slots=True)
class Collector:
    host: str
    port: int
    tls: bool = False
    path: str = ""

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_url(text: str) -> Collector | None:
    """An http(s) URL with a host; None when it is not one. The port defaults to the scheme's."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
            or parts.username is not None:
        return None
    tls = parts.scheme == "https"
    return Collector(parts.hostname, port or (443 if tls else 80), tls, parts.path)


def parse_host_port(text: str, default_port: int = OTLP_GRPC_PORT) -> Collector | None:
    """`host:port`, `host`, `[v6]:port`; None when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or (":" in host and not host.startswith("[")):
        host, port = text, ""
    host = host.strip("[]")
    if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
        return None
    if not host:
        return None
    return Collector(host, int(port) if port else default_port)


def check_url(v: Violations, path: str, text: str, example: str) -> Collector | None:
    found = parse_url(text)
    if found is None:
        v.add(path, f"{text!r} is not an http or https URL with a host: give e.g. {example}")
        return None
    check_address(v, path, found.host)
    if not 1 <= found.port <= 65535:
        v.add(path, f"port {found.port} is not a port: use 1-65535")
    return found


def check_endpoint(v: Violations, path: str, text: str, example: str) -> Collector | None:
    """An OpenTelemetry endpoint: `host:port` (gRPC) or an http(s) URL (OTLP over HTTP)."""
    if not text:
        v.add(path, f"must not be empty: give the collector, e.g. {example}")
        return None
    if "://" in text:
        return check_url(v, path, text, example)
    found = parse_host_port(text)
    if found is None:
        v.add(path, f"{text!r} is not host:port: give e.g. {example} (the port is 1-65535)")
        return None
    check_address(v, path, found.host)
    return found


def endpoint_of(text: str) -> Collector:
    """A validated address (URL or host:port) as a Collector."""
    found = parse_url(text) if "://" in text else parse_host_port(text)
    assert found is not None  # validated at the API
    return found


def collector_cluster(name: str, collector: Collector, *, http2: bool = False) -> XdsResource:
    try:
        ipaddress.ip_address(collector.host)
        is_ip = True
    except ValueError:
        is_ip = False
    kind = cluster_pb2.Cluster.STATIC if is_ip else cluster_pb2.Cluster.STRICT_DNS
    cluster = cluster_pb2.Cluster(
        name=name, type=kind, connect_timeout=seconds(5),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=socket_address(collector.host, collector.port)))])]))
    if http2:  # gRPC
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(options))
    if collector.tls:
        context = tls_pb2.UpstreamTlsContext(sni="" if is_ip else collector.host, allow_renegotiation=True)
        cluster.transport_socket.CopyFrom(base_pb2.TransportSocket(name="envoy.transport_sockets.tls",
                                                                   typed_config=pack(context)))
    return XdsResource.of(CLUSTER, name, cluster)
