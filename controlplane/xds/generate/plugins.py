"""Policy plugins: one per policy type, applied after the generators, in a fixed order.

A plugin shapes resources before they are serialised. Because resources are shared, a plugin first says
what of its policy affects a resource (`*_key`: a hashable summary, `None` when nothing applies); that
summary becomes part of the resource's memo key, so two proxies with the same inputs still share one built
resource, and a policy change rebuilds only the resources whose summary changed.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Hashable
from typing import ClassVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from controlplane.resources.dataplane import Inbound

from .context import ProxyContext


class PolicyPlugin:
    """Base: every hook does nothing. A policy module overrides the hooks it needs and sets `order`."""

    policy_type: ClassVar[str] = ""
    order: ClassVar[int] = 100

    def inbound_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        return None

    def apply_inbound(self, ctx: ProxyContext, inbound: Inbound, listener: listener_pb2.Listener,
                      key: Hashable) -> None:
        pass

    def outbound_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return None

    def apply_outbound_cluster(self, ctx: ProxyContext, service: str, cluster: cluster_pb2.Cluster,
                               key: Hashable) -> None:
        pass

    def apply_outbound_listener(self, ctx: ProxyContext, service: str, listener: listener_pb2.Listener,
                                key: Hashable) -> None:
        pass


_plugins: list[PolicyPlugin] | None = None


def plugins() -> list[PolicyPlugin]:
    """Every policy module's `PLUGIN`, in `order` (then by policy type, so the order is fixed)."""
    global _plugins
    if _plugins is None:
        import controlplane.policies as policies

        found: list[PolicyPlugin] = []
        for info in pkgutil.iter_modules(policies.__path__):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{policies.__name__}.{info.name}")
            plugin = getattr(module, "PLUGIN", None)
            if plugin is not None:
                found.append(plugin)
        _plugins = sorted(found, key=lambda p: (p.order, p.policy_type))
    return _plugins
