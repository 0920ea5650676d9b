"""MeshTCPRoute: weighted routing of outbound TCP connections.

Each `to[]` entry names a destination (`targetRef` MeshService; Mesh under a MeshGateway) and at most one
rule (Kuma allows at most one, as there is nothing to match on in TCP; `rules: []` turns an inherited
route off): `rules[0].default.backendRefs[]`
of MeshService / MeshServiceSubset with `name`, `tags`, `weight` (>= 0, default 1, not all 0) and `port`.

A MeshHTTPRoute for the same destination takes precedence over a MeshTCPRoute (Kuma's rule, applied by
the xDS layer).

Envoy effect (end of this module): the outbound listener's TCP proxy goes to the merged rule's backends, one
`cluster` or `weighted_clusters` (weight 0 backends are left out; a MeshServiceSubset backend is a cluster of
the matching endpoints). For a service speaking HTTP, a MeshHTTPRoute wins; with only a MeshTCPRoute the
listener becomes a plain TCP proxy, as in Kuma.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Sequence

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from pydantic import Field

from controlplane.resources.base import Resource, ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import HCM_FILTER, TCP_PROXY_FILTER, pack, stat_name
from controlplane.xds.generate.plugins import Backend, PolicyPlugin, register_plugin
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_GATEWAY,
    MESH_SERVICE,
    SELECTS_NOTHING_YET,
    TOP_LEVEL_KINDS,
    TargetRef,
    check_target_ref,
    check_top_level,
    effective_target_ref,
)

from ._checks import BackendRef, backend_of, check_backend_refs

POLICY = "MeshTCPRoute"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY)


class RuleConf(Spec):
    backend_refs: list[BackendRef] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.backend_refs is None:
            v.add(f"{path}.backendRefs", "must be set: list where the connections go")
        else:
            check_backend_refs(v, f"{path}.backendRefs", self.backend_refs, where=f"default.backendRefs of {POLICY}")


class Rule(Spec):
    default: RuleConf

    def check(self, v: Violations, path: str) -> None:
        self.default.check(v, f"{path}.default")


class To(Spec):
    target_ref: TargetRef
    # Kuma 2.14 takes an entry without rules; its missing rules merge as null, i.e. as `rules: []`
    rules: list[Rule] = Field(default_factory=list)

    def check_in(self, v: Violations, path: str, *, top: str) -> None:
        allowed = (MESH,) if top == MESH_GATEWAY else (MESH_SERVICE, *SELECTS_NOTHING_YET)
        check_target_ref(v, f"{path}.targetRef", self.target_ref, allowed=allowed,
                         where=f"spec.to[].targetRef of {POLICY}" +
                               (" under a top-level MeshGateway" if top == MESH_GATEWAY else ""))
        if len(self.rules) > 1:  # Kuma: at most one; `rules: []` switches an inherited route off
            v.add(f"{path}.rules", f"must have at most one rule (got {len(self.rules)}): TCP has nothing to match "
                                   "on")
        for i, rule in enumerate(self.rules):
            rule.check(v, f"{path}.rules[{i}]")


class MeshTCPRouteSpec(Spec):
    target_ref: TargetRef | None = None
    to: list[To] | None = None

    def check(self, v: Violations, path: str) -> None:
        top = effective_target_ref(self.target_ref).kind
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_KINDS, policy=POLICY,
                        listener_tags=True)
        if not self.to:
            v.add(f"{path}.to", "needs at least one item")
        for i, item in enumerate(self.to or ()):
            item.check_in(v, f"{path}.to[{i}]", top=top)


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshtcproutes", singular="meshtcproute", scope=Scope.MESH, spec_cls=MeshTCPRouteSpec,
    flat=False, is_policy=True,
    description="TCP routing: weighted backends for outbound connections.",
))

# --- Envoy effect -----------------------------------------------------------------------------------


def _backend_refs(ctx: ProxyContext, service: str) -> list[dict[str, object]] | None:
    from . import mesh_http_route

    if mesh_http_route.route_rules(ctx, service) is not None:
        return None  # a MeshHTTPRoute for the same destination takes precedence
    merged = ctx.rules.to_conf(POLICY, ctx.dataplane, service)
    if merged is None:
        return None
    rules = merged.data.get("rules") or []
    if not rules:
        return None
    refs = (rules[-1].get("default") or {}).get("backendRefs")
    return list(refs) if refs else None


def _weighted(key: str) -> list[tuple[Backend, int]]:
    out = []
    for raw in json.loads(key):
        ref = BackendRef.model_validate(raw)
        if ref.effective_weight > 0:
            out.append((backend_of(ref), ref.effective_weight))
    return out


class TCPRoutePlugin(PolicyPlugin):
    policy_type = POLICY
    order = 21

    def listener_key(self, ctx: ProxyContext, service: str) -> Hashable:
        refs = _backend_refs(ctx, service)
        return None if refs is None else json.dumps(refs, sort_keys=True, separators=(",", ":"))

    def mesh_destinations(self, policies: Sequence[Resource]) -> Iterable[Backend]:
        for policy in policies:
            spec = policy.spec
            assert isinstance(spec, MeshTCPRouteSpec)
            for to in spec.to or ():
                for rule in to.rules:
                    yield from (backend_of(r) for r in rule.default.backend_refs or ())

    def backends(self, ctx: ProxyContext, service: str, key: Hashable) -> Sequence[Backend] | None:
        assert isinstance(key, str)
        return [b for b, _ in _weighted(key)]

    def apply_outbound_listener(self, ctx: ProxyContext, service: str, listener: listener_pb2.Listener,
                                key: Hashable) -> None:
        assert isinstance(key, str)
        weighted = _weighted(key)
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_name(f"outbound_{service}"))
        if len(weighted) == 1:
            proxy.cluster = weighted[0][0].cluster_name
        else:
            proxy.weighted_clusters.clusters.extend(
                tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=b.cluster_name, weight=w)
                for b, w in weighted)
        for chain in listener.filter_chains:
            for i, f in enumerate(chain.filters):
                if f.name in (TCP_PROXY_FILTER, HCM_FILTER):
                    if f.name == TCP_PROXY_FILTER:
                        existing = tcp_proxy_pb2.TcpProxy()
                        f.typed_config.Unpack(existing)
                        proxy.stat_prefix = existing.stat_prefix
                    chain.filters[i].CopyFrom(listener_components_pb2.Filter(
                        name=TCP_PROXY_FILTER, typed_config=pack(proxy)))


PLUGIN = register_plugin(TCPRoutePlugin())
