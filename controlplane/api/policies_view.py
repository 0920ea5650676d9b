"""`GET /meshes/{mesh}/dataplanes/{name}/policies`: which policies apply to a dataplane, why, in which order,
and what they merge into for each inbound, outbound and route.

Computed with the same code the xDS plugins use (`controlplane.xds.generate.rules` over a topology built from
the store), so what this shows is what Envoy gets. `kumactl inspect dataplane NAME --type policies` prints it.

Answer:

    {"mesh": ..., "dataplane": ..., "policyTypes": [{
        "type": "MeshTimeout",
        "policies": [{"name", "targetRef", "why", "precedence"}],        # lowest precedence first
        "inbounds": [{"inbound": "ip:port", "service", "entries": [...], "conf": {...}, "origins": [...]}],
        # per-client policies (MeshFaultInjection): "clients": [{"clients", "conf"}] instead of conf and origins
        # rules with matches (MeshTimeout, MeshRateLimit): "clients" per caller match, beside the conf for all
        "outbounds": [{"service", "entries": [...], "conf": {...}, "origins": [...],
                       "routes": [{"route": <rule hash>, "matches": [...], "conf": {...}, "origins": [...]}]}]}]}

`entries` are the `from[]`/`to[]` items that cover the target, in merge order (the last wins); `conf` is the
merged `default` (for MeshHTTPRoute/MeshTCPRoute: the merged rules).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from controlplane.policies._clients import PER_CLIENT_TYPES, client_rules, describe
from controlplane.policies._inbound_view import INBOUND_VIEWS
from controlplane.policies._rule_matches import CALLER_CONFS, describe_caller_confs
from controlplane.resources import REGISTRY, Resource
from controlplane.resources.dataplane import DataplaneSpec
from controlplane.store.base import ListQuery, ResourceStore
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.generate.rules import PolicyRules, element, rules_for
from controlplane.xds.generate.targeting import (
    DATAPLANE,
    MESH,
    MESH_GATEWAY,
    MESH_HTTP_ROUTE,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    TargetRef,
    kind_rank,
    merge_confs,
    top_level_detail,
)
from controlplane.xds.topology import MeshTopology, build_topology

ROUTE_TYPES = ("MeshHTTPRoute", "MeshTCPRoute")
PER_ROUTE_TYPES = ("MeshTimeout", "MeshRetry")


def why(rules: PolicyRules, policy: Resource, dataplane: Resource) -> str:
    """A sentence saying why the top-level targetRef selects this dataplane."""
    top = rules.top_level(policy)
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    proxy = f" (proxyTypes {', '.join(top.proxy_types)})" if top.proxy_types else ""
    if top.kind == MESH:
        reason = "kind Mesh selects every proxy of the mesh" if getattr(policy.spec, "target_ref", None) \
            else "no targetRef: the whole mesh"
        return reason + proxy
    if top.kind == MESH_SUBSET:
        return f"MeshSubset tags {json.dumps(top.tags or {}, sort_keys=True)} match an inbound's tags{proxy}"
    if top.kind == MESH_SERVICE:
        return f"MeshService {top.name}: the proxy serves kuma.io/service {top.name}"
    if top.kind == MESH_SERVICE_SUBSET:
        return f"MeshServiceSubset {top.name} {json.dumps(top.tags or {}, sort_keys=True)} matches an inbound"
    if top.kind == DATAPLANE:
        if top.labels is not None:
            base = f"Dataplane labels {json.dumps(top.labels, sort_keys=True)} match the dataplane's labels"
        elif top.name is not None:
            base = f"Dataplane {top.name} is this dataplane"
        else:
            base = "kind Dataplane without name or labels selects every dataplane"
        return base + (f", inbound {top.section_name} only" if top.section_name else "")
    if top.kind == MESH_HTTP_ROUTE:
        route = rules.route(top.name)
        inner = why(rules, route, dataplane) if route is not None else "?"
        return f"applies where MeshHTTPRoute {top.name} applies: {inner}"
    if top.kind == MESH_GATEWAY:
        return f"MeshGateway {top.name} serves this proxy"
    return top.kind


def precedence(top: TargetRef) -> str:
    detail = top_level_detail(top)
    text = f"top-level {top.kind} (rank {kind_rank(top.kind)}"
    return text + (f", detail {detail})" if detail else ")")


def _entries(entries: Any) -> list[dict[str, Any]]:
    return [dict(e.describe(), default=e.conf) for e in entries]


def inspect(topology: MeshTopology, dataplane: Resource) -> dict[str, Any]:
    from controlplane.policies.mesh_http_route import route_rules, rule_hash

    rules = rules_for(topology)
    ctx = ProxyContext(topology=topology, dataplane=dataplane, identity=None, memo=ResourceMemo())
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    out: list[dict[str, Any]] = []
    for rtype in sorted((t for t in REGISTRY.all() if t.is_policy), key=lambda t: t.name):
        matched = rules.matched(rtype.name, dataplane)
        if not matched:
            continue
        section: dict[str, Any] = {"type": rtype.name, "policies": [
            {"name": p.meta.name, "targetRef": rules.top_level(p).to_wire(), "why": why(rules, p, dataplane),
             "precedence": precedence(rules.top_level(p))} for p in matched]}
        # Policies with one top-level `default` (MeshMetric) apply to the whole proxy: show what they merge into.
        whole = [(p.meta.name, d.to_wire()) for p in matched if (d := getattr(p.spec, "default", None)) is not None]
        if whole and (merged_top := merge_confs(conf for _name, conf in whole)) is not None:
            section["proxy"] = {"conf": merged_top, "origins": [name for name, _conf in whole]}
        inbounds = []
        for inbound in spec.networking.inbound:
            entries = rules.from_entries(rtype.name, dataplane, inbound)
            callers_of = CALLER_CONFS.get(rtype.name)  # rules with matches: per-caller routes
            callers = callers_of(ctx, inbound) if callers_of is not None else ()
            if not entries and not callers:
                continue
            item: dict[str, Any] = {"inbound": f"{inbound.address or spec.networking.address}:{inbound.port}",
                                    "service": inbound.service, "entries": _entries(entries)}
            if (view := INBOUND_VIEWS.get(rtype.name)) is not None:  # entries that add up rather than merge
                item.update(view(entries, matched))
            elif rtype.name in PER_CLIENT_TYPES:  # merged per client service, as the plugin renders them
                item["clients"] = describe(client_rules(entries))
            elif rtype.name != "MeshTrafficPermission":  # its entries match clients, they do not merge into one
                merged = rules.from_conf(rtype.name, dataplane, inbound)
                if merged is not None:
                    item.update(conf=merged.data, origins=list(merged.origins))
            if callers:
                item["clients"] = describe_caller_confs(callers)
            inbounds.append(item)
        if inbounds:
            section["inbounds"] = inbounds
        to_rules = rules.to_rules(rtype.name, dataplane)
        outbounds = []
        for service in dict.fromkeys(o.service for o in spec.networking.outbound):
            merged = to_rules.conf(element(service))
            item = {"service": service, "entries": _entries(to_rules.matching(element(service)))}
            if merged is not None:
                item.update(conf=merged.data, origins=list(merged.origins))
            if rtype.name in PER_ROUTE_TYPES:
                routes = []
                for rule in route_rules(ctx, service) or ():
                    name = rule_hash(rule)
                    conf = to_rules.conf(element(service, name))
                    if conf is not None and (merged is None or conf.json != merged.json):
                        routes.append({"route": name, "matches": [m.to_wire() for m in rule.matches],
                                       "conf": conf.data, "origins": list(conf.origins)})
                if routes:
                    item["routes"] = routes
            if item["entries"] or "routes" in item:
                outbounds.append(item)
        if outbounds:
            section["outbounds"] = outbounds
        out.append(section)
    return {"mesh": topology.name, "dataplane": dataplane.meta.name, "policyTypes": out}


async def load_topology(store: ResourceStore, mesh_name: str) -> MeshTopology | None:
    from controlplane.store.base import NotFound

    mesh_type, dp_type = REGISTRY.by_name("Mesh"), REGISTRY.by_name("Dataplane")
    assert mesh_type is not None and dp_type is not None
    try:
        mesh = await store.get(mesh_type, mesh_name)
    except NotFound:
        return None
    dataplanes = (await store.list(dp_type, ListQuery(mesh=mesh_name))).items
    policies: dict[str, list[Resource]] = {}
    for rtype in REGISTRY.all():
        if rtype.is_policy:
            found = (await store.list(rtype, ListQuery(mesh=mesh_name))).items
            if found:
                policies[rtype.name] = found
    return build_topology(mesh, dataplanes, policies, 0, None)


class PoliciesView:
    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/meshes/{mesh}/dataplanes/{name}/policies", self.policies)

    async def policies(self, request: web.Request) -> web.Response:
        from .errors import ApiError

        mesh, name = request.match_info["mesh"], request.match_info["name"]
        topology = await load_topology(self.store, mesh)
        if topology is None:
            raise ApiError(404, "Not found", f"mesh {mesh!r} does not exist")
        dataplane = topology.dataplanes.get(name)
        if dataplane is None:
            raise ApiError(404, "Not found", f"dataplane {name!r} does not exist in mesh {mesh!r}")
        return web.json_response(inspect(topology, dataplane))
