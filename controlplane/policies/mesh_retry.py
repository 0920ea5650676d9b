"""MeshRetry: how outbound requests and connections are retried (`to[]` only).

`default` has one section per protocol; the most specific protocol of the destination picks it:

- `tcp.maxConnectAttempt`: connection attempts before giving up (>= 1).
- `http`: `numRetries`, `perTryTimeout` (0 disables), `backOff.{baseInterval, maxInterval}` (> 0,
  maxInterval >= baseInterval, as Envoy requires), `rateLimitedBackOff.{resetHeaders[{name, format:
  Seconds|UnixTimestamp}], maxInterval}`, `retryOn[]` (Kuma's names: 5xx, GatewayError, Reset,
  Retriable4xx, ConnectFailure, EnvoyRatelimited, RefusedStream, Http3PostConnectFailure,
  HttpMethodConnect ... HttpMethodTrace, or an HTTP status code written as a string, e.g. "503"),
  `retriableResponseHeaders[]`/`retriableRequestHeaders[]` (header matches), `hostSelection[]` predicates
  (OmitPreviousHosts, OmitHostsWithTags with tags, OmitPreviousPriorities with updateFrequency) and
  `hostSelectionMaxAttempts`.
- `grpc`: `numRetries`, `perTryTimeout`, `backOff`, `rateLimitedBackOff`, `retryOn[]` (Canceled,
  DeadlineExceeded, Internal, ResourceExhausted, Unavailable).

Positions (Kuma 2.14): top-level Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane, MeshGateway (with
listener tags) or MeshHTTPRoute (its routes' requests, as a `to[]` entry naming that route would); `to[]` Mesh,
MeshService or MeshHTTPRoute (under a MeshGateway or MeshHTTPRoute: Mesh, or MeshExternalService).

Envoy effect (end of this module), as Kuma renders it: every route of the outbound listener gets a
`retry_policy` from the `http` section (services speaking http/http2) or the `grpc` section (grpc):
`retry_on` (Kuma's default when none is listed: gateway-error,connect-failure,refused-stream for HTTP;
cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable for gRPC),
status codes as `retriable_status_codes` (+ retriable-status-codes), HTTP methods as `:method` retriable
request headers, `num_retries` (0 turns retries off), `per_try_timeout`, `retry_back_off`,
`rate_limited_retry_back_off`, retriable request/response headers and host selection predicates
(previous_hosts, omit_host_metadata, previous_priorities). A TCP proxy gets `max_connect_attempts`.
Routes named by a per-route entry (a MeshHTTPRoute target) use that route's merged conf.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from http import HTTPStatus
from typing import Any, Literal

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.retry.host.omit_host_metadata.v3 import omit_host_metadata_config_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations
from controlplane.resources.fields import PolicyTags
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import HCM_FILTER, TCP_PROXY_FILTER, duration, pack, update_filters
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.rules import listener_confs
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_EXTERNAL_SERVICE,
    MESH_GATEWAY,
    MESH_HTTP_ROUTE,
    MESH_SERVICE,
    SELECTS_NOTHING_YET,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    check_tag_key,
    check_top_level,
    effective_target_ref,
    require_some,
)

from ._checks import (
    INT32_MAX,
    HeaderMatch,
    check_duration,
    check_header_matches,
    check_header_name,
    check_int,
    check_to,
    parse_go_duration,
)

POLICY = "MeshRetry"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY, MESH_HTTP_ROUTE)

# Kuma's retryOn names and the Envoy retry_on value each becomes.
HTTP_RETRY_ON: dict[str, str] = {
    "5xx": "5xx", "GatewayError": "gateway-error", "Reset": "reset", "Retriable4xx": "retriable-4xx",
    "ConnectFailure": "connect-failure", "EnvoyRatelimited": "envoy-ratelimited",
    "RefusedStream": "refused-stream", "Http3PostConnectFailure": "http3-post-connect-failure",
    "HttpMethodConnect": "CONNECT", "HttpMethodDelete": "DELETE", "HttpMethodGet": "GET",
    "HttpMethodHead": "HEAD", "HttpMethodOptions": "OPTIONS", "HttpMethodPatch": "PATCH",
    "HttpMethodPost": "POST", "HttpMethodPut": "PUT", "HttpMethodTrace": "TRACE",
}
# Kuma's docs spell the first one "5XX" while its code says "5xx"; both are accepted.
HTTP_RETRY_ON_ALIASES = {"5XX": "5xx"}
GRPC_RETRY_ON: dict[str, str] = {
    "Canceled": "canceled", "DeadlineExceeded": "deadline-exceeded", "Internal": "internal",
    "ResourceExhausted": "resource-exhausted", "Unavailable": "unavailable",
}
_KNOWN_STATUS = {int(s) for s in HTTPStatus}


class TCP(Spec):
    max_connect_attempt: int | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.max_connect_attempt is None:
            v.add(f"{path}.maxConnectAttempt", "must be set (or remove the tcp section)")
        else:
            check_int(v, f"{path}.maxConnectAttempt", self.max_connect_attempt, minimum=1)


class BackOff(Spec):
    base_interval: str | None = None
    max_interval: str | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, ("base_interval", "max_interval")):
            return
        base = check_duration(v, f"{path}.baseInterval", self.base_interval, allow_zero=False)
        top = check_duration(v, f"{path}.maxInterval", self.max_interval, allow_zero=False)
        # Unset baseInterval is Envoy's 25ms.
        effective_base = base if self.base_interval is not None else 25_000_000
        if top is not None and effective_base is not None and top < effective_base:
            what = f"baseInterval ({self.base_interval})" if self.base_interval else "the default baseInterval 25ms"
            v.add(f"{path}.maxInterval", f"must be at least {what}: Envoy rejects a smaller maxInterval")


class ResetHeader(Spec):
    name: str
    format: Literal["Seconds", "UnixTimestamp"]

    def check(self, v: Violations, path: str) -> None:
        check_header_name(v, f"{path}.name", self.name)


class RateLimitedBackOff(Spec):
    reset_headers: list[ResetHeader] | None = None
    max_interval: str | None = None

    def check(self, v: Violations, path: str) -> None:
        if not self.reset_headers:
            v.add(f"{path}.resetHeaders", "must list at least one header, e.g. {name: retry-after, format: "
                                          "Seconds}")
        for i, h in enumerate(self.reset_headers or ()):
            h.check(v, f"{path}.resetHeaders[{i}]")
        check_duration(v, f"{path}.maxInterval", self.max_interval, allow_zero=False)


class Predicate(Spec):
    predicate: Literal["OmitPreviousHosts", "OmitHostsWithTags", "OmitPreviousPriorities"]
    tags: PolicyTags | None = None
    # Kuma's default is 2.
    update_frequency: int | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.predicate == "OmitHostsWithTags":
            if not self.tags:
                v.add(f"{path}.tags", "must list the tags of the hosts to omit")
            for key, value in (self.tags or {}).items():
                check_tag_key(v, f'{path}.tags["{key}"]', key)
                if not value:
                    v.add(f'{path}.tags["{key}"]', "tag value must be non-empty")
        elif self.tags is not None:
            v.add(f"{path}.tags", f"only applies to OmitHostsWithTags, not {self.predicate}: remove it")
        if self.predicate == "OmitPreviousPriorities":
            check_int(v, f"{path}.updateFrequency", self.update_frequency, minimum=1, maximum=INT32_MAX)
        elif self.update_frequency is not None:
            v.add(f"{path}.updateFrequency", f"only applies to OmitPreviousPriorities, not {self.predicate}: "
                                             "remove it")


class _Common(Spec):
    num_retries: int | None = None
    per_try_timeout: str | None = None
    back_off: BackOff | None = None
    rate_limited_back_off: RateLimitedBackOff | None = None

    def check(self, v: Violations, path: str) -> None:
        check_int(v, f"{path}.numRetries", self.num_retries)
        check_duration(v, f"{path}.perTryTimeout", self.per_try_timeout)
        if self.back_off is not None:
            self.back_off.check(v, f"{path}.backOff")
        if self.rate_limited_back_off is not None:
            self.rate_limited_back_off.check(v, f"{path}.rateLimitedBackOff")


class HTTP(_Common):
    retry_on: list[str | int] | None = None
    retriable_response_headers: list[HeaderMatch] | None = None
    retriable_request_headers: list[HeaderMatch] | None = None
    host_selection: list[Predicate] | None = None
    host_selection_max_attempts: int | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, (
                "num_retries", "per_try_timeout", "back_off", "rate_limited_back_off", "retry_on",
                "retriable_response_headers", "retriable_request_headers", "host_selection",
                "host_selection_max_attempts")):
            return
        super().check(v, path)
        seen: set[str] = set()
        for i, item in enumerate(self.retry_on or ()):
            p = f"{path}.retryOn[{i}]"
            item = str(item)  # Kuma takes a status code unquoted (500) as well as quoted ("500")
            key = HTTP_RETRY_ON_ALIASES.get(item, item)
            if key not in HTTP_RETRY_ON and not (item.isdigit() and int(item) in _KNOWN_STATUS):
                v.add(p, f"unknown item {item!r}: use one of {', '.join(HTTP_RETRY_ON)} or an HTTP status code "
                         "such as \"503\"")
            elif key in seen:
                v.add(p, f"{item!r} is listed twice: remove the duplicate")
            seen.add(key)
        check_header_matches(v, f"{path}.retriableResponseHeaders", self.retriable_response_headers)
        check_header_matches(v, f"{path}.retriableRequestHeaders", self.retriable_request_headers)
        priorities = 0
        for i, pred in enumerate(self.host_selection or ()):
            pred.check(v, f"{path}.hostSelection[{i}]")
            if pred.predicate == "OmitPreviousPriorities":
                priorities += 1
                if priorities > 1:
                    v.add(f"{path}.hostSelection[{i}].predicate", "OmitPreviousPriorities can be given only once")
        check_int(v, f"{path}.hostSelectionMaxAttempts", self.host_selection_max_attempts, minimum=1,
                  maximum=2**63 - 1)


class GRPC(_Common):
    retry_on: list[Literal["Canceled", "DeadlineExceeded", "Internal", "ResourceExhausted",
                           "Unavailable"]] | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, ("num_retries", "per_try_timeout", "back_off",
                                            "rate_limited_back_off", "retry_on")):
            return
        super().check(v, path)
        if self.retry_on is not None and len(set(self.retry_on)) != len(self.retry_on):
            v.add(f"{path}.retryOn", "lists a condition twice: remove the duplicate")


class Conf(Spec):
    tcp: TCP | None = None
    http: HTTP | None = None
    grpc: GRPC | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, ("tcp", "http", "grpc")):
            return
        for name in ("tcp", "http", "grpc"):
            section = getattr(self, name)
            if section is not None:
                section.check(v, f"{path}.{name}")


class MeshRetrySpec(Spec):
    target_ref: TargetRef | None = None
    to: list[Item[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        top = effective_target_ref(self.target_ref).kind
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_KINDS, policy=POLICY,
                        listener_tags=True)
        # Kuma 2.14: under a MeshGateway or MeshHTTPRoute top level, Mesh (and MeshExternalService)
        narrow = top in (MESH_GATEWAY, MESH_HTTP_ROUTE)
        to_kinds = (MESH, MESH_EXTERNAL_SERVICE) if narrow else (MESH, MESH_SERVICE, MESH_HTTP_ROUTE,
                                                                  *SELECTS_NOTHING_YET)
        check_to(v, path, self.to, policy=POLICY, allowed=to_kinds, under=top if narrow else None)


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshretries", singular="meshretry", scope=Scope.MESH, spec_cls=MeshRetrySpec,
    flat=False, is_policy=True,
    description="Retries of failed outbound HTTP, gRPC requests and TCP connections.",
))

# --- Envoy effect -----------------------------------------------------------------------------------

HTTP_RETRY_ON_DEFAULT = "gateway-error,connect-failure,refused-stream"
GRPC_RETRY_ON_DEFAULT = "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable"
GRPC_ENVOY = {"Canceled": "cancelled", "DeadlineExceeded": "deadline-exceeded", "Internal": "internal",
              "ResourceExhausted": "resource-exhausted", "Unavailable": "unavailable"}
RESET_FORMATS = {"Seconds": rc.RetryPolicy.SECONDS, "UnixTimestamp": rc.RetryPolicy.UNIX_TIMESTAMP}


def _header_matcher(raw: dict[str, Any]) -> rc.HeaderMatcher:
    m = HeaderMatch.model_validate(raw)
    t = m.match_type
    if t == "Present":
        return rc.HeaderMatcher(name=m.name, present_match=True)
    if t == "Absent":
        return rc.HeaderMatcher(name=m.name, present_match=False)
    if t == "RegularExpression":
        return rc.HeaderMatcher(name=m.name, string_match=string_pb2.StringMatcher(
            safe_regex={"regex": m.value or ""}))
    if t == "Prefix":
        return rc.HeaderMatcher(name=m.name, string_match=string_pb2.StringMatcher(prefix=m.value or ""))
    return rc.HeaderMatcher(name=m.name, string_match=string_pb2.StringMatcher(exact=m.value or ""))


def _common(policy: rc.RetryPolicy, section: dict[str, Any]) -> None:
    if section.get("numRetries") is not None:
        policy.num_retries.value = section["numRetries"]
    if section.get("perTryTimeout") is not None:
        policy.per_try_timeout.CopyFrom(duration(parse_go_duration(section["perTryTimeout"])))
    back_off = section.get("backOff")
    if back_off:
        if back_off.get("baseInterval"):
            policy.retry_back_off.base_interval.CopyFrom(duration(parse_go_duration(back_off["baseInterval"])))
        else:
            policy.retry_back_off.base_interval.CopyFrom(duration(25_000_000))  # Envoy's default, made explicit
        if back_off.get("maxInterval"):
            policy.retry_back_off.max_interval.CopyFrom(duration(parse_go_duration(back_off["maxInterval"])))
    limited = section.get("rateLimitedBackOff")
    if limited:
        rl = policy.rate_limited_retry_back_off
        for h in limited.get("resetHeaders") or ():
            rl.reset_headers.append(rc.RetryPolicy.ResetHeader(name=h["name"], format=RESET_FORMATS[h["format"]]))
        if limited.get("maxInterval"):
            rl.max_interval.CopyFrom(duration(parse_go_duration(limited["maxInterval"])))


def http_retry_policy(section: dict[str, Any] | None) -> rc.RetryPolicy | None:
    if section is None or section.get("numRetries") == 0:
        return None
    policy = rc.RetryPolicy(retry_on=HTTP_RETRY_ON_DEFAULT)
    _common(policy, section)
    retry_on, codes, methods = [], [], []
    for item in map(str, section.get("retryOn") or ()):
        if item.isdigit():
            codes.append(int(item))
        elif item.startswith("HttpMethod"):
            methods.append(HTTP_RETRY_ON[item])
        else:
            retry_on.append(HTTP_RETRY_ON[HTTP_RETRY_ON_ALIASES.get(item, item)])
    if retry_on:
        policy.retry_on = ",".join(retry_on)
    if codes:
        policy.retriable_status_codes.extend(codes)
        if "retriable-status-codes" not in policy.retry_on.split(","):
            policy.retry_on += ",retriable-status-codes"
    for method in methods:
        policy.retriable_request_headers.append(rc.HeaderMatcher(
            name=":method", string_match=string_pb2.StringMatcher(exact=method)))
    for raw in section.get("retriableRequestHeaders") or ():
        policy.retriable_request_headers.append(_header_matcher(raw))
    for raw in section.get("retriableResponseHeaders") or ():
        policy.retriable_headers.append(_header_matcher(raw))
    for pred in section.get("hostSelection") or ():
        kind = pred.get("predicate")
        if kind == "OmitPreviousHosts":
            policy.retry_host_predicate.append(rc.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate())))
        elif kind == "OmitHostsWithTags":
            metadata = base_pb2.Metadata()
            metadata.filter_metadata["envoy.lb"].CopyFrom(struct_pb2.Struct(fields={
                k: struct_pb2.Value(string_value=v) for k, v in sorted((pred.get("tags") or {}).items())}))
            policy.retry_host_predicate.append(rc.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.omit_host_metadata",
                typed_config=pack(omit_host_metadata_config_pb2.OmitHostMetadataConfig(metadata_match=metadata))))
        elif kind == "OmitPreviousPriorities":
            policy.retry_priority.CopyFrom(rc.RetryPolicy.RetryPriority(
                name="envoy.retry_priorities.previous_priorities",
                typed_config=pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(
                    update_frequency=pred.get("updateFrequency") or 2))))
    if section.get("hostSelectionMaxAttempts") is not None:
        policy.host_selection_retry_max_attempts = section["hostSelectionMaxAttempts"]
    return policy


def grpc_retry_policy(section: dict[str, Any] | None) -> rc.RetryPolicy | None:
    if section is None or section.get("numRetries") == 0:
        return None
    policy = rc.RetryPolicy(retry_on=GRPC_RETRY_ON_DEFAULT)
    _common(policy, section)
    if section.get("retryOn"):
        policy.retry_on = ",".join(GRPC_ENVOY[item] for item in section["retryOn"])
    return policy


def retry_policy(conf: dict[str, Any], protocol: str) -> rc.RetryPolicy | None:
    if protocol == "grpc":
        return grpc_retry_policy(conf.get("grpc"))
    if protocol in ("http", "http2"):
        return http_retry_policy(conf.get("http"))
    return None


class RetryPlugin(PolicyPlugin):
    policy_type = POLICY
    order = 40

    def listener_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return listener_confs(ctx, POLICY, service)

    def apply_outbound_listener(self, ctx: ProxyContext, service: str, listener: listener_pb2.Listener,
                                key: Hashable) -> None:
        assert isinstance(key, tuple)
        base_json, per_route_json = key
        base: dict[str, Any] = json.loads(base_json) if base_json else {}
        per_route = {name: json.loads(text) for name, text in per_route_json}
        protocol = ctx.topology.protocol(service)
        base_policy = retry_policy(base, protocol)

        def edit_manager(manager: hcm_pb2.HttpConnectionManager) -> None:
            for vhost in manager.route_config.virtual_hosts:
                for route in vhost.routes:
                    if not route.HasField("route"):
                        continue
                    conf = per_route.get(route.name)
                    policy = retry_policy(conf, protocol) if conf is not None else base_policy
                    if policy is not None:
                        route.route.retry_policy.CopyFrom(policy)

        def edit_proxy(proxy: tcp_proxy_pb2.TcpProxy) -> None:
            attempts = (base.get("tcp") or {}).get("maxConnectAttempt")
            if attempts is not None:
                proxy.max_connect_attempts.value = attempts

        update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager, edit_manager)
        update_filters(listener, TCP_PROXY_FILTER, tcp_proxy_pb2.TcpProxy, edit_proxy)


PLUGIN = register_plugin(RetryPlugin())
