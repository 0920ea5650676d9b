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

Positions (Kuma 2.9): top-level Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane or MeshGateway
(with listener tags); `to[]` Mesh, MeshService or MeshHTTPRoute (only Mesh under a MeshGateway).

Envoy effect: route retry_policy (retry_on, retriable_status_codes, back-off, host predicates) and the
TCP proxy's max_connect_attempts. Added by the xDS layer, not here.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Literal

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations

from ._common import (
    INT32_MAX,
    MESH,
    MESH_GATEWAY,
    MESH_HTTP_ROUTE,
    MESH_SERVICE,
    TOP_LEVEL_KINDS,
    HeaderMatch,
    Item,
    TargetRef,
    check_duration,
    check_header_matches,
    check_header_name,
    check_int,
    check_tag_key,
    check_target_ref,
    check_top_level,
    effective_target_ref,
    require_some,
)

POLICY = "MeshRetry"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY)

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
    tags: dict[str, str] | None = None
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
            if isinstance(item, int):
                v.add(p, f"write status codes as strings: \"{item}\"")
                continue
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
        if not self.to:
            v.add(f"{path}.to", "needs at least one item")
        to_kinds = (MESH,) if top == MESH_GATEWAY else (MESH, MESH_SERVICE, MESH_HTTP_ROUTE)
        for i, item in enumerate(self.to or ()):
            p = f"{path}.to[{i}]"
            check_target_ref(v, f"{p}.targetRef", item.target_ref, allowed=to_kinds,
                             where=f"spec.to[].targetRef of {POLICY}" +
                                   (" under a top-level MeshGateway" if top == MESH_GATEWAY else ""))
            item.default.check(v, f"{p}.default")


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshretries", singular="meshretry", scope=Scope.MESH, spec_cls=MeshRetrySpec,
    flat=False, is_policy=True,
    description="Retries of failed outbound HTTP, gRPC requests and TCP connections.",
))

# --- Envoy effect -----------------------------------------------------------------------------------
# The xDS issue adds here how merged MeshRetry confs become route retry policies and TCP proxy settings.
