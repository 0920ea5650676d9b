"""MeshTimeout: connection, idle and HTTP timeouts on inbound (`from[]`) and outbound (`to[]`) traffic.

`default` holds `connectionTimeout` (TCP connect, > 0; Kuma's default 5s), `idleTimeout` (no bytes either
way; 0 disables, default 1h) and `http` with `requestTimeout` (default 15s), `streamIdleTimeout` (default
30m), `maxStreamDuration`, `maxConnectionDuration` and `requestHeadersTimeout` (0 disables each). Values are
Go durations ('500ms', '1m30s'); negative or unparseable values, and values beyond what Envoy accepts
(about 292 years), are refused.

Positions (Kuma 2.9): top-level Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane, MeshGateway
(with listener tags) or MeshHTTPRoute; `from[]` Mesh; `to[]` Mesh, MeshService or MeshHTTPRoute (only Mesh
under a MeshGateway or MeshHTTPRoute top-level). Under a route only per-request timeouts make sense, so
`connectionTimeout`, `idleTimeout`, `http.maxStreamDuration` and `http.maxConnectionDuration` are refused
there.

Kuma 2.14's `rules[]` (not with `from`/`to`) configure inbound traffic: rules without `matches` merge as `from`
entries of kind Mesh. A rule's `matches` (`[{spiffeID: {type: Exact|Prefix, value}}]`, see `_rule_matches`)
narrow it to the callers any of them selects; as in Kuma, such a rule may set only `http.requestTimeout` and
`http.streamIdleTimeout` (the others apply per connection, before the caller is known, and are refused), and each
distinct match gets the merge of every rule whose match covers it (a Prefix covers the longer IDs), the more
specific winning. Kuma's `sni` matcher is refused.

Envoy effect (end of this module), with Kuma's defaults for fields a matching policy leaves unset (connect 5s,
idle 1h, request 15s, stream idle 30m, max stream/connection duration 0 = none):

- outbound clusters of a destination: `connect_timeout`; HTTP clusters also the upstream
  `common_http_protocol_options` `idle_timeout`, `max_stream_duration`, `max_connection_duration`;
- outbound listener: TCP proxy `idle_timeout`; HTTP connection manager `stream_idle_timeout` and
  `request_headers_timeout`; every route's `timeout` (request timeout) and, on routes a per-route entry
  names, `idle_timeout` (stream idle);
- inbound (`from[]`): the local cluster's `connect_timeout` and HTTP options, the inbound TCP proxy's
  `idle_timeout`, or the connection manager's `stream_idle_timeout`, `request_headers_timeout`,
  `common_http_protocol_options` (idle, max connection and stream duration) and the route `timeout`; rules with
  matches copy each inbound route once per match, most specific first, with an XFCC header match on the callers'
  SPIFFE ID and the match's `timeout`/`idle_timeout` (Kuma's matched routes).
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from pydantic import Field

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.dataplane import PROTOCOL_TAG, Inbound
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import (
    HCM_FILTER,
    TCP_PROXY_FILTER,
    duration,
    update_filters,
    update_http_protocol_options,
)
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.rules import listener_confs
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_GATEWAY,
    MESH_HTTP_ROUTE,
    MESH_SERVICE,
    SELECTS_NOTHING_YET,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    camel,
    check_target_ref,
    check_top_level,
    effective_target_ref,
    require_some,
)

from ._checks import check_duration, check_from, check_rules, parse_go_duration, rules_as_from
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

POLICY = "MeshTimeout"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY, MESH_HTTP_ROUTE)
ROUTE_ONLY = "cannot be set for a MeshHTTPRoute (it applies per connection, not per route): remove it"
# Kuma 2.14: a rule matching callers by spiffeID sets only what a route can set per caller.
PER_CALLER_ONLY = ("can't be specified when matches contain spiffeID because this field cannot be conditioned on "
                   "source identity: keep http.requestTimeout and http.streamIdleTimeout, or remove the matches")


def caller_confs(ctx: ProxyContext, inbound: Inbound) -> CallerConfs:
    """Kuma 2.14's matched routes of the inbound: per caller match, the merge of the rules covering it."""
    return per_caller_confs(matched_rules(ctx, POLICY, inbound))


register_caller_confs(POLICY, caller_confs)


class Http(Spec):
    request_timeout: str | None = None
    stream_idle_timeout: str | None = None
    max_stream_duration: str | None = None
    max_connection_duration: str | None = None
    request_headers_timeout: str | None = None

    def check(self, v: Violations, path: str) -> None:
        if require_some(v, path, self, ("request_timeout", "stream_idle_timeout", "max_stream_duration",
                                        "max_connection_duration", "request_headers_timeout")):
            for f in ("request_timeout", "stream_idle_timeout", "max_stream_duration", "max_connection_duration",
                      "request_headers_timeout"):
                check_duration(v, f"{path}.{camel(f)}", getattr(self, f))


class Conf(Spec):
    connection_timeout: str | None = None
    idle_timeout: str | None = None
    http: Http | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, ("connection_timeout", "idle_timeout", "http"),
                            "configure at least one timeout: connectionTimeout, idleTimeout or http"):
            return
        check_duration(v, f"{path}.connectionTimeout", self.connection_timeout, allow_zero=False)
        check_duration(v, f"{path}.idleTimeout", self.idle_timeout)
        if self.http is not None:
            self.http.check(v, f"{path}.http")

    def check_for_callers(self, v: Violations, path: str) -> None:
        for f in ("connection_timeout", "idle_timeout"):
            if getattr(self, f) is not None:
                v.add(f"{path}.{camel(f)}", PER_CALLER_ONLY)
        if self.http is not None:
            for f in ("request_headers_timeout", "max_stream_duration", "max_connection_duration"):
                if getattr(self.http, f) is not None:
                    v.add(f"{path}.http.{camel(f)}", PER_CALLER_ONLY)

    def check_for_route(self, v: Violations, path: str) -> None:
        for f in ("connection_timeout", "idle_timeout"):
            if getattr(self, f) is not None:
                v.add(f"{path}.{camel(f)}", ROUTE_ONLY)
        if self.http is not None:
            for f in ("max_stream_duration", "max_connection_duration"):
                if getattr(self.http, f) is not None:
                    v.add(f"{path}.http.{camel(f)}", ROUTE_ONLY)


class MeshTimeoutSpec(Spec):
    target_ref: TargetRef | None = None
    from_: list[Item[Conf]] | None = Field(default=None, alias="from")
    to: list[Item[Conf]] | None = None
    rules: list[MatchingInboundRule[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        top = effective_target_ref(self.target_ref).kind
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_KINDS, policy=POLICY,
                        inbound=bool(self.from_ or self.rules), listener_tags=True)
        if not self.from_ and not self.to and not self.rules:
            v.add(path, "at least one of 'from', 'to' or 'rules' must have an item")
        for name, items in (("from", self.from_), ("rules", self.rules)):
            if items and top in (MESH_GATEWAY, MESH_HTTP_ROUTE):
                v.add(f"{path}.{name}", f"cannot be used with a top-level {top}: use 'to'")
        check_from(v, path, self.from_, policy=POLICY, allowed=(MESH,))
        check_rules(v, path, self.rules, other=[*(self.from_ or ()), *(self.to or ())])
        check_rule_matches(v, path, self.rules)
        for i, rule in enumerate(self.rules or ()):
            if any(m.spiffe_id is not None for m in rule.matches or ()):
                rule.default.check_for_callers(v, f"{path}.rules[{i}].default")
        to_kinds = (MESH,) if top in (MESH_GATEWAY, MESH_HTTP_ROUTE) else (MESH, MESH_SERVICE, MESH_HTTP_ROUTE,
                                                                            *SELECTS_NOTHING_YET)
        for i, item in enumerate(self.to or ()):
            p = f"{path}.to[{i}]"
            check_target_ref(v, f"{p}.targetRef", item.target_ref, allowed=to_kinds,
                             where=f"spec.to[].targetRef of {POLICY}" +
                                   (f" under a top-level {top}" if len(to_kinds) == 1 else ""))
            item.default.check(v, f"{p}.default")
            if top == MESH_HTTP_ROUTE or item.target_ref.kind == MESH_HTTP_ROUTE:
                item.default.check_for_route(v, f"{p}.default")


    def inbound_items(self) -> list[Item[Conf]]:
        """What applies to every caller (Kuma's catch-all rules); rules with matches apply per caller."""
        return [*(self.from_ or ()), *rules_as_from(without_matches(self.rules))]


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshtimeouts", singular="meshtimeout", scope=Scope.MESH, spec_cls=MeshTimeoutSpec,
    flat=False, is_policy=True,
    description="Connection, idle and HTTP timeouts for inbound and outbound traffic.",
))

# --- Envoy effect -----------------------------------------------------------------------------------

HTTP_PROTOCOLS = ("http", "http2", "grpc")
S = 1_000_000_000
DEFAULTS = {"connectionTimeout": 5 * S, "idleTimeout": 3600 * S, "requestTimeout": 15 * S,
            "streamIdleTimeout": 1800 * S, "maxStreamDuration": 0, "maxConnectionDuration": 0}


def _get(conf: dict[str, Any], field: str) -> int:
    """A timeout of a merged conf in nanoseconds (Kuma's default when unset)."""
    value = conf.get(field)
    if value is None and field in ("requestTimeout", "streamIdleTimeout", "maxStreamDuration",
                                   "maxConnectionDuration", "requestHeadersTimeout"):
        value = (conf.get("http") or {}).get(field)
    if value is None:
        return DEFAULTS.get(field, 0)
    return parse_go_duration(value)


def _has(conf: dict[str, Any], field: str) -> bool:
    return conf.get(field) is not None or (conf.get("http") or {}).get(field) is not None


def _cluster_timeouts(cluster: cluster_pb2.Cluster, conf: dict[str, Any], http: bool) -> None:
    cluster.connect_timeout.CopyFrom(duration(_get(conf, "connectionTimeout")))
    if not http:
        return

    def edit(options: Any) -> None:
        common = options.common_http_protocol_options
        common.idle_timeout.CopyFrom(duration(_get(conf, "idleTimeout")))
        _set_limit(common, "max_stream_duration", _get(conf, "maxStreamDuration"))
        _set_limit(common, "max_connection_duration", _get(conf, "maxConnectionDuration"))

    update_http_protocol_options(cluster, edit)


def _set_limit(common: Any, field: str, nanos: int) -> None:
    """Kuma's 0 means "no limit", which Envoy spells as an absent field: an explicit 0s max connection
    duration makes Envoy close every connection at once (seen as a stream of 503s under load)."""
    if nanos:
        getattr(common, field).CopyFrom(duration(nanos))
    else:
        common.ClearField(field)


def _manager_timeouts(manager: hcm_pb2.HttpConnectionManager, conf: dict[str, Any]) -> None:
    manager.stream_idle_timeout.CopyFrom(duration(_get(conf, "streamIdleTimeout")))
    if _has(conf, "requestHeadersTimeout"):
        manager.request_headers_timeout.CopyFrom(duration(_get(conf, "requestHeadersTimeout")))


def _caller_timeouts(route: route_components_pb2.Route, conf: dict[str, Any]) -> None:
    """A caller's route copy (see `copy_routes_per_caller`): the match's request and stream idle timeouts; the
    catch-all request timeout stays where the match's conf sets none."""
    if _has(conf, "requestTimeout"):
        route.route.timeout.CopyFrom(duration(_get(conf, "requestTimeout")))
    if _has(conf, "streamIdleTimeout"):
        route.route.idle_timeout.CopyFrom(duration(_get(conf, "streamIdleTimeout")))


class TimeoutPlugin(PolicyPlugin):
    policy_type = POLICY
    order = 30

    # --- outbound ---

    def cluster_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return self.to_conf_key(ctx, service)

    def listener_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return listener_confs(ctx, POLICY, service)

    def apply_outbound_cluster(self, ctx: ProxyContext, service: str, cluster: cluster_pb2.Cluster,
                               key: Hashable) -> None:
        assert isinstance(key, str)
        _cluster_timeouts(cluster, json.loads(key), ctx.topology.protocol(service) in HTTP_PROTOCOLS)

    def apply_outbound_listener(self, ctx: ProxyContext, service: str, listener: listener_pb2.Listener,
                                key: Hashable) -> None:
        assert isinstance(key, tuple)
        base_json, per_route_json = key
        base: dict[str, Any] = json.loads(base_json) if base_json else {}
        per_route = {name: json.loads(text) for name, text in per_route_json}

        def edit_manager(manager: hcm_pb2.HttpConnectionManager) -> None:
            if base_json:
                _manager_timeouts(manager, base)
            for vhost in manager.route_config.virtual_hosts:
                for route in vhost.routes:
                    if not route.HasField("route"):
                        continue
                    conf = per_route.get(route.name)
                    if conf is not None:
                        route.route.timeout.CopyFrom(duration(_get(conf, "requestTimeout")))
                        if _has(conf, "streamIdleTimeout"):
                            route.route.idle_timeout.CopyFrom(duration(_get(conf, "streamIdleTimeout")))
                    elif base_json:
                        route.route.timeout.CopyFrom(duration(_get(base, "requestTimeout")))

        def edit_proxy(proxy: tcp_proxy_pb2.TcpProxy) -> None:
            proxy.idle_timeout.CopyFrom(duration(_get(base, "idleTimeout")))

        update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager, edit_manager)
        if base_json:
            update_filters(listener, TCP_PROXY_FILTER, tcp_proxy_pb2.TcpProxy, edit_proxy)

    # --- inbound ---

    def inbound_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        base = self.from_conf_key(ctx, inbound)
        callers = caller_confs(ctx, inbound)
        return None if base is None and not callers else (base, callers)

    def local_cluster_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        merged = ctx.rules.from_conf(POLICY, ctx.dataplane, inbound)
        return None if merged is None else (merged.json, inbound.tags.get(PROTOCOL_TAG, "tcp") in HTTP_PROTOCOLS)

    def apply_local_cluster(self, ctx: ProxyContext, inbound: Inbound, cluster: cluster_pb2.Cluster,
                            key: Hashable) -> None:
        assert isinstance(key, tuple)
        _cluster_timeouts(cluster, json.loads(key[0]), key[1])

    def apply_inbound(self, ctx: ProxyContext, inbound: Inbound, listener: listener_pb2.Listener,
                      key: Hashable) -> None:
        assert isinstance(key, tuple)
        base_json, callers = key
        if base_json is not None:
            self._apply_inbound_conf(listener, json.loads(base_json))
        if callers:  # after: a caller's route starts from the catch-all one
            update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager,
                           lambda manager: copy_routes_per_caller(manager, callers, _caller_timeouts))

    @staticmethod
    def _apply_inbound_conf(listener: listener_pb2.Listener, conf: dict[str, Any]) -> None:
        """The conf for every caller (from entries and rules without matches), with Kuma's defaults."""

        def edit_manager(manager: hcm_pb2.HttpConnectionManager) -> None:
            _manager_timeouts(manager, conf)
            common = manager.common_http_protocol_options
            common.idle_timeout.CopyFrom(duration(_get(conf, "idleTimeout")))
            _set_limit(common, "max_connection_duration", _get(conf, "maxConnectionDuration"))
            _set_limit(common, "max_stream_duration", _get(conf, "maxStreamDuration"))
            for vhost in manager.route_config.virtual_hosts:
                for route in vhost.routes:
                    if route.HasField("route"):
                        route.route.timeout.CopyFrom(duration(_get(conf, "requestTimeout")))

        def edit_proxy(proxy: tcp_proxy_pb2.TcpProxy) -> None:
            proxy.idle_timeout.CopyFrom(duration(_get(conf, "idleTimeout")))

        update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager, edit_manager)
        update_filters(listener, TCP_PROXY_FILTER, tcp_proxy_pb2.TcpProxy, edit_proxy)


PLUGIN = register_plugin(TimeoutPlugin())
