"""VipAllocation: the virtual IPs of every service of every mesh in this zone (kept by the control plane).

One stored document per zone control plane (name `vips`), written only by the leader's VIP allocator with
optimistic concurrency: every write is computed from the version it read, so two writers can never hand out
the same address (see controlplane/dns/allocator.py). Users read it (`GET /vip-allocations/vips`), never
write it; kuma-dp and the Envoy generators read the per-mesh view (`GET /meshes/{mesh}/vips`,
controlplane/dns/vips.py).

    type: VipAllocation
    name: vips
    spec:
      meshes:
        default:
          services:
            backend: {ip: 127.240.0.1, tproxyIp: 240.0.0.1, allocated: "2024-05-01T10:00:00+00:00"}
            old-svc: {ip: 127.240.0.2, tproxyIp: 240.0.0.2, allocated: "...", goneSince: "..."}
      cursors: {127.240.0.0/12: 127.240.0.2, 240.0.0.0/4: 240.0.0.2}
      unallocated: {}   # mesh -> service -> why it has no VIP (a range exhausted)
"""

from __future__ import annotations

from .base import ResourceType, Scope, Spec, register

VIP_ALLOCATION_NAME = "vips"


class VipEntry(Spec):
    ip: str  # from the primary range (KUMA_DNS_SERVER_CIDR): what `<service>.mesh` resolves to
    tproxy_ip: str | None = None  # from the transparent-proxy range, when one is configured
    allocated: str | None = None  # RFC 3339 time the VIP was handed out
    gone_since: str | None = None  # RFC 3339; set while no dataplane or ingress offers the service


class MeshVipAllocation(Spec):
    services: dict[str, VipEntry] = {}


class VipAllocationSpec(Spec):
    meshes: dict[str, MeshVipAllocation] = {}
    # CIDR -> the last address handed out from it: the next allocation starts after it, so a released VIP
    # is the last one to be handed out again (clients may still hold it in a DNS cache).
    cursors: dict[str, str] = {}
    unallocated: dict[str, dict[str, str]] = {}


VIP_ALLOCATION = register(ResourceType(
    name="VipAllocation", plural="vip-allocations", singular="vip-allocation", scope=Scope.GLOBAL,
    spec_cls=VipAllocationSpec, readonly=True,
    description="Virtual IPs of the services of every mesh, kept by the zone control plane.",
))
