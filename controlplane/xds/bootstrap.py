"""The Envoy bootstrap for one dataplane, as kuma-dp asks for it.

kuma-dp calls the dp-server (same port as ADS, 5678) with `BootstrapRequest` as JSON in a unary gRPC method
(`/kuma.vm.dp.v1.Bootstrap/Get`): gRPC because the port already speaks it and grpcio cannot share a port
with plain HTTP; JSON because both sides already have the resource model, and a .proto of our own would
only repeat it. The answer is the complete bootstrap: node id `<mesh>.<name>`, the ADS cluster pointing back
at the control plane over TLS (verified with the CA kuma-dp trusts), the dataplane token as `authorization`
metadata on the ADS stream, and an admin listener on the loopback port kuma-dp picked for this dataplane
(so several dataplanes on one host never collide).
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

from controlplane import __version__
from controlplane.resources.documents import DocumentError, load_json

ADS_CLUSTER = "ads_cluster"
DATAPLANE_METADATA = "dataplane.resource"  # node metadata key Kuma uses for the registering Dataplane
VIP_LISTENERS_METADATA = "kuma.io/vip-listeners"  # this proxy serves the host's VIP:80 / VIP:port listeners
PROXY_TYPE_METADATA = "kuma.io/proxy-type"  # dataplane or ingress: what the token must be for
PROXY_TYPES = ("dataplane", "ingress")
ApiType = Literal["delta", "sotw"]


class BootstrapRequestError(ValueError):
    """The request itself is malformed; `field` names which part."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class BootstrapRequest:
    mesh: str
    name: str
    token: str
    admin_port: int
    cp_host: str  # the address kuma-dp reached us on: the ADS cluster uses the same one
    cp_port: int
    dataplane: dict[str, Any] | None = None  # universal form; None: the Dataplane must already exist
    proxy_type: str = "dataplane"
    api_type: ApiType = "delta"
    admin_address: str = "127.0.0.1"
    vip_listeners: bool = False  # this proxy owns its host's `.mesh` VIPs (kuma-dp --dns-enabled)
    dp_version: str = ""
    envoy_version: str = ""

    @classmethod
    def from_json(cls, raw: bytes, default_api_type: str = "delta") -> BootstrapRequest:
        """Parse kuma-dp's request; `apiType` absent means the control plane's choice (KUMA_DP_SERVER_API_TYPE)."""
        try:
            doc = load_json(raw)  # bounded: a deeply nested body is refused, not a RecursionError
        except DocumentError as e:
            raise BootstrapRequestError("body", str(e)) from None
        if not isinstance(doc, dict):
            raise BootstrapRequestError("body", "must be a JSON object")
        known = {"mesh", "name", "dataplaneToken", "adminPort", "adminAddress", "cpHost", "cpPort", "dataplane",
                 "proxyType", "apiType", "version", "vipListeners"}
        for key in doc:
            if key not in known:
                raise BootstrapRequestError(key, f"unknown field (known: {', '.join(sorted(known))})")

        def text(key: str, required: bool = True) -> str:
            value = doc.get(key, "")
            if not isinstance(value, str) or (required and not value):
                raise BootstrapRequestError(key, "is required" if not value else "must be a string")
            return value

        def port(key: str) -> int:
            value = doc.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                raise BootstrapRequestError(key, f"must be a port in [1, 65535], got {value!r}")
            return value

        dataplane = doc.get("dataplane")
        if dataplane is not None and not isinstance(dataplane, dict):
            raise BootstrapRequestError("dataplane", "must be a Dataplane in its universal (JSON) form")
        proxy_type = doc.get("proxyType", "dataplane")
        if proxy_type not in PROXY_TYPES:
            raise BootstrapRequestError("proxyType", f"must be one of {', '.join(PROXY_TYPES)}")
        api_type = doc.get("apiType") or default_api_type
        if api_type not in ("delta", "sotw"):
            raise BootstrapRequestError("apiType", "must be delta or sotw")
        api: ApiType = "delta" if api_type == "delta" else "sotw"
        admin_address = text("adminAddress", required=False) or "127.0.0.1"
        try:
            if not ipaddress.ip_address(admin_address).is_loopback:
                raise BootstrapRequestError("adminAddress", "the Envoy admin API must stay on a loopback address")
        except ValueError:
            raise BootstrapRequestError("adminAddress", f"{admin_address!r} is not an IP address") from None
        vip_listeners = doc.get("vipListeners", False)
        if not isinstance(vip_listeners, bool):
            raise BootstrapRequestError("vipListeners", "must be true or false")
        version = doc.get("version") or {}
        if not isinstance(version, dict):
            raise BootstrapRequestError("version", "must be an object")
        return cls(mesh=text("mesh"), name=text("name"), token=text("dataplaneToken"), admin_port=port("adminPort"),
                   cp_host=text("cpHost"), cp_port=port("cpPort"), dataplane=dataplane, proxy_type=proxy_type,
                   api_type=api, admin_address=admin_address, vip_listeners=vip_listeners,
                   dp_version=str(version.get("kumaDp", "")), envoy_version=str(version.get("envoy", "")))

    @property
    def node_id(self) -> str:
        return ingress_node_id(self.name) if self.proxy_type == "ingress" else node_id(self.mesh, self.name)


def node_id(mesh: str, name: str) -> str:
    """Mesh names are DNS labels (no dots), so the first dot always separates mesh from name."""
    return f"{mesh}.{name}"


# A zone ingress belongs to no mesh: its node id is `ingress:<name>` (a colon never appears in a mesh name).
INGRESS_NODE_PREFIX = "ingress:"


def ingress_node_id(name: str) -> str:
    return f"{INGRESS_NODE_PREFIX}{name}"


def ingress_name(value: str) -> str | None:
    """The ZoneIngress a node id names, or None for a dataplane's."""
    return value[len(INGRESS_NODE_PREFIX):] if value.startswith(INGRESS_NODE_PREFIX) else None


def split_node_id(value: str) -> tuple[str, str]:
    if value.startswith(INGRESS_NODE_PREFIX):
        raise ValueError(f"node id {value!r} is a zone ingress's, not '<mesh>.<dataplane name>'")
    mesh, dot, name = value.partition(".")
    if not dot or not mesh or not name:
        raise ValueError(f"node id {value!r} is not '<mesh>.<dataplane name>'")
    return mesh, name


def render(req: BootstrapRequest, *, ca_pem: bytes, service: str, dataplane_json: str | None) -> dict[str, Any]:
    """The Envoy bootstrap (JSON form) for this dataplane."""
    metadata: dict[str, Any] = {PROXY_TYPE_METADATA: req.proxy_type, "kuma.io/cp-version": __version__}
    if dataplane_json is not None:
        metadata[DATAPLANE_METADATA] = dataplane_json
    if req.vip_listeners:
        metadata[VIP_LISTENERS_METADATA] = True
    if req.dp_version:
        metadata["kuma.io/dp-version"] = req.dp_version
    try:
        ipaddress.ip_address(req.cp_host)
        discovery = "STATIC"
    except ValueError:
        discovery = "STRICT_DNS"
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": req.node_id, "cluster": service, "metadata": metadata},
        "admin": {"address": {"socket_address": {"address": req.admin_address, "port_value": req.admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if req.api_type == "delta" else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{
                    "envoy_grpc": {"cluster_name": ADS_CLUSTER},
                    "initial_metadata": [{"key": "authorization", "value": f"Bearer {req.token}"}],
                }],
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {"clusters": [{
            "name": ADS_CLUSTER,
            "type": discovery,
            # A name for the control plane: try A first (hosts without AAAA answers otherwise wait for
            # c-ares timeouts, 25 s in the packaging tests, before the first connection).
            **({"dns_lookup_family": "V4_PREFERRED"} if discovery == "STRICT_DNS" else {}),
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {
                    "connection_keepalive": {"interval": "10s", "timeout": "10s"}}},
            }},
            "load_assignment": {"cluster_name": ADS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": req.cp_host, "port_value": req.cp_port}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": req.cp_host,
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"inline_bytes": base64.b64encode(ca_pem).decode()},
                    "match_typed_subject_alt_names": [{"san_type": "IP_ADDRESS" if discovery == "STATIC" else "DNS",
                                                       "matcher": {"exact": req.cp_host}}],
                }},
            }},
            # The control plane restarting must not leave Envoy without config: it keeps what it has and
            # reconnects (Envoy's default ADS retry), so no outlier ejection or health checks here.
        }]},
        # Bound what one proxy will hold (Envoy warns when no downstream connection limit is configured).
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                         "DownstreamConnectionsConfig",
                "max_active_downstream_connections": 50000}}]},
        "stats_config": {"stats_tags": [{"tag_name": "mesh", "fixed_value": req.mesh},
                                        {"tag_name": "dataplane", "fixed_value": req.name}]},
    }
