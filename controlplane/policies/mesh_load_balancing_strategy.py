"""MeshLoadBalancingStrategy: how a proxy spreads requests over a destination's endpoints (`to[]` only).

`default.loadBalancer.type` is one of:

- `RoundRobin`, `Random` (no settings);
- `LeastRequest`: `leastRequest.{choiceCount (>= 2), activeRequestBias (>= 0, int or decimal string)}`;
- `RingHash`: `ringHash.{hashFunction (XXHash|MurmurHash2), minRingSize, maxRingSize (1-8000000,
  min <= max), hashPolicies[]}`;
- `Maglev`: `maglev.{tableSize (a prime up to 5000011, as Envoy requires), hashPolicies[]}`.

`default.hashPolicies[]` (Kuma 2.14) applies to whichever load balancer is in effect and wins over the
lists inside `ringHash`/`maglev` (one policy may not give both); an empty list switches hashing off. Entries
have a `type` (Header, Cookie, Connection, QueryParameter, FilterState; SourceIP, Kuma's deprecated name for
Connection), the matching settings block (`header.name`, `cookie.{name, ttl, path}`, `connection.sourceIP`,
`queryParameter.name`, `filterState.key`) and `terminal`. A `to[]` entry of kind MeshHTTPRoute takes
`hashPolicies` only, for that route's requests.

`default.localityAwareness` keeps Kuma's schema for multi-zone: `disabled`, `localZone.affinityTags[]`
(`key`, `weight` >= 1, all or none weighted), `crossZone.failover[]` (`from.zones`, `to.type`
None|Only|Any|AnyExcept, `to.zones` for Only/AnyExcept) and `crossZone.failoverThreshold.percentage`.

Positions (Kuma 2.9): top-level Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane or MeshGateway;
`to[]` Mesh, MeshService, MeshMultiZoneService or MeshHTTPRoute (under a MeshGateway: no MeshHTTPRoute, and
only Mesh in an entry that sets a loadBalancer).

Envoy effect (end of this module): the clusters of the destination get `lb_policy` ROUND_ROBIN, LEAST_REQUEST
(`least_request_lb_config`: choice count, active request bias), RING_HASH (`ring_hash_lb_config`: ring sizes,
XX_HASH/MURMUR_HASH_2), RANDOM or MAGLEV (`maglev_lb_config.table_size`); the hash policies of RingHash/Maglev
go on the routes of the outbound listener (`hash_policy`: header, cookie, connection source IP, query
parameter, filter state; terminal) or, for a TCP proxy, its source-IP/filter-state `hash_policy`.
`localityAwareness.disabled: true` puts a destination's endpoints in every zone at one Envoy priority (spread by
instances across zones) instead of local first and other zones as failover; `localZone` and `crossZone` are
accepted and kept, and do not change the config yet.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any, Literal

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.v3 import hash_policy_pb2
from pydantic import Field

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations
from controlplane.resources.fields import check_name
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import HCM_FILTER, TCP_PROXY_FILTER, duration, update_filters
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.rules import listener_confs
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_GATEWAY,
    MESH_HTTP_ROUTE,
    MESH_MULTI_ZONE_SERVICE,
    MESH_SERVICE,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    camel,
    check_tag_key,
    check_target_ref,
    check_top_level,
    effective_target_ref,
    require_some,
)

from ._checks import (
    check_decimal,
    check_duration,
    check_header_name,
    check_int,
    check_to,
    check_type_blocks,
    parse_decimal,
    parse_go_duration,
)

POLICY = "MeshLoadBalancingStrategy"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY)
MAX_RING_SIZE = 8_000_000
MAX_MAGLEV_TABLE = 5_000_011
# SourceIP is Kuma's deprecated name for Connection (same `connection` block); kuma-vm renders it as Connection.
HASH_POLICY_BLOCKS = {"Header": "header", "Cookie": "cookie", "Connection": "connection", "SourceIP": "connection",
                      "QueryParameter": "query_parameter", "FilterState": "filter_state"}
HASH_POLICY_ALIASES = {"header": "header", "cookie": "cookie", "connection": "connection",
                       "query_parameter": "queryParameter", "filter_state": "filterState"}
CONNECTION_TYPES = ("Connection", "SourceIP")
LB_BLOCKS = {"RoundRobin": "round_robin", "LeastRequest": "least_request", "RingHash": "ring_hash",
             "Random": "random", "Maglev": "maglev"}
LB_ALIASES = {"round_robin": "roundRobin", "least_request": "leastRequest", "ring_hash": "ringHash",
              "random": "random", "maglev": "maglev"}
# The wording of a type's block refusals in this policy (check_type_blocks)
MUST_BE_SET = "must be set for type {chosen}"
DOES_NOT_APPLY = "does not apply to type {chosen}: remove it"


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


class Header(Spec):
    name: str

    def check(self, v: Violations, path: str) -> None:
        check_header_name(v, f"{path}.name", self.name)


class Cookie(Spec):
    name: str
    ttl: str | None = None
    path: str | None = None

    def check(self, v: Violations, path: str) -> None:
        if not self.name or any(c in self.name for c in " \t\r\n;,=\x00"):
            v.add(f"{path}.name", f"{self.name!r} is not a cookie name: use a token without spaces, ';', ',' or '='")
        check_duration(v, f"{path}.ttl", self.ttl)
        if self.path is not None and not self.path.startswith("/"):
            v.add(f"{path}.path", f"{self.path!r} must be an absolute path, e.g. /")


class Connection(Spec):
    source_ip: bool | None = Field(default=None, alias="sourceIP")

    def check(self, v: Violations, path: str) -> None:
        if not self.source_ip:
            v.add(f"{path}.sourceIP", "must be true: hashing on the connection means hashing on the source IP")


class QueryParameter(Spec):
    name: str

    def check(self, v: Violations, path: str) -> None:
        if not self.name:
            v.add(f"{path}.name", "cannot be empty")


class FilterState(Spec):
    key: str

    def check(self, v: Violations, path: str) -> None:
        if not self.key:
            v.add(f"{path}.key", "cannot be empty")


class HashPolicy(Spec):
    type: Literal["Header", "Cookie", "Connection", "SourceIP", "QueryParameter", "FilterState"]
    terminal: bool | None = None
    header: Header | None = None
    cookie: Cookie | None = None
    connection: Connection | None = None
    query_parameter: QueryParameter | None = None
    filter_state: FilterState | None = None

    def check(self, v: Violations, path: str) -> None:
        check_type_blocks(v, path, self.type, {
            kind: (HASH_POLICY_ALIASES[field], getattr(self, field), "") for kind, field in HASH_POLICY_BLOCKS.items()},
            missing=MUST_BE_SET, unused=DOES_NOT_APPLY)


def _check_hash_policies(v: Violations, path: str, policies: list[HashPolicy] | None) -> None:
    # An empty list is valid (Kuma): at the root of `default` it switches hashing off for what it covers.
    for i, hp in enumerate(policies or ()):
        hp.check(v, f"{path}[{i}]")


class RoundRobin(Spec):
    pass


class Random(Spec):
    pass


class LeastRequest(Spec):
    choice_count: int | None = None
    active_request_bias: int | str | None = None

    def check(self, v: Violations, path: str) -> None:
        check_int(v, f"{path}.choiceCount", self.choice_count, minimum=2)
        check_decimal(v, f"{path}.activeRequestBias", self.active_request_bias, minimum=0)


class RingHash(Spec):
    hash_function: Literal["XXHash", "MurmurHash2"] | None = None
    min_ring_size: int | None = None
    max_ring_size: int | None = None
    hash_policies: list[HashPolicy] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_int(v, f"{path}.minRingSize", self.min_ring_size, minimum=1, maximum=MAX_RING_SIZE)
        check_int(v, f"{path}.maxRingSize", self.max_ring_size, minimum=1, maximum=MAX_RING_SIZE)
        # Envoy's defaults are 1024 and 8M; it rejects a minimum above the maximum.
        low = self.min_ring_size if self.min_ring_size is not None else 1024
        high = self.max_ring_size if self.max_ring_size is not None else 8_388_608
        if low > high and 1 <= low <= MAX_RING_SIZE and 1 <= high <= MAX_RING_SIZE:
            v.add(f"{path}.minRingSize", f"{low} is above maxRingSize {high}: Envoy rejects that")
        _check_hash_policies(v, f"{path}.hashPolicies", self.hash_policies)


class Maglev(Spec):
    table_size: int | None = None
    hash_policies: list[HashPolicy] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.table_size is not None:
            if not 1 <= self.table_size <= MAX_MAGLEV_TABLE:
                v.add(f"{path}.tableSize", f"{self.table_size} is out of range: use a prime number up to "
                                           f"{MAX_MAGLEV_TABLE} (default 65537)")
            elif not _is_prime(self.table_size):
                v.add(f"{path}.tableSize", f"{self.table_size} is not a prime number: Envoy requires a prime table "
                                           "size, e.g. 65537 or 5000011")
        _check_hash_policies(v, f"{path}.hashPolicies", self.hash_policies)


class LoadBalancer(Spec):
    type: Literal["RoundRobin", "LeastRequest", "RingHash", "Random", "Maglev"]
    round_robin: RoundRobin | None = None
    least_request: LeastRequest | None = None
    ring_hash: RingHash | None = None
    random: Random | None = None
    maglev: Maglev | None = None

    def check(self, v: Violations, path: str) -> None:
        check_type_blocks(v, path, self.type, {
            kind: (LB_ALIASES[field], getattr(self, field), "") for kind, field in LB_BLOCKS.items()},
            required=False, unused=DOES_NOT_APPLY)


class AffinityTag(Spec):
    key: str
    weight: int | None = None


class LocalZone(Spec):
    affinity_tags: list[AffinityTag] | None = None

    def check(self, v: Violations, path: str) -> None:
        tags = self.affinity_tags or []
        weighted = 0
        seen: set[str] = set()
        for i, t in enumerate(tags):
            p = f"{path}.affinityTags[{i}]"
            check_tag_key(v, f"{p}.key", t.key)
            if t.key in seen:
                v.add(f"{p}.key", f"tag {t.key!r} is listed twice")
            seen.add(t.key)
            if t.weight is not None:
                weighted += 1
                check_int(v, f"{p}.weight", t.weight, minimum=1)
        if 0 < weighted < len(tags):
            v.add(f"{path}.affinityTags", "give a weight to all affinity tags or to none")


class FromZone(Spec):
    zones: list[str]


class ToZone(Spec):
    type: Literal["None", "Only", "Any", "AnyExcept"]
    zones: list[str] | None = None


class Failover(Spec):
    from_: FromZone | None = Field(default=None, alias="from")
    to: ToZone

    def check(self, v: Violations, path: str) -> None:
        if self.from_ is not None:
            if not self.from_.zones:
                v.add(f"{path}.from.zones", "cannot be empty: list the zones this rule applies to")
            for i, z in enumerate(self.from_.zones):
                check_name(v, f"{path}.from.zones[{i}]", z, label=True)
        zones = self.to.zones or []
        if self.to.type in ("Any", "None") and zones:
            v.add(f"{path}.to.zones", f"must be empty when type is {self.to.type}")
        if self.to.type in ("Only", "AnyExcept") and not zones:
            v.add(f"{path}.to.zones", f"must list zones when type is {self.to.type}")
        for i, z in enumerate(zones):
            check_name(v, f"{path}.to.zones[{i}]", z, label=True)


class FailoverThreshold(Spec):
    percentage: int | str


class CrossZone(Spec):
    failover: list[Failover] | None = None
    failover_threshold: FailoverThreshold | None = None

    def check(self, v: Violations, path: str) -> None:
        for i, f in enumerate(self.failover or ()):
            f.check(v, f"{path}.failover[{i}]")
        if self.failover_threshold is not None:
            check_decimal(v, f"{path}.failoverThreshold.percentage", self.failover_threshold.percentage,
                          minimum=0, exclusive_minimum=True, maximum=100, what="percentage")


class LocalityAwareness(Spec):
    disabled: bool | None = None
    local_zone: LocalZone | None = None
    cross_zone: CrossZone | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.local_zone is not None:
            self.local_zone.check(v, f"{path}.localZone")
        if self.cross_zone is not None:
            self.cross_zone.check(v, f"{path}.crossZone")


class Conf(Spec):
    locality_awareness: LocalityAwareness | None = None
    load_balancer: LoadBalancer | None = None
    # Kuma 2.14: hash policies for whatever load balancer applies; they win over the ones inside
    # loadBalancer.ringHash/maglev (which one policy may not set together with these).
    hash_policies: list[HashPolicy] | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, ("load_balancer", "locality_awareness", "hash_policies")):
            return
        if self.load_balancer is not None:
            self.load_balancer.check(v, f"{path}.loadBalancer")
        if self.locality_awareness is not None:
            self.locality_awareness.check(v, f"{path}.localityAwareness")
        _check_hash_policies(v, f"{path}.hashPolicies", self.hash_policies)
        if self.hash_policies is not None and self.load_balancer is not None:
            for name, block in (("ringHash", self.load_balancer.ring_hash), ("maglev", self.load_balancer.maglev)):
                if block is not None and block.hash_policies is not None:
                    v.add(f"{path}.loadBalancer.{name}.hashPolicies",
                          "hashPolicies are already given at the root of default: keep one of the two lists")


class MeshLoadBalancingStrategySpec(Spec):
    target_ref: TargetRef | None = None
    to: list[Item[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        top = effective_target_ref(self.target_ref).kind
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_KINDS, policy=POLICY,
                        listener_tags=True)
        for i, item in enumerate(self.to or ()):
            if item.target_ref.kind == MESH_HTTP_ROUTE:  # Kuma: a route's requests take hash policies only
                for name in ("load_balancer", "locality_awareness"):
                    if getattr(item.default, name) is not None:
                        v.add(f"{path}.to[{i}].default.{camel(name)}", "is not allowed when targetRef.kind is "
                              "MeshHTTPRoute: only hashPolicies apply to a route's requests")
        if top != MESH_GATEWAY:
            check_to(v, path, self.to, policy=POLICY,
                     allowed=(MESH, MESH_SERVICE, MESH_HTTP_ROUTE, MESH_MULTI_ZONE_SERVICE))
            return
        # Kuma 2.14 under a MeshGateway: only Mesh when the entry sets a loadBalancer (it is the gateway's own)
        for i, item in enumerate(self.to or ()):
            lb = item.default.load_balancer is not None
            check_target_ref(v, f"{path}.to[{i}].targetRef", item.target_ref,
                             allowed=(MESH,) if lb else (MESH, MESH_SERVICE, MESH_MULTI_ZONE_SERVICE),
                             where=f"spec.to[].targetRef of {POLICY} under a top-level MeshGateway" +
                                   (" when loadBalancer is set" if lb else ""))
            item.default.check(v, f"{path}.to[{i}].default")


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshloadbalancingstrategies", singular="meshloadbalancingstrategy", scope=Scope.MESH,
    spec_cls=MeshLoadBalancingStrategySpec, flat=False, is_policy=True,
    description="The load-balancing algorithm and locality awareness for outbound destinations.",
))

# --- Envoy effect -----------------------------------------------------------------------------------

LB_POLICIES = {"RoundRobin": cluster_pb2.Cluster.ROUND_ROBIN, "LeastRequest": cluster_pb2.Cluster.LEAST_REQUEST,
               "RingHash": cluster_pb2.Cluster.RING_HASH, "Random": cluster_pb2.Cluster.RANDOM,
               "Maglev": cluster_pb2.Cluster.MAGLEV}
HASH_FUNCTIONS = {"XXHash": cluster_pb2.Cluster.RingHashLbConfig.XX_HASH,
                  "MurmurHash2": cluster_pb2.Cluster.RingHashLbConfig.MURMUR_HASH_2}


def apply_lb(cluster: cluster_pb2.Cluster, lb: dict[str, Any]) -> None:
    kind = lb.get("type")
    if kind not in LB_POLICIES:
        return
    cluster.lb_policy = LB_POLICIES[kind]
    if kind == "LeastRequest":
        conf = lb.get("leastRequest") or {}
        if conf.get("choiceCount") is not None:
            cluster.least_request_lb_config.choice_count.value = conf["choiceCount"]
        if conf.get("activeRequestBias") is not None:
            bias = cluster.least_request_lb_config.active_request_bias
            bias.default_value = float(parse_decimal(conf["activeRequestBias"]) or 0)
            bias.runtime_key = "kuma.lb.least_request.active_request_bias"
    elif kind == "RingHash":
        conf = lb.get("ringHash") or {}
        ring = cluster.ring_hash_lb_config
        ring.SetInParent()
        if conf.get("hashFunction"):
            ring.hash_function = HASH_FUNCTIONS[conf["hashFunction"]]
        if conf.get("minRingSize") is not None:
            ring.minimum_ring_size.value = conf["minRingSize"]
        if conf.get("maxRingSize") is not None:
            ring.maximum_ring_size.value = conf["maxRingSize"]
    elif kind == "Maglev":
        conf = lb.get("maglev") or {}
        cluster.maglev_lb_config.SetInParent()
        if conf.get("tableSize") is not None:
            cluster.maglev_lb_config.table_size.value = conf["tableSize"]


def hash_policies(conf: dict[str, Any]) -> list[dict[str, Any]]:
    """The hash policies of a merged conf: its root `hashPolicies`, else those of its RingHash/Maglev
    load balancer (Kuma's getHashPolicies)."""
    if conf.get("hashPolicies") is not None:
        return list(conf["hashPolicies"])
    lb = conf.get("loadBalancer") or {}
    kind = lb.get("type")
    block = lb.get("ringHash") if kind == "RingHash" else lb.get("maglev") if kind == "Maglev" else None
    return list((block or {}).get("hashPolicies") or ())


def route_hash_policy(hp: dict[str, Any]) -> rc.RouteAction.HashPolicy:
    out = rc.RouteAction.HashPolicy(terminal=bool(hp.get("terminal")))
    kind = hp["type"]
    if kind == "Header":
        out.header.header_name = hp["header"]["name"]
    elif kind == "Cookie":
        cookie = hp["cookie"]
        out.cookie.name = cookie["name"]
        if cookie.get("ttl"):
            out.cookie.ttl.CopyFrom(duration(parse_go_duration(cookie["ttl"])))
        if cookie.get("path"):
            out.cookie.path = cookie["path"]
    elif kind in CONNECTION_TYPES:
        out.connection_properties.source_ip = bool(hp["connection"].get("sourceIP"))
    elif kind == "QueryParameter":
        out.query_parameter.name = hp["queryParameter"]["name"]
    elif kind == "FilterState":
        out.filter_state.key = hp["filterState"]["key"]
    return out


class LoadBalancingPlugin(PolicyPlugin):
    policy_type = POLICY
    order = 50

    def cluster_key(self, ctx: ProxyContext, service: str) -> Hashable:
        merged = ctx.rules.to_conf(POLICY, ctx.dataplane, service)
        if merged is None or not merged.data.get("loadBalancer"):
            return None
        return json.dumps(merged.data["loadBalancer"], sort_keys=True)

    def listener_key(self, ctx: ProxyContext, service: str) -> Hashable:
        """(the destination's hash policies, ((route name, that route's hash policies), ...)) as JSON, for
        routes a `to[]` entry of kind MeshHTTPRoute gives other ones; None when there are none at all."""
        confs = listener_confs(ctx, POLICY, service)
        if confs is None:
            return None
        base_json, per_route_json = confs
        base = hash_policies(json.loads(base_json)) if base_json else []
        routes = tuple((name, policies) for name, text in per_route_json
                       if (policies := hash_policies(json.loads(text))) != base)
        if not base and not routes:
            return None
        return (json.dumps(base, sort_keys=True),
                tuple((name, json.dumps(policies, sort_keys=True)) for name, policies in routes))

    def apply_outbound_cluster(self, ctx: ProxyContext, service: str, cluster: cluster_pb2.Cluster,
                               key: Hashable) -> None:
        assert isinstance(key, str)
        apply_lb(cluster, json.loads(key))

    def spreads_across_zones(self, ctx: ProxyContext, service: str) -> bool:
        merged = ctx.rules.to_conf(POLICY, ctx.dataplane, service)
        return merged is not None and (merged.data.get("localityAwareness") or {}).get("disabled") is True

    def apply_outbound_listener(self, ctx: ProxyContext, service: str, listener: listener_pb2.Listener,
                                key: Hashable) -> None:
        assert isinstance(key, tuple)
        base_json, per_route_json = key
        policies = json.loads(base_json)
        route_policies = [route_hash_policy(hp) for hp in policies]
        per_route = {name: [route_hash_policy(hp) for hp in json.loads(text)] for name, text in per_route_json}

        def edit_manager(manager: hcm_pb2.HttpConnectionManager) -> None:
            for vhost in manager.route_config.virtual_hosts:
                for route in vhost.routes:
                    if route.HasField("route"):
                        del route.route.hash_policy[:]
                        route.route.hash_policy.extend(per_route.get(route.name, route_policies))

        def edit_proxy(proxy: tcp_proxy_pb2.TcpProxy) -> None:
            del proxy.hash_policy[:]
            for hp in policies:  # a TCP proxy can hash on the client address or filter state only
                if hp["type"] in CONNECTION_TYPES and (hp.get("connection") or {}).get("sourceIP"):
                    proxy.hash_policy.append(hash_policy_pb2.HashPolicy(source_ip={}))
                elif hp["type"] == "FilterState":
                    proxy.hash_policy.append(hash_policy_pb2.HashPolicy(
                        filter_state={"key": hp["filterState"]["key"]}))

        update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager, edit_manager)
        update_filters(listener, TCP_PROXY_FILTER, tcp_proxy_pb2.TcpProxy, edit_proxy)


PLUGIN = register_plugin(LoadBalancingPlugin())
