"""Policy plugins: one per policy type, applied after the generators, in a fixed order.

A plugin shapes resources before they are serialised. Because resources are shared, a plugin first says
what of its policy affects a resource (`*_key`: a hashable summary, `None` when nothing applies); that
summary becomes part of the resource's memo key, so two proxies with the same inputs still share one built
resource, and a policy change rebuilds only the resources whose summary changed.

Outbound traffic has two kinds of resources with their own summaries:

- the outbound listener of a service S (`listener_key(ctx, S)`, applied by `apply_outbound_listener`): its
  routes, retries, request timeouts, hash policies. A routing plugin also says which destinations the
  listener sends to (`backends`), each becoming a cluster with its own endpoints;
- the clusters of a destination service T, including T's subset clusters (`cluster_key(ctx, T)`, applied
  by `apply_outbound_cluster`): connect timeout, health checks, circuit breakers, load balancing.

Both default to `outbound_key`, for plugins that shape the two the same way. Outbound summaries must depend
only on the proxy's `to[]` rules (`ctx.rules.to_rules`) and the mesh topology, never on the proxy itself:
proxies whose rules are the same share one computation of them (unless `outbound_source_key` says which
part of the proxy a plugin reads, e.g. MeshAccessLog's source service and address). Inbound: the listener
(`inbound_key`/`apply_inbound`) and the local cluster behind it (`local_cluster_key`/`apply_local_cluster`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from controlplane.resources.base import Resource
from controlplane.resources.dataplane import Inbound

from ..resources import XdsResource
from .context import ProxyContext


@dataclass(frozen=True, slots=True)
class Backend:
    """A destination an outbound listener sends traffic to: a service, or the subset of its endpoints with
    these tags (a cluster of its own, named `<service>-<hash of the tags>`)."""

    service: str
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def cluster_name(self) -> str:
        if not self.tags:
            return self.service
        text = ",".join(f"{k}={v}" for k, v in self.tags)
        return f"{self.service}-{hashlib.blake2b(text.encode(), digest_size=5).hexdigest()}"

    @classmethod
    def of(cls, service: str, tags: dict[str, str] | None = None) -> Backend:
        rest = {k: v for k, v in (tags or {}).items() if k != "kuma.io/service"}
        return cls(service, tuple(sorted(rest.items())))


class PolicyPlugin:
    """Base: every hook does nothing. A policy module overrides the hooks it needs and sets `order`."""

    policy_type: ClassVar[str] = ""
    order: ClassVar[int] = 100

    # --- inbound ---

    # Summaries most plugins use as their keys: this policy's merged `to[]` conf for a destination, or
    # merged `from[]` conf for an inbound, as canonical JSON (None when no policy applies).
    def to_conf_key(self, ctx: ProxyContext, service: str) -> str | None:
        merged = ctx.rules.to_conf(self.policy_type, ctx.dataplane, service)
        return None if merged is None else merged.json

    def from_conf_key(self, ctx: ProxyContext, inbound: Inbound) -> str | None:
        merged = ctx.rules.from_conf(self.policy_type, ctx.dataplane, inbound)
        return None if merged is None else merged.json

    def inbound_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        return None

    def apply_inbound(self, ctx: ProxyContext, inbound: Inbound, listener: listener_pb2.Listener,
                      key: Hashable) -> None:
        pass

    def local_cluster_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        return None

    def apply_local_cluster(self, ctx: ProxyContext, inbound: Inbound, cluster: cluster_pb2.Cluster,
                            key: Hashable) -> None:
        pass

    # --- outbound ---

    def outbound_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return None

    def listener_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return self.outbound_key(ctx, service)

    def cluster_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return self.outbound_key(ctx, service)

    def outbound_source_key(self, ctx: ProxyContext) -> Hashable:
        """What of the proxy itself (not its rules) this plugin's outbound summaries read, e.g. its services
        and address for an access log format; proxies differing here do not share outbound summaries. Keep it
        None unless needed: it splits the sharing."""
        return None

    def backends(self, ctx: ProxyContext, service: str, key: Hashable) -> Sequence[Backend] | None:
        """The destinations the outbound listener of `service` sends to, when this plugin decides them
        (routing); None leaves the default (the service itself)."""
        return None

    def apply_outbound_cluster(self, ctx: ProxyContext, service: str, cluster: cluster_pb2.Cluster,
                               key: Hashable) -> None:
        pass

    def spreads_across_zones(self, ctx: ProxyContext, service: str) -> bool:
        """Whether this policy puts the destination's endpoints in every zone at one priority (Kuma's
        MeshLoadBalancingStrategy `localityAwareness.disabled`), instead of local first, other zones as failover.
        Depends only on the proxy's `to[]` rules, like the outbound summaries."""
        return False

    # --- zone ingress ---

    def mesh_destinations(self, policies: Sequence[Resource]) -> Iterable[Backend]:
        """Every destination this policy type's resources (`policies`, one mesh's) can send traffic to, when
        the plugin routes: a zone ingress offers a filter chain for each subset a caller may name in its SNI."""
        return ()

    def apply_outbound_listener(self, ctx: ProxyContext, service: str, listener: listener_pb2.Listener,
                                key: Hashable) -> None:
        pass

    # --- resources of the proxy's own (a collector's cluster) ---

    def proxy_resources(self, ctx: ProxyContext) -> Sequence[tuple[Hashable, Callable[[], XdsResource]]]:
        """Resources this policy adds beside the listeners and clusters the generators build, e.g. the cluster
        of a tracing collector: (memo key, builder) pairs, so proxies with equal keys share one built resource."""
        return ()


_registered: dict[str, PolicyPlugin] = {}
_ordered: list[tuple[PolicyPlugin, ...]] = []  # plugins(), once per registration (asked per proxy and inbound)


def register_plugin(plugin: PolicyPlugin) -> PolicyPlugin:
    """Called by each policy module for its `PLUGIN` when it is imported (controlplane.resources.load_all
    imports them all): the framework never imports a policy."""
    _registered[plugin.policy_type] = plugin
    _ordered.clear()
    return plugin


def generate_proxy_resources(ctx: ProxyContext) -> list[XdsResource]:
    """The plugins' own resources for one proxy (the generator after outbound)."""
    return [ctx.memo.get(("plugin", plugin.policy_type, key), build)
            for plugin in plugins() for key, build in plugin.proxy_resources(ctx)]


def plugins() -> tuple[PolicyPlugin, ...]:
    """Every registered policy plugin, in `order` (then by policy type, so the order is fixed)."""
    if not _registered:
        raise RuntimeError("no policy plugin is registered: call controlplane.resources.load_all() first (it "
                           "imports the policy modules, which register their plugins)")
    if not _ordered:
        _ordered.append(tuple(sorted(_registered.values(), key=lambda p: (p.order, p.policy_type))))
    return _ordered[0]
