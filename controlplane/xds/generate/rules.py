"""Policy rules for one proxy: which policies apply, and the merged `default` for a destination or inbound.

The matching and merging primitives are `controlplane.policies._checks`'s (Kuma's precedence, JSON merge
patch); this module applies them to a mesh topology and caches the results per topology, per policy type
and per set of applying policies. Proxies selected by the same policies therefore share one computation,
and the merged configuration of a destination is one canonical JSON text: the summary that goes into a
shared resource's memo key (equal text, same built resource).

The inspect API (`controlplane/api/policies_view.py`) reads the same functions, so what it shows is what
the plugins render.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.resources.base import Resource
from controlplane.resources.dataplane import SERVICE_TAG, DataplaneSpec, Inbound
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_HTTP_ROUTE,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    RULE_MATCHES_HASH_TAG,
    TargetRef,
    covers,
    effective_target_ref,
    in_precedence_order,
    matches_hash,
    merge_confs,
    precedence_key,
    selector_tag_sets,
    selects_inbound,
)

from ..topology import MeshTopology

HTTP_ROUTE = "MeshHTTPRoute"
TAG_KINDS = frozenset({MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET})

Element = tuple[tuple[str, str], ...]  # sorted tags of a destination (kuma.io/service, maybe a route hash)
Merger = Callable[[Sequence[Mapping[str, Any]]], "dict[str, Any] | None"]
_MISSING = object()
MERGERS: dict[str, Merger] = {}  # policy types whose `default`s merge their own way (MeshHTTPRoute rules)


def register_merger(policy_type: str, merger: Merger) -> None:
    MERGERS[policy_type] = merger


# The names of a service's routes (MeshHTTPRoute rules) for a proxy, registered by the route policy, so that
# per-route confs can be looked up without this framework importing a policy.
RouteNames = Callable[[Any, str], tuple[str, ...]]
_route_names: list[RouteNames] = []


def register_route_names(fn: RouteNames) -> None:
    _route_names[:] = [fn]


def merger_for(policy_type: str) -> Merger:
    return MERGERS.get(policy_type, merge_confs)


@dataclass(frozen=True)
class Entry:
    """One `to[]`/`from[]` item of an applying policy, as it takes part in merging."""

    policy: str
    top: TargetRef
    index: int
    ref: TargetRef  # what it covers; MeshHTTPRoute references are resolved into per-route subsets
    conf: Mapping[str, Any]  # the item's `default` (for routes: its `rules`), wire JSON
    route: str | None = None  # the MeshHTTPRoute the entry was resolved through

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"policy": self.policy, "index": self.index,
                               "targetRef": self.ref.to_wire()}
        if self.route:
            out["route"] = self.route
        return out


@dataclass(frozen=True)
class Merged:
    """The merged configuration for one destination/inbound, and which policies contributed."""

    json: str  # canonical JSON: the summary for memo keys
    data: dict[str, Any]
    origins: tuple[str, ...]  # policy names, lowest precedence first

    @classmethod
    def of(cls, data: dict[str, Any], origins: Iterable[str]) -> Merged:
        seen: list[str] = []
        for o in origins:
            if o not in seen:
                seen.append(o)
        return cls(json.dumps(data, sort_keys=True, separators=(",", ":")), data, tuple(seen))


@dataclass
class ToRules:
    entries: tuple[Entry, ...]  # lowest precedence first
    merger: Merger
    _confs: dict[Element, Merged | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.per_route = any(e.route is not None for e in self.entries)  # entries for MeshHTTPRoute rules

    def conf(self, element: Element) -> Merged | None:
        if element in self._confs:
            return self._confs[element]
        tags = dict(element)
        matching = [e for e in self.entries if covers(e.ref, tags)]
        merged = self.merger([e.conf for e in matching]) if matching else None
        result = Merged.of(merged, (e.policy for e in matching)) if merged is not None else None
        self._confs[element] = result
        return result

    def matching(self, element: Element) -> list[Entry]:
        tags = dict(element)
        return [e for e in self.entries if covers(e.ref, tags)]


def element(service: str, route: str | None = None, tags: Mapping[str, str] | None = None) -> Element:
    items = dict(tags or {})
    items[SERVICE_TAG] = service
    if route is not None:
        items[RULE_MATCHES_HASH_TAG] = route
    return tuple(sorted(items.items()))


def _wire_default(item: Any) -> dict[str, Any]:
    default = getattr(item, "default", None)
    if default is not None:
        return dict(default.to_wire())
    data = dict(item.to_wire())
    data.pop("targetRef", None)
    return data


def _inbound_items(spec: Any) -> Sequence[Any]:
    """A policy's `from[]` entries; policies with Kuma's `rules[]` form say what they merge as (inbound_items)."""
    items = getattr(spec, "inbound_items", None)
    return items() if items is not None else (getattr(spec, "from_", None) or ())


class PolicyRules:
    """Everything policy-related the generators ask about one topology (built lazily, cached)."""

    def __init__(self, topology: MeshTopology | _Policies) -> None:
        # Not the topology itself: the cache below must not keep a topology alive.
        self.policies = topology.policies
        self._matched: dict[tuple[str, str], tuple[Resource, ...]] = {}
        self._to: dict[tuple[str, int, tuple[str, ...]], ToRules] = {}  # shared between proxies
        self._to_by_proxy: dict[tuple[str, str], ToRules] = {}
        self._from: dict[tuple[str, str, int, str], Merged | None] = {}
        routes = self.policies.get(HTTP_ROUTE, ())
        self._routes = {r.meta.name: r for r in routes}
        # Policies are immutable and live as long as the topology's policy lists (held here): ids are stable.
        self._top: dict[int, TargetRef] = {}
        self._ordered: dict[str, tuple[Resource, ...]] = {}
        self._shared: dict[Hashable, Any] = {}
        self._ref_keys: dict[int, str] = {}
        self._route_ref_names: dict[int, tuple[str, ...]] = {}
        self._types_naming_routes: dict[str, bool] = {}
        self._signatures: dict[str, tuple[str | None, tuple[tuple[tuple[str, str], ...], ...]]] = {}
        self._selected: dict[tuple[str, Hashable], bool] = {}
        self._selected_inbound: dict[tuple[str, Hashable], bool] = {}
        self._distinct_refs: dict[str, dict[str, Resource]] = {}
        self._matched_by_refs: dict[tuple[str, frozenset[str]], tuple[Resource, ...]] = {}
        self._from_by_refs: dict[tuple[str, frozenset[str]], list[Entry]] = {}
        self._proxy_signatures: dict[str, tuple[int, ...]] = {}
        # dataplane name -> the (cache, key) entries computed for it: what a change of that dataplane drops
        self._per_proxy: dict[str, list[tuple[dict[Any, Any], Hashable]]] = {}

    def _index(self, dataplane: Resource, cache: dict[Any, Any], key: Hashable) -> None:
        self._per_proxy.setdefault(dataplane.meta.name, []).append((cache, key))

    def carried(self, changed: Iterable[str]) -> PolicyRules:
        """The rules for the next topology of the mesh when its policies are the very same objects: what
        depends only on the policies (matching per distinct reference, merged confs, `to[]`/`from[]` rules)
        is kept, and what was cached per proxy is kept for every dataplane but the `changed` ones (their tags,
        ports or name-based selection may differ). Per-topology generator work (`cached`) starts empty. The
        caches move to the new rules (no copy: a change costs what it invalidates); these rules start over
        empty, so a late reader of the previous topology still gets right answers (recomputed).
        The result equals fresh rules (tests/unit/test_rules_carry_over.py)."""
        new = PolicyRules.__new__(PolicyRules)
        new.policies, new._routes = self.policies, self._routes
        new._shared = {}
        for name in _CARRIED:
            setattr(new, name, getattr(self, name))
        for dp_name in set(changed):
            for cache, key in new._per_proxy.pop(dp_name, ()):
                cache.pop(key, None)
        PolicyRules.__init__(self, _Policies(self.policies))
        return new

    # --- which policies apply to a proxy --------------------------------------------------------------

    def route(self, name: str | None) -> Resource | None:
        return self._routes.get(name or "")

    def top_level(self, policy: Resource) -> TargetRef:
        found = self._top.get(id(policy))
        if found is None:
            found = self._top[id(policy)] = effective_target_ref(getattr(policy.spec, "target_ref", None))
        return found

    def in_order(self, policy_type: str) -> tuple[Resource, ...]:
        """Every policy of a type, lowest precedence first (matching keeps this order: no per-proxy sort)."""
        found = self._ordered.get(policy_type)
        if found is None:
            found = self._ordered[policy_type] = tuple(in_precedence_order(
                self.policies.get(policy_type, ()), key=lambda p: precedence_key(self.top_level(p)),
                name=lambda p: p.meta.name))
        return found

    def _route_refs(self, policy: Resource) -> tuple[str, ...]:
        """The MeshHTTPRoutes a policy's `to[]` entries name (usually none)."""
        found = self._route_ref_names.get(id(policy))
        if found is None:
            found = self._route_ref_names[id(policy)] = tuple(
                item.target_ref.name for item in getattr(policy.spec, "to", None) or ()
                if item.target_ref.kind == MESH_HTTP_ROUTE and item.target_ref.name)
        return found

    def _naming_routes(self, policy_type: str) -> bool:
        found = self._types_naming_routes.get(policy_type)
        if found is None:
            found = any(self._route_refs(p) for p in self.in_order(policy_type))
            self._types_naming_routes[policy_type] = found
        return found

    def _ref_key(self, policy: Resource) -> str:
        found = self._ref_keys.get(id(policy))
        if found is None:
            found = self._ref_keys[id(policy)] = json.dumps(self.top_level(policy).to_wire(), sort_keys=True)
        return found

    def _tag_signature(self, dataplane: Resource) -> tuple[str | None, tuple[tuple[tuple[str, str], ...], ...]]:
        """What a tag-based top-level targetRef (Mesh, MeshSubset, MeshService, MeshServiceSubset) reads of a
        dataplane: its proxy type and the tag sets of its inbounds (or gateway)."""
        found = self._signatures.get(dataplane.meta.name)
        if found is None:
            spec = dataplane.spec
            assert isinstance(spec, DataplaneSpec)
            gateway = spec.networking.gateway
            tag_sets = selector_tag_sets(dataplane)  # an outbound-only proxy's: its identity's (workload label)
            found = self._signatures[dataplane.meta.name] = (
                gateway.type if gateway is not None else None, tuple(tuple(sorted(t.items())) for t in tag_sets))
            self._index(dataplane, self._signatures, dataplane.meta.name)
        return found

    def selects(self, policy: Resource, dataplane: Resource) -> bool:
        top = self.top_level(policy)
        if top.kind == MESH_HTTP_ROUTE:
            route = self.route(top.name)
            return route is not None and route is not policy and self.top_level(route).kind != MESH_HTTP_ROUTE \
                and self.selects(route, dataplane)
        # Many policies share a top-level reference (most are `Mesh`), and many proxies look the same to it.
        who: Hashable = self._tag_signature(dataplane) if top.kind in TAG_KINDS else dataplane.meta.name
        key = (self._ref_key(policy), who)
        found = self._selected.get(key)
        if found is None:
            found = self._selected[key] = top.selects_dataplane(dataplane)
            if isinstance(who, str):
                self._index(dataplane, self._selected, key)
        return found

    def _refs(self, policy_type: str) -> dict[str, Resource]:
        """The distinct top-level references of a type's policies (one policy each, to evaluate them by)."""
        found = self._distinct_refs.get(policy_type)
        if found is None:
            found = self._distinct_refs[policy_type] = {}
            for p in self.in_order(policy_type):
                found.setdefault(self._ref_key(p), p)
        return found

    def matched(self, policy_type: str, dataplane: Resource) -> tuple[Resource, ...]:
        """Policies of a type whose top-level targetRef selects the proxy, lowest precedence first."""
        key = (policy_type, dataplane.meta.name)
        found = self._matched.get(key)
        if found is None:
            # Evaluate each distinct reference once; proxies selected by the same references share the result.
            selecting = frozenset(ref for ref, p in self._refs(policy_type).items() if self.selects(p, dataplane))
            by_set = (policy_type, selecting)
            found = self._matched_by_refs.get(by_set)
            if found is None:
                found = self._matched_by_refs[by_set] = tuple(
                    p for p in self.in_order(policy_type) if self._ref_key(p) in selecting)
            self._matched[key] = found
            self._index(dataplane, self._matched, key)
        return found

    # --- to[] rules ------------------------------------------------------------------------------------

    def to_rules(self, policy_type: str, dataplane: Resource) -> ToRules:
        by_proxy = (policy_type, dataplane.meta.name)
        rules = self._to_by_proxy.get(by_proxy)
        if rules is not None:
            return rules
        policies = self.matched(policy_type, dataplane)
        # Entries naming a MeshHTTPRoute count only where that route applies: part of what is shared.
        routes: tuple[str, ...] = ()
        if self._naming_routes(policy_type):
            routes = tuple(sorted({name for p in policies for name in self._route_refs(p)
                                   if (r := self.route(name)) is not None and self.selects(r, dataplane)}))
        key = (policy_type, id(policies), routes)  # matched tuples are shared by proxies matched alike
        rules = self._to.get(key)
        if rules is None:
            rules = self._to[key] = ToRules(tuple(self._to_entries(policies, dataplane)), merger_for(policy_type))
        self._to_by_proxy[by_proxy] = rules
        self._index(dataplane, self._to_by_proxy, by_proxy)
        return rules

    def to_conf(self, policy_type: str, dataplane: Resource, service: str, route: str | None = None
                ) -> Merged | None:
        return self.to_rules(policy_type, dataplane).conf(element(service, route))

    def outbound_signature(self, dataplane: Resource, policy_types: Sequence[str]) -> tuple[int, ...]:
        """Proxies with the same signature have the same `to[]` rules of every type, hence the same outbound
        configuration: the generators share their per-service work between them (`cached`)."""
        key = dataplane.meta.name
        found = self._proxy_signatures.get(key)
        if found is None:
            found = self._proxy_signatures[key] = tuple(id(self.to_rules(t, dataplane)) for t in policy_types)
            self._index(dataplane, self._proxy_signatures, key)
        return tuple(found)

    def cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """A value computed once per topology (for generators: per-service work shared by signature)."""
        found = self._shared.get(key, _MISSING)
        if found is _MISSING:
            found = self._shared[key] = compute()
        return found

    def _route_rules(self, route: Resource) -> list[tuple[str, str]]:
        """(destination service, rule hash) for every rule of a MeshHTTPRoute."""
        out = []
        for to in getattr(route.spec, "to", None) or ():
            if to.target_ref.name is None:
                continue
            for rule in to.rules or ():
                out.append((to.target_ref.name, matches_hash([m.to_wire() for m in rule.matches])))
        return out

    def _to_entries(self, policies: Sequence[Resource], dataplane: Resource) -> list[Entry]:
        entries: list[Entry] = []
        for policy in policies:
            top = self.top_level(policy)
            for i, item in enumerate(getattr(policy.spec, "to", None) or ()):
                conf = _wire_default(item)
                ref = item.target_ref
                route = None
                if top.kind == MESH_HTTP_ROUTE:
                    route = self.route(top.name)
                elif ref.kind == MESH_HTTP_ROUTE:
                    route = self.route(ref.name)
                    if route is None or not self.selects(route, dataplane):
                        continue
                if route is None:
                    if top.kind != MESH_HTTP_ROUTE:
                        entries.append(Entry(policy.meta.name, top, i, ref, conf))
                    continue
                for service, rule_hash in self._route_rules(route):
                    sub = TargetRef(kind=MESH_SERVICE_SUBSET, name=service, tags={RULE_MATCHES_HASH_TAG: rule_hash})
                    entries.append(Entry(policy.meta.name, top, i, sub, conf, route.meta.name))
        return in_precedence_order(entries, key=lambda e: precedence_key(e.top, e.ref), name=lambda e: e.policy)

    # --- from[] rules ----------------------------------------------------------------------------------

    def from_entries(self, policy_type: str, dataplane: Resource, inbound: Inbound) -> list[Entry]:
        """The `from[]` entries of the policies selecting this inbound, in merge order."""
        inbound_key = (self._tag_signature(dataplane)[0], tuple(sorted(inbound.tags.items())))
        selecting = set()
        for ref, policy in self._refs(policy_type).items():
            top = self.top_level(policy)
            who: Hashable = inbound_key if top.kind in TAG_KINDS else (dataplane.meta.name, inbound.port)
            key = (ref, who)
            selected = self._selected_inbound.get(key)
            if selected is None:
                selected = self._selected_inbound[key] = selects_inbound(top, dataplane, inbound.tags, inbound.port)
                if top.kind not in TAG_KINDS:
                    self._index(dataplane, self._selected_inbound, key)
            if selected:
                selecting.add(ref)
        by_set = (policy_type, frozenset(selecting))
        found = self._from_by_refs.get(by_set)
        if found is None:
            entries = [Entry(policy.meta.name, self.top_level(policy), i, item.target_ref, _wire_default(item))
                       for policy in self.in_order(policy_type) if self._ref_key(policy) in selecting
                       for i, item in enumerate(_inbound_items(policy.spec))]
            found = self._from_by_refs[by_set] = in_precedence_order(
                entries, key=lambda e: precedence_key(e.top, e.ref), name=lambda e: e.policy)
        return found

    def from_conf(self, policy_type: str, dataplane: Resource, inbound: Inbound) -> Merged | None:
        key = (policy_type, dataplane.meta.name, inbound.port, inbound.address or "")
        if key in self._from:
            return self._from[key]
        entries = self.from_entries(policy_type, dataplane, inbound)
        merged = merge_confs(e.conf for e in entries) if entries else None
        result = Merged.of(merged, (e.policy for e in entries)) if merged is not None else None
        self._from[key] = result
        self._index(dataplane, self._from, key)
        return result


_BY_TOPOLOGY: dict[int, tuple[weakref.ref[MeshTopology], PolicyRules]] = {}


def rules_for(topology: MeshTopology) -> PolicyRules:
    """The (cached) rules of a topology: computed once per mesh generation, shared by all its proxies."""
    key = id(topology)
    found = _BY_TOPOLOGY.get(key)
    if found is not None and found[0]() is topology:
        return found[1]
    rules = PolicyRules(topology)
    _register(topology, rules)
    return rules


# What PolicyRules.carried() moves to the next topology's rules: everything but the per-topology `_shared`.
_CARRIED = ("_top", "_ordered", "_ref_keys", "_route_ref_names", "_types_naming_routes", "_distinct_refs",
            "_matched_by_refs", "_from_by_refs", "_to", "_matched", "_to_by_proxy", "_from", "_signatures",
            "_selected", "_selected_inbound", "_proxy_signatures", "_per_proxy")


@dataclass(frozen=True)
class _Policies:
    """What PolicyRules reads of a topology (for rules that start over on the same policies)."""

    policies: Mapping[str, Sequence[Resource]]


def carry_rules(old: MeshTopology, new: MeshTopology) -> bool:
    """Give `new` (the next topology of the same mesh) the rules of `old`, minus what its changed dataplanes
    invalidate, when both hold the very same policy objects (a change of endpoints, not of policies): the
    proxies' policy matching is then not computed again. Whether it was carried."""
    found = _BY_TOPOLOGY.get(id(old))
    if found is None or found[0]() is not old or id(new) in _BY_TOPOLOGY:
        return False
    if old.policies.keys() != new.policies.keys() or any(
            len(ps) != len(new.policies[t]) or any(a is not b for a, b in zip(ps, new.policies[t], strict=True))
            for t, ps in old.policies.items()):
        return False
    changed = [n for n in old.dataplanes.keys() | new.dataplanes.keys()
               if old.dataplanes.get(n) is not new.dataplanes.get(n)]
    _register(new, found[1].carried(changed))
    return True


def _register(topology: MeshTopology, rules: PolicyRules) -> None:
    key = id(topology)

    def forget(ref: weakref.ref[MeshTopology], key: int = key) -> None:
        entry = _BY_TOPOLOGY.get(key)
        if entry is not None and entry[0] is ref:
            del _BY_TOPOLOGY[key]

    _BY_TOPOLOGY[key] = (weakref.ref(topology, forget), rules)


PerRoute = tuple[str | None, tuple[tuple[str, str], ...]]


def listener_confs(ctx: Any, policy_type: str, service: str) -> PerRoute | None:
    """The merged conf for the outbound listener of `service` and, for each of its routes (MeshHTTPRoute
    rules) whose conf differs, that route's conf: `(json | None, ((route name, json), ...))`, or None when no
    policy of the type applies. Per-route entries come from policies that target a MeshHTTPRoute."""
    rules = ctx.rules.to_rules(policy_type, ctx.dataplane)
    base = rules.conf(element(service))
    per_route: list[tuple[str, str]] = []
    if rules.per_route:
        for name in (_route_names[0](ctx, service) if _route_names else ()):
            conf = rules.conf(element(service, name))
            if conf is not None and (base is None or conf.json != base.json):
                per_route.append((name, conf.json))
    if base is None and not per_route:
        return None
    return (base.json if base is not None else None, tuple(per_route))
