"""MeshRateLimit: local rate limits on the selected proxies' inbounds, per proxy (no shared rate limit service).

`from[]` entries (kind Mesh: every client, as in Kuma 2.x) give `default.local` with either or both of:

- `http`: `requestRate` (`num` requests per `interval`), `onRateLimit` (`status`, default 429, and response
  `headers` to `set` or `add`), `disabled` (turns a less specific policy's limit off);
- `tcp`: `connectionRate` (`num` connections per `interval`), `disabled`.

Intervals are Go durations of at least 50ms (Envoy's token bucket refills no faster); `num` is 1 or more.
`onRateLimit.status` must be a status Envoy's HttpStatus knows, 400 or above (Envoy answers 429 for
anything lower, which would silently differ from the policy). `to[]` (Kuma's builtin-gateway form) and
MeshHTTPRoute/MeshGateway top-level references are refused: kuma-vm has no builtin gateway.

Kuma 2.10+'s `rules[]` form (`rules: [{default: {local: ...}}]`) is the same configuration for all of a proxy's
inbound traffic; as in Kuma 2.14 (where `from` entries count as rules) each rule merges as a `from` entry of kind
Mesh, in precedence order, so a policy written either way gives the same Envoy config. A policy with `rules`
cannot also have `from` or `to`. A rule's `matches` (Kuma 2.13+: `[{spiffeID: {type: Exact|Prefix, value}}]`, see
`_rule_matches`) limit the HTTP requests of the callers they select instead (a TCP limit cannot depend on the
caller and is refused there, as in Kuma): as Kuma 2.14 does, each distinct match gets its own token bucket,
configured by the merge of the rules for every caller and every rule whose match covers it (a Prefix covers the
longer IDs), the more specific winning; Kuma's `sni` matcher is refused.

Envoy effect (end of this module): HTTP inbounds get `envoy.filters.http.local_ratelimit` before the router
(a token bucket of `num` tokens refilled with `num` every `interval`, enabled and enforced for 100% of
requests); every inbound, HTTP or TCP, with a `tcp` limit gets `envoy.filters.network.local_ratelimit`
before its connection manager or TCP proxy (after RBAC: a refused client does not spend a token). Rules with
matches copy each inbound route once per match, most specific first, with an XFCC header match on the callers'
SPIFFE ID and the match's limit as the route's `typed_per_filter_config` (a disabled limit: a bucket the filter
never consults); the filter is added without a bucket of its own when no rule applies to every caller.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rl_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as net_rl_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from pydantic import Field

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.dataplane import Inbound
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import HCM_FILTER, TCP_PROXY_FILTER, duration, pack, stat_name, update_filters
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.targeting import (
    MESH,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    check_top_level,
)

from ._checks import (
    INT32_MAX,
    check_duration,
    check_from,
    check_header_name,
    check_header_value,
    check_int,
    check_rules,
    parse_go_duration,
    refuse_to,
    rules_as_from,
)
from ._http_filters import add_http_filters
from ._rule_matches import (
    CallerConfs,
    MatchingInboundRule,
    check_rule_matches,
    copy_routes_per_caller,
    matched_rules,
    per_caller_confs,
    register_caller_confs,
    without_matches,
)

POLICY = "MeshRateLimit"
MIN_INTERVAL_NS = 50_000_000
HTTP_FILTER = "envoy.filters.http.local_ratelimit"
NETWORK_FILTER = "envoy.filters.network.local_ratelimit"
# Kuma 2.14: a rule matching callers by spiffeID limits HTTP requests per caller, not TCP connections.
PER_CALLER_ONLY = ("can't be specified when matches contain spiffeID because this field cannot be conditioned on "
                   "source identity: limit the callers' HTTP requests (local.http), or remove the matches")
_ENVOY_STATUSES = frozenset(http_status_pb2.StatusCode.values()) - {0}


class Rate(Spec):
    num: int
    interval: str

    def check(self, v: Violations, path: str) -> None:
        check_int(v, f"{path}.num", self.num, minimum=1, maximum=INT32_MAX)
        ns = check_duration(v, f"{path}.interval", self.interval)
        if ns is not None and ns < MIN_INTERVAL_NS:
            v.add(f"{path}.interval", f"{self.interval!r} is too short: Envoy refills its token bucket at most every "
                                      "50ms, so give 50ms or more")


class HeaderValue(Spec):
    name: str
    value: str


class HeaderModifier(Spec):
    set: list[HeaderValue] | None = None
    add: list[HeaderValue] | None = None

    def check(self, v: Violations, path: str) -> None:
        for op in ("set", "add"):
            items = getattr(self, op) or []
            if len(items) > 16:
                v.add(f"{path}.{op}", f"has {len(items)} headers: Kuma allows at most 16")
            seen: set[str] = set()
            for i, h in enumerate(items):
                check_header_name(v, f"{path}.{op}[{i}].name", h.name, modifiable=True)
                check_header_value(v, f"{path}.{op}[{i}].value", h.value)
                if op == "set" and h.name in seen:
                    v.add(f"{path}.{op}[{i}].name", f"{h.name!r} is set twice: keep one entry")
                seen.add(h.name)


class OnRateLimit(Spec):
    status: int | None = None
    headers: HeaderModifier | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.status is not None and (self.status < 400 or self.status not in _ENVOY_STATUSES):
            v.add(f"{path}.status", f"{self.status} cannot be the answer to a rate-limited request: use a 4xx or 5xx "
                                    "status Envoy knows (e.g. 429, 503); Envoy answers 429 for anything below 400")
        if self.headers is not None:
            self.headers.check(v, f"{path}.headers")


class LocalHTTP(Spec):
    disabled: bool | None = None
    request_rate: Rate | None = None
    on_rate_limit: OnRateLimit | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.disabled is None and self.request_rate is None and self.on_rate_limit is None:
            v.add(path, "must have at least one defined: disabled, requestRate, onRateLimit")
        if self.request_rate is not None:
            self.request_rate.check(v, f"{path}.requestRate")
        if self.on_rate_limit is not None:
            self.on_rate_limit.check(v, f"{path}.onRateLimit")


class LocalTCP(Spec):
    disabled: bool | None = None
    connection_rate: Rate | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.disabled is None and self.connection_rate is None:
            v.add(path, "must have at least one defined: disabled, connectionRate")
        if self.connection_rate is not None:
            self.connection_rate.check(v, f"{path}.connectionRate")


class Local(Spec):
    http: LocalHTTP | None = None
    tcp: LocalTCP | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.http is None and self.tcp is None:
            v.add(path, "must have at least one defined: tcp, http")
        if self.http is not None:
            self.http.check(v, f"{path}.http")
        if self.tcp is not None:
            self.tcp.check(v, f"{path}.tcp")


class Conf(Spec):
    local: Local | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.local is None:
            v.add(f"{path}.local", "must be defined: kuma-vm rate limits locally (local.http and/or local.tcp)")
        else:
            self.local.check(v, f"{path}.local")


class MeshRateLimitSpec(Spec):
    target_ref: TargetRef | None = None
    from_: list[Item[Conf]] | None = Field(default=None, alias="from")
    to: list[Item[Conf]] | None = None
    rules: list[MatchingInboundRule[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_LEVEL_KINDS, policy=POLICY,
                        inbound=True)
        refuse_to(v, path, self.to, doing="rate limits")
        # Kuma 2.14 takes a policy without `from` entries or rules (it configures nothing)
        check_from(v, path, self.from_, policy=POLICY, allowed=(MESH,))
        check_rules(v, path, self.rules, other=[*(self.from_ or ()), *(self.to or ())])
        check_rule_matches(v, path, self.rules)
        for i, rule in enumerate(self.rules or ()):
            local = rule.default.local
            if local is not None and local.tcp is not None and any(m.spiffe_id is not None
                                                                   for m in rule.matches or ()):
                v.add(f"{path}.rules[{i}].default.local.tcp", PER_CALLER_ONLY)

    def inbound_items(self) -> list[Item[Conf]]:
        """Kuma 2.14 (`is_from_as_rules`): `from` entries and rules are one list of inbound rules, and the ones
        matching all traffic (no `matches`) merge in precedence order, as `from` entries of kind Mesh do; rules
        with matches apply per caller (`inbound_key`)."""
        return [*(self.from_ or ()), *rules_as_from(without_matches(self.rules))]


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshratelimits", singular="meshratelimit", scope=Scope.MESH,
    spec_cls=MeshRateLimitSpec, flat=False, is_policy=True,
    description="Limits the rate of HTTP requests and TCP connections an inbound accepts.",
))

# --- Envoy effect -----------------------------------------------------------------------------------

_ALWAYS = base_pb2.RuntimeFractionalPercent(default_value=percent_pb2.FractionalPercent(
    numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED))


def token_bucket(rate: dict[str, Any]) -> token_bucket_pb2.TokenBucket:
    return token_bucket_pb2.TokenBucket(max_tokens=rate["num"], tokens_per_fill={"value": rate["num"]},
                                        fill_interval=duration(parse_go_duration(rate["interval"])))


def http_limit(conf: dict[str, Any], prefix: str) -> http_rl_pb2.LocalRateLimit | None:
    http = (conf.get("local") or {}).get("http") or {}
    rate = http.get("requestRate")
    if http.get("disabled") or rate is None:
        return None
    on_limit = http.get("onRateLimit") or {}
    limit = http_rl_pb2.LocalRateLimit(stat_prefix=prefix, token_bucket=token_bucket(rate),
                                       filter_enabled=_ALWAYS, filter_enforced=_ALWAYS)
    limit.status.code = on_limit.get("status") or 429
    headers = on_limit.get("headers") or {}
    for op, action in (("set", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
                       ("add", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD)):
        for h in headers.get(op) or ():
            limit.response_headers_to_add.append(base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=h["name"], value=h["value"]), append_action=action))
    return limit


def unlimited(prefix: str) -> http_rl_pb2.LocalRateLimit:
    """A route's config for callers whose limit is disabled: Envoy requires a token bucket in a per-route config,
    and without `filter_enabled` (0% of requests, Envoy's default) the bucket is never consulted."""
    return http_rl_pb2.LocalRateLimit(stat_prefix=prefix, token_bucket=token_bucket({"num": 1, "interval": "1s"}))


def tcp_limit(conf: dict[str, Any], prefix: str) -> net_rl_pb2.LocalRateLimit | None:
    tcp = (conf.get("local") or {}).get("tcp") or {}
    rate = tcp.get("connectionRate")
    if tcp.get("disabled") or rate is None:
        return None
    return net_rl_pb2.LocalRateLimit(stat_prefix=prefix, token_bucket=token_bucket(rate))


def _insert_network_filter(chain: listener_components_pb2.FilterChain, f: listener_components_pb2.Filter) -> None:
    """Just before the terminal filter (connection manager or TCP proxy), so after RBAC."""
    at = next((i for i, x in enumerate(chain.filters) if x.name in (HCM_FILTER, TCP_PROXY_FILTER)), len(chain.filters))
    chain.filters.insert(at, f)


def caller_confs(ctx: ProxyContext, inbound: Inbound) -> CallerConfs:
    """Kuma 2.14's matched routes of the inbound: the rules with an HTTP limit, each caller's merged on top of the
    catch-all's (the conf for every caller)."""
    merged = ctx.rules.from_conf(POLICY, ctx.dataplane, inbound)
    base_conf = json.loads(merged.json) if merged is not None else {}
    return per_caller_confs(
        [(c, conf) for c, conf in matched_rules(ctx, POLICY, inbound) if (conf.get("local") or {}).get("http")],
        base_conf if (base_conf.get("local") or {}).get("http") else None)


register_caller_confs(POLICY, caller_confs)


class RateLimitPlugin(PolicyPlugin):
    policy_type = POLICY
    order = 85

    def inbound_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        base = self.from_conf_key(ctx, inbound)
        callers = caller_confs(ctx, inbound)
        return None if base is None and not callers else (base, callers)

    def apply_inbound(self, ctx: ProxyContext, inbound: Inbound, listener: listener_pb2.Listener,
                      key: Hashable) -> None:
        assert isinstance(key, tuple)
        base, callers = key
        conf = json.loads(base) if base is not None else {}
        prefix = stat_name(f"{listener.name}_rate_limit")
        http = http_limit(conf, prefix)
        if http is None and callers:  # the filter the callers' routes configure, limiting nothing by itself
            http = http_rl_pb2.LocalRateLimit(stat_prefix=prefix)
        if http is not None:
            add_http_filters(listener, [hcm_pb2.HttpFilter(name=HTTP_FILTER, typed_config=pack(http))])
        if callers:
            def per_route(route: route_components_pb2.Route, caller_conf: dict[str, Any]) -> None:
                limit = http_limit(caller_conf, prefix) or unlimited(prefix)
                route.typed_per_filter_config[HTTP_FILTER].CopyFrom(pack(limit))

            update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager,
                           lambda manager: copy_routes_per_caller(manager, callers, per_route))
        tcp = tcp_limit(conf, prefix)
        if tcp is not None:
            for chain in listener.filter_chains:
                _insert_network_filter(chain, listener_components_pb2.Filter(name=NETWORK_FILTER,
                                                                             typed_config=pack(tcp)))


PLUGIN = register_plugin(RateLimitPlugin())
