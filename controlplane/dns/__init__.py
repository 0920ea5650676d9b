"""VIP allocation and the authoritative `.mesh` DNS server of a zone control plane.

- `VipAllocator` (allocator.py, leader-only): one VIP per `kuma.io/service` per mesh, stored, stable.
- `VipView` (vips.py, every instance): the per-mesh VIP map others read (`MeshVips`, a version).
- `DnsServer` (server.py, every instance): `<service>.mesh` over UDP and TCP from that map.
- `VipApi` (api.py): `GET /meshes/{mesh}/vips` for kuma-dp.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from .allocator import VipAllocator, plan
from .api import VipApi
from .names import valid_name
from .ranges import VipRange, VipRangeError, check_ranges
from .server import DnsServer
from .vips import MeshVips, VipMap, VipView, load_mesh_vips, load_vip_map
from .wire import DnsTable

if TYPE_CHECKING:
    from controlplane.runtime import Runtime

__all__ = [
    "DnsServer", "DnsTable", "MeshVips", "VipAllocator", "VipApi", "VipMap", "VipRange", "VipRangeError",
    "VipView", "add_dns", "load_mesh_vips", "load_vip_map", "plan",
]


def add_dns(runtime: Runtime) -> VipApi:
    """Add the VIP view and the DNS server (every zone instance) and the allocator (leader only) to a
    runtime; returns the API routes to serve. Raises VipRangeError for settings that cannot work."""
    cfg = runtime.config.dns_server
    domain = cfg.domain.strip(".").lower()
    if not domain or not valid_name(domain):
        raise VipRangeError(f"KUMA_DNS_SERVER_DOMAIN={cfg.domain!r} is not a DNS name")
    primary = VipRange(cfg.cidr, "KUMA_DNS_SERVER_CIDR")
    tproxy = (VipRange(cfg.transparent_proxy_cidr, "KUMA_DNS_SERVER_TRANSPARENT_PROXY_CIDR")
              if cfg.transparent_proxy_cidr else None)
    check_ranges(primary, tproxy)
    view = VipView(runtime.store, domain, supervisor=runtime.supervisor)
    runtime.add(view)
    runtime.add(DnsServer(cfg.interface, cfg.port, domain=domain, ttl=cfg.ttl, view=view,
                          tcp_idle_timeout=cfg.tcp_idle_timeout, tcp_max_connections=cfg.tcp_max_connections,
                          tcp_max_connections_per_source=cfg.tcp_max_connections_per_source))
    runtime.add(VipAllocator(runtime.store, primary, tproxy, grace=timedelta(seconds=cfg.vip_release_grace),
                             supervisor=runtime.supervisor),
                leader_only=True)
    return VipApi(runtime.store, view)
