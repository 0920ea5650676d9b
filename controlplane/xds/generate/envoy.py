"""Small builders for the Envoy messages every generator needs (addresses, ADS sources, TLS, Any)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

IDENTITY_SECRET = "identity_cert:secret:{mesh}"
CA_SECRET = "mesh_ca:secret:{mesh}"


def pack(message: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(message)
    return a


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def socket_address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                          resource_api_version=config_source_pb2.V3)


def stat_name(text: str) -> str:
    """Envoy stat prefixes: keep them readable but free of the separators Envoy's stats use."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text)


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_source())


def spiffe_id(mesh: str, service: str) -> str:
    return f"spiffe://{mesh}/{service}"


def sni(mesh: str, service: str, tags: Iterable[tuple[str, str]] = ()) -> str:
    """Kuma's SNI for mesh traffic, which a zone ingress routes by: the service, then the mesh and the subset's
    tags as `key=value` sorted by key (Kuma's `SNIFromTags`): `billing{mesh=default}`,
    `invoices{kuma.io/zone=zone-2,mesh=default,version=v2}`. Both sides use this one helper."""
    pairs = sorted({"mesh": mesh, **{k: v for k, v in tags if k != "kuma.io/service"}}.items())
    return f"{service}{{{','.join(f'{k}={v}' for k, v in pairs)}}}"


def _common_tls(mesh: str, *, peer_sans: list[str] | None) -> tls_pb2.CommonTlsContext:
    ctx = tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2),
        tls_certificate_sds_secret_configs=[sds(IDENTITY_SECRET.format(mesh=mesh))],
    )
    default = common_pb2.CertificateValidationContext()
    for san in peer_sans or ():
        default.match_typed_subject_alt_names.append(common_pb2.SubjectAltNameMatcher(
            san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=string_pb2.StringMatcher(exact=san)))
    ctx.combined_validation_context.CopyFrom(tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
        default_validation_context=default,
        validation_context_sds_secret_config=sds(CA_SECRET.format(mesh=mesh)),
    ))
    return ctx


def downstream_mtls(mesh: str) -> base_pb2.TransportSocket:
    """Inbound: require a client certificate signed by the mesh CA (RBAC then checks who it is)."""
    ctx = tls_pb2.DownstreamTlsContext(common_tls_context=_common_tls(mesh, peer_sans=None))
    ctx.require_client_certificate.value = True
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(ctx))


def upstream_mtls(mesh: str, service: str, tags: Iterable[tuple[str, str]] = ()) -> base_pb2.TransportSocket:
    """Outbound: present our identity, and accept only the destination service's SPIFFE ID. The SNI names the
    destination (and the subset, for a split by tags) for a zone ingress on the way."""
    ctx = tls_pb2.UpstreamTlsContext(sni=sni(mesh, service, tags),
                                     common_tls_context=_common_tls(mesh, peer_sans=[spiffe_id(mesh, service)]))
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(ctx))


# --- editing built listeners (policy plugins) -------------------------------------------------------

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"


def update_filters(listener: Any, name: str, message_cls: type[M], edit: Callable[[M], None]) -> bool:
    """Unpack every network filter called `name` on every filter chain, let `edit` change it, pack it back.
    Returns whether any was found (a plugin for HTTP leaves a TCP proxy alone, and the other way round)."""
    found = False
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.name != name:
                continue
            message = message_cls()
            f.typed_config.Unpack(message)
            edit(message)
            f.typed_config.CopyFrom(pack(message))
            found = True
    return found


def duration(ns: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(ns)
    return d


HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def update_http_protocol_options(cluster: Any, edit: Callable[[Any], None]) -> None:
    """Edit a cluster's upstream HttpProtocolOptions; a cluster without them gets explicit HTTP/1.1 (what
    Envoy uses anyway), since Envoy requires the protocol choice once the options exist."""
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

    options = http_protocol_options_pb2.HttpProtocolOptions()
    existing = cluster.typed_extension_protocol_options
    if HTTP_OPTIONS_KEY in existing:
        existing[HTTP_OPTIONS_KEY].Unpack(options)
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    edit(options)
    existing[HTTP_OPTIONS_KEY].CopyFrom(pack(options))
