"""MeshHTTPRoute: L7 routing of outbound HTTP requests (matching, filters, weighted backends).

Each `to[]` entry names a destination (`targetRef` MeshService; Mesh under a MeshGateway, where
`hostnames[]` may narrow it) and its `rules[]`. A rule has:

- `matches[]` (at least one; a request matching any of them takes the rule): `path.{type: Exact |
  PathPrefix | RegularExpression, value}` (Exact/PathPrefix absolute, PathPrefix without a trailing '/'),
  `method` (CONNECT, DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, TRACE), `headers[]` (type Exact, Present,
  RegularExpression, Absent, Prefix) and `queryParams[]` (type Exact, RegularExpression);
- `default.filters[]`: RequestHeaderModifier / ResponseHeaderModifier (`set`, `add`, `remove`),
  RequestRedirect (`scheme`, `hostname`, `path`, `port`, `statusCode` 301/302/303/307/308), URLRewrite
  (`hostname`, `path`, `hostToBackendHostname` on gateways), RequestMirror (`backendRef`, `percentage`);
- `default.backendRefs[]`: MeshService / MeshServiceSubset with `name`, `tags`, `weight` (>= 0, default 1,
  not all 0) and `port`.

Regular expressions are checked with Python's `re` as an approximation of Envoy's RE2: RE2-only
constructs Python lacks are refused, Python-only constructs RE2 lacks are refused, and the RE2 program
size is estimated and held to Envoy's default limit.

Accepted as Kuma accepts them: RequestRedirect together with backendRefs or URLRewrite (the redirect answers
the request itself, so the others have no effect). Refused as conflicting: a filter type other than
RequestMirror given twice; identical matches within a rule, and two rules with identical matches in one
`to[]` entry.

Envoy effect (end of this module): the routes of the outbound HTTP listener of each `to[]` service. Rules of
all applying policies merge by their `matches` (Kuma's rule: a later policy's rule with the same matches
merges over an earlier one, others are added); a catch-all `PathPrefix /` rule to the service itself is
added unless present; every match becomes one Envoy route, ordered as Gateway API says (Exact path, then
the longest PathPrefix, then the longest RegularExpression, then method, more headers, more query
parameters). Backends become `cluster` or `weighted_clusters` (weight 0 backends are left out), a
MeshServiceSubset backend its own cluster of the matching endpoints; filters become request/response
header mutations, `redirect`, `host_rewrite_literal`/`prefix_rewrite`/`regex_rewrite` and
`request_mirror_policies`. Each route is named by the hash of its rule's matches, which per-route
MeshTimeout/MeshRetry entries refer to. Only services whose protocol is http, http2 or grpc are routed. The
implicit catch-all goes after every written rule (Kuma's order ranks RegularExpression after any PathPrefix,
so a catch-all sorted with the others would shadow regex rules).
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from controlplane.resources.base import Resource, ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import HCM_FILTER, seconds, update_filters
from controlplane.xds.generate.plugins import Backend, PolicyPlugin, register_plugin
from controlplane.xds.generate.rules import register_merger, register_route_names
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_GATEWAY,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    SELECTS_NOTHING_YET,
    TOP_LEVEL_KINDS,
    TargetRef,
    check_target_ref,
    check_top_level,
    effective_target_ref,
    matches_hash,
    merge_patch,
    require_some,
)

from ._checks import (
    BackendRef,
    HeaderMatch,
    backend_of,
    check_backend_refs,
    check_header_matches,
    check_header_name,
    check_header_value,
    check_percentage,
    check_precise_hostname,
    check_regex,
    check_type_blocks,
    check_wildcard_hostname,
    parse_decimal,
    refuse_backend_kind_not_supported,
    seen_before,
)

POLICY = "MeshHTTPRoute"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY)
Method = Literal["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"]
MAX_MODIFIER_HEADERS = 16
SINGLE_USE_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite")


class PathMatch(Spec):
    type: Literal["Exact", "PathPrefix", "RegularExpression"]
    value: str

    def check(self, v: Violations, path: str) -> None:
        p = f"{path}.value"
        if not self.value:
            v.add(p, "cannot be empty")
        elif self.type == "RegularExpression":
            check_regex(v, p, self.value)
        elif not self.value.startswith("/"):
            v.add(p, f"{self.value!r} must be an absolute path (start with '/')")
        elif self.type == "PathPrefix" and self.value != "/" and self.value.endswith("/"):
            v.add(p, "does not need a trailing slash: a prefix matches only whole '/'-separated segments, "
                     f"so write {self.value.rstrip('/')!r}")
        elif any(c in self.value for c in "?#") or any(c.isspace() or ord(c) < 0x20 for c in self.value):
            v.add(p, "must be a plain path: no query ('?'), fragment ('#'), spaces or control characters")


class QueryParamsMatch(Spec):
    type: Literal["Exact", "RegularExpression"]
    name: str
    value: str

    def check(self, v: Violations, path: str) -> None:
        if not self.name:
            v.add(f"{path}.name", "cannot be empty")
        elif len(self.name.encode()) > 1024:
            v.add(f"{path}.name", "is too long: Envoy takes query parameter names of at most 1024 bytes")
        if self.type == "RegularExpression":
            check_regex(v, f"{path}.value", self.value)


class Match(Spec):
    path: PathMatch | None = None
    method: Method | None = None
    query_params: list[QueryParamsMatch] | None = None
    headers: list[HeaderMatch] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.path is not None:
            self.path.check(v, f"{path}.path")
        seen: dict[Hashable, int] = {}
        for i, q in enumerate(self.query_params or ()):
            q.check(v, f"{path}.queryParams[{i}]")
            if seen_before(seen, q.name, i) is not None:
                v.add(f"{path}.queryParams[{i}].name", f"multiple entries for name {q.name}: combine them")
        check_header_matches(v, f"{path}.headers", self.headers)

    def key(self) -> Any:
        """A canonical form: two matches with equal keys match exactly the same requests."""
        return (
            (self.path.type, self.path.value) if self.path else None,
            self.method,
            tuple(sorted((q.name, q.type, q.value) for q in self.query_params or ())),
            tuple(sorted((h.name, h.match_type, h.value or "") for h in self.headers or ())),
        )


class HeaderKeyValue(Spec):
    name: str
    value: str


class HeaderModifier(Spec):
    set: list[HeaderKeyValue] | None = None
    add: list[HeaderKeyValue] | None = None
    remove: list[str] | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, ("set", "add", "remove")):
            return
        seen: dict[Hashable, str] = {}

        def once(name: str, p: str) -> None:
            if (earlier := seen_before(seen, name, p)) is not None:
                v.add(p, f"header {name!r} is already modified at {earlier}: only one action per header")

        for field in ("set", "add", "remove"):
            items = getattr(self, field) or []
            if len(items) > MAX_MODIFIER_HEADERS:
                v.add(f"{path}.{field}", f"at most {MAX_MODIFIER_HEADERS} entries")
        for field in ("set", "add"):
            for i, kv in enumerate(getattr(self, field) or ()):
                p = f"{path}.{field}[{i}]"
                check_header_name(v, f"{p}.name", kv.name, modifiable=True)
                check_header_value(v, f"{p}.value", kv.value)
                once(kv.name, f"{p}.name")
        for i, name in enumerate(self.remove or ()):
            p = f"{path}.remove[{i}]"
            check_header_name(v, p, name, modifiable=True)
            once(name, p)


class PathRewrite(Spec):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None

    def check_in(self, v: Violations, path: str, *, all_prefix: bool) -> None:
        if self.type == "ReplaceFullPath":
            value, field, other, other_field = (self.replace_full_path, "replaceFullPath",
                                                self.replace_prefix_match, "replacePrefixMatch")
        else:
            value, field, other, other_field = (self.replace_prefix_match, "replacePrefixMatch",
                                                self.replace_full_path, "replaceFullPath")
        if other is not None:
            v.add(f"{path}.{other_field}", f"does not apply to type {self.type}: remove it")
        if value is None:
            v.add(f"{path}.{field}", f"must be set for type {self.type}")
            return
        if not value.startswith("/"):
            v.add(f"{path}.{field}", f"{value!r} must be an absolute path (start with '/')")
        else:
            check_header_value(v, f"{path}.{field}", value)
        if self.type == "ReplacePrefixMatch" and not all_prefix:
            v.add(f"{path}.{field}", "can only be used when every match of the rule is a PathPrefix match")


class RequestRedirect(Spec):
    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    path: PathRewrite | None = None
    port: int | None = None
    status_code: Literal[301, 302, 303, 307, 308] | None = None

    def check_in(self, v: Violations, path: str, *, all_prefix: bool) -> None:
        check_precise_hostname(v, f"{path}.hostname", self.hostname)
        if self.path is not None:
            self.path.check_in(v, f"{path}.path", all_prefix=all_prefix)
        if self.port is not None and not 1 <= self.port <= 65535:
            v.add(f"{path}.port", f"port {self.port} must be in the range [1, 65535]")


class URLRewrite(Spec):
    hostname: str | None = None
    path: PathRewrite | None = None
    host_to_backend_hostname: bool | None = None

    def check_in(self, v: Violations, path: str, *, all_prefix: bool, top: str) -> None:
        if not require_some(v, path, self, ("hostname", "path", "host_to_backend_hostname")):
            return
        check_precise_hostname(v, f"{path}.hostname", self.hostname)
        if self.path is not None:
            self.path.check_in(v, f"{path}.path", all_prefix=all_prefix)
        if self.host_to_backend_hostname:
            if top != MESH_GATEWAY:
                v.add(f"{path}.hostToBackendHostname", "can only be set on routes of a MeshGateway")
            if self.hostname is not None:
                v.add(f"{path}.hostToBackendHostname", "cannot be set together with hostname: choose one")


class RequestMirror(Spec):
    backend_ref: BackendRef
    percentage: int | str | None = None

    def check(self, v: Violations, path: str) -> None:
        if refuse_backend_kind_not_supported(v, f"{path}.backendRef", self.backend_ref):
            return
        check_target_ref(v, f"{path}.backendRef", self.backend_ref, allowed=(MESH_SERVICE, MESH_SERVICE_SUBSET),
                         where="a RequestMirror backendRef")
        if self.backend_ref.weight is not None:
            v.add(f"{path}.backendRef.weight", "does not apply to a mirror (use percentage): remove it")
        if self.backend_ref.port is not None and (self.backend_ref.kind != MESH_SERVICE
                                                  or not 1 <= self.backend_ref.port <= 65535):
            v.add(f"{path}.backendRef.port", "must be a port 1-65535 of a MeshService backend")
        check_percentage(v, f"{path}.percentage", self.percentage)


FILTER_FIELDS = {"RequestHeaderModifier": "request_header_modifier",
                 "ResponseHeaderModifier": "response_header_modifier",
                 "RequestRedirect": "request_redirect", "URLRewrite": "url_rewrite", "RequestMirror": "request_mirror"}
FILTER_ALIASES = {"request_header_modifier": "requestHeaderModifier",
                  "response_header_modifier": "responseHeaderModifier", "request_redirect": "requestRedirect",
                  "url_rewrite": "urlRewrite", "request_mirror": "requestMirror"}


class Filter(Spec):
    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite",
                  "RequestMirror"]
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    request_mirror: RequestMirror | None = None

    def check_in(self, v: Violations, path: str, *, all_prefix: bool, top: str) -> None:
        def check(block: Any, p: str) -> None:
            if isinstance(block, HeaderModifier | RequestMirror):
                block.check(v, p)
            elif isinstance(block, RequestRedirect):
                block.check_in(v, p, all_prefix=all_prefix)
            else:
                block.check_in(v, p, all_prefix=all_prefix, top=top)

        check_type_blocks(v, path, self.type, {
            kind: (FILTER_ALIASES[field], getattr(self, field), "") for kind, field in FILTER_FIELDS.items()},
            check=check, missing="must be set for a filter of type {chosen}",
            unused="does not apply to a filter of type {chosen}: remove it")


class RuleConf(Spec):
    filters: list[Filter] | None = None
    backend_refs: list[BackendRef] | None = None

    def check_in(self, v: Violations, path: str, *, all_prefix: bool, top: str) -> None:
        types: dict[Hashable, int] = {}
        for i, f in enumerate(self.filters or ()):
            p = f"{path}.filters[{i}]"
            f.check_in(v, p, all_prefix=all_prefix, top=top)
            earlier = seen_before(types, f.type, i)
            if f.type in SINGLE_USE_FILTERS and earlier is not None:
                v.add(f"{p}.type", f"a {f.type} filter is already given at filters[{earlier}]: merge them")
        # Kuma accepts RequestRedirect next to URLRewrite or backendRefs; the redirect answers the request
        # itself, so those have no effect (see envoy_route).
        if self.backend_refs is not None:
            check_backend_refs(v, f"{path}.backendRefs", self.backend_refs,
                               where=f"default.backendRefs of {POLICY}")
        elif top == MESH_GATEWAY and "RequestRedirect" not in types:
            v.add(f"{path}.backendRefs", "is required on MeshGateway routes (or add a RequestRedirect filter)")


class Rule(Spec):
    matches: list[Match]
    default: RuleConf

    def check_in(self, v: Violations, path: str, *, top: str) -> None:
        if not self.matches:
            v.add(f"{path}.matches", "needs at least one match (use path PathPrefix '/' to match everything)")
        seen: dict[Hashable, int] = {}
        for i, m in enumerate(self.matches):
            m.check(v, f"{path}.matches[{i}]")
            if (earlier := seen_before(seen, m.key(), i)) is not None:
                v.add(f"{path}.matches[{i}]", f"is identical to matches[{earlier}]: remove the duplicate")
        all_prefix = all(m.path is not None and m.path.type == "PathPrefix" for m in self.matches)
        self.default.check_in(v, f"{path}.default", all_prefix=all_prefix, top=top)

    def matches_key(self) -> Any:
        return frozenset(m.key() for m in self.matches)


class To(Spec):
    target_ref: TargetRef
    hostnames: list[str] | None = None
    rules: list[Rule] | None = None

    def check_in(self, v: Violations, path: str, *, top: str) -> None:
        allowed = (MESH,) if top == MESH_GATEWAY else (MESH_SERVICE, *SELECTS_NOTHING_YET)
        check_target_ref(v, f"{path}.targetRef", self.target_ref, allowed=allowed,
                         where=f"spec.to[].targetRef of {POLICY}" +
                               (" under a top-level MeshGateway" if top == MESH_GATEWAY else ""))
        if self.hostnames is not None:
            if top != MESH_GATEWAY:
                v.add(f"{path}.hostnames", "can only be used with a top-level MeshGateway: remove it")
            else:
                for i, h in enumerate(self.hostnames):
                    check_wildcard_hostname(v, f"{path}.hostnames[{i}]", h)
                    if h in self.hostnames[:i]:
                        v.add(f"{path}.hostnames[{i}]", f"{h!r} is listed twice: remove the duplicate")
        seen: dict[Hashable, int] = {}
        for i, rule in enumerate(self.rules or ()):
            rule.check_in(v, f"{path}.rules[{i}]", top=top)
            earlier = seen_before(seen, rule.matches_key(), i)
            if rule.matches and earlier is not None:
                v.add(f"{path}.rules[{i}].matches", f"are the same as rules[{earlier}].matches: merge the two "
                                                    "rules")


class MeshHTTPRouteSpec(Spec):
    target_ref: TargetRef | None = None
    to: list[To] | None = None

    def check(self, v: Violations, path: str) -> None:
        top = effective_target_ref(self.target_ref).kind
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_KINDS, policy=POLICY,
                        listener_tags=True)
        for i, item in enumerate(self.to or ()):
            item.check_in(v, f"{path}.to[{i}]", top=top)


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshhttproutes", singular="meshhttproute", scope=Scope.MESH,
    spec_cls=MeshHTTPRouteSpec, flat=False, is_policy=True,
    description="HTTP routing: request matching, filters and weighted backends.",
))

# --- Envoy effect -----------------------------------------------------------------------------------

HTTP_PROTOCOLS = ("http", "http2", "grpc")
CATCH_ALL: list[dict[str, Any]] = [{"path": {"type": "PathPrefix", "value": "/"}}]
DEFAULT_ROUTE_TIMEOUT = 15.0  # the outbound generator's (and Kuma's MeshTimeout) default request timeout
REDIRECT_CODES = {301: rc.RedirectAction.MOVED_PERMANENTLY, 302: rc.RedirectAction.FOUND,
                  303: rc.RedirectAction.SEE_OTHER, 307: rc.RedirectAction.TEMPORARY_REDIRECT,
                  308: rc.RedirectAction.PERMANENT_REDIRECT}


def merge_rules(confs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Kuma's merge of MeshHTTPRoute `to[]` entries: `rules` is a map keyed by `matches`; the same key in a
    later entry merges its `default` over the earlier one (JSON merge patch), new keys are appended."""
    rules: dict[str, dict[str, Any]] = {}
    for conf in confs:
        for rule in conf.get("rules") or ():
            key = json.dumps(rule.get("matches"), sort_keys=True)
            if key in rules:
                rules[key] = {"matches": rule.get("matches"),
                              "default": merge_patch(rules[key].get("default") or {}, rule.get("default") or {})}
            else:
                rules[key] = {"matches": rule.get("matches"), "default": rule.get("default") or {}}
    return {"rules": list(rules.values())} if rules else None


def route_rules(ctx: ProxyContext, service: str) -> list[Rule] | None:
    """The merged rules for the outbound listener of `service` (catch-all included), or None when no
    MeshHTTPRoute applies (or the service does not speak HTTP)."""
    merged = _merged(ctx, service)
    return None if merged is None else _rules_of(merged.json)


def _merged(ctx: ProxyContext, service: str) -> Any:
    if ctx.topology.protocol(service) not in HTTP_PROTOCOLS:
        return None
    return ctx.rules.to_conf(POLICY, ctx.dataplane, service)


_RULES_CACHE: dict[str, list[Rule]] = {}
IMPLICIT_CATCH_ALL = Rule.model_validate({"matches": CATCH_ALL, "default": {}})


def _rules_of(key: str) -> list[Rule]:
    found = _RULES_CACHE.get(key)
    if found is None:
        raw = json.loads(key)["rules"]
        found = [Rule.model_validate(r) for r in raw]
        if not any(r.get("matches") == CATCH_ALL for r in raw):
            found.append(IMPLICIT_CATCH_ALL)
        if len(_RULES_CACHE) > 4096:
            _RULES_CACHE.clear()
        _RULES_CACHE[key] = found
    return found


def route_names(ctx: ProxyContext, service: str) -> tuple[str, ...]:
    """The names (rule hashes) of the routes the outbound listener of `service` has; () without routes."""
    rules = route_rules(ctx, service)
    if rules is None:
        return ()
    return tuple(dict.fromkeys(rule_hash(r) for r in rules))


def rule_hash(rule: Rule) -> str:
    return matches_hash([m.to_wire() for m in rule.matches])


def _has_redirect(rule: Rule) -> bool:
    return any(f.type == "RequestRedirect" for f in rule.default.filters or ())


def rule_backends(rule: Rule, service: str) -> list[tuple[Backend, int]]:
    """(backend, weight) a rule forwards to: its backendRefs with a weight above 0, or the service."""
    if rule.default.backend_refs is None:
        return [(Backend(service), 1)]
    return [(backend_of(r), r.effective_weight) for r in rule.default.backend_refs if r.effective_weight > 0]


def _match_order(match: Match) -> tuple[int, int, int, int, int, int]:
    """Gateway API precedence (Kuma's CompareMatch): smaller sorts first and wins."""
    # No path is Gateway API's default, PathPrefix '/' (what the Envoy route matches too), so a headers-only
    # match is not shadowed by the catch-all rule.
    kind, value = (match.path.type, match.path.value) if match.path is not None else ("PathPrefix", "/")
    rank = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}[kind]
    return (0, rank, 0 if rank == 0 else -len(value), 0 if match.method else 1, -len(match.headers or ()),
            -len(match.query_params or ()))


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


def _string_match(kind: str, value: str) -> string_pb2.StringMatcher:
    if kind == "RegularExpression":
        return string_pb2.StringMatcher(safe_regex=_regex(value))
    if kind == "Prefix":
        return string_pb2.StringMatcher(prefix=value)
    return string_pb2.StringMatcher(exact=value)


def header_matcher(h: HeaderMatch) -> rc.HeaderMatcher:
    t = h.match_type
    if t == "Present":
        return rc.HeaderMatcher(name=h.name, present_match=True)
    if t == "Absent":
        return rc.HeaderMatcher(name=h.name, present_match=False)
    return rc.HeaderMatcher(name=h.name, string_match=_string_match(t, h.value or ""))


def route_match(match: Match) -> rc.RouteMatch:
    m = rc.RouteMatch()
    path = match.path
    if path is None or (path.type == "PathPrefix" and path.value == "/"):
        m.prefix = "/"
    elif path.type == "Exact":
        m.path = path.value
    elif path.type == "PathPrefix":
        m.path_separated_prefix = path.value  # '/api' matches /api and /api/..., not /apis
    else:
        m.safe_regex.CopyFrom(_regex(path.value))
    if match.method:
        m.headers.append(rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=match.method)))
    for h in match.headers or ():
        m.headers.append(header_matcher(h))
    for q in match.query_params or ():
        m.query_parameters.append(rc.QueryParameterMatcher(name=q.name, string_match=_string_match(q.type, q.value)))
    return m


def _header_options(mod: HeaderModifier) -> list[base_pb2.HeaderValueOption]:
    out = []
    for kv in mod.set or ():
        out.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=kv.name, value=kv.value),
                                              append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    for kv in mod.add or ():
        out.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=kv.name, value=kv.value),
                                              append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD))
    return out


def _prefix_rewrite(match: Match, replacement: str) -> tuple[str, Any]:
    """How to replace the matched path prefix (Gateway API ReplacePrefixMatch): ('prefix', text) or
    ('regex', RegexMatchAndSubstitute) where a plain prefix swap would leave '//' or glue segments."""
    prefix = match.path.value if match.path is not None else "/"
    if prefix != "/" and not replacement.endswith("/"):
        return "prefix", replacement
    if prefix == "/":
        pattern, substitution = "^/", replacement.rstrip("/") + "/"
    else:
        pattern, substitution = f"^{re.escape(prefix)}/*", replacement
    return "regex", regex_pb2.RegexMatchAndSubstitute(pattern=_regex(pattern), substitution=substitution)


def _full_path_rewrite(replacement: str) -> regex_pb2.RegexMatchAndSubstitute:
    return regex_pb2.RegexMatchAndSubstitute(pattern=_regex("^.*$"), substitution=replacement)


def mirror_fraction(percentage: int | str) -> percent_pb2.FractionalPercent:
    value = parse_decimal(percentage) or Decimal(0)
    if (value * 100) == (value * 100).to_integral_value():
        return percent_pb2.FractionalPercent(numerator=int(value * 100),
                                             denominator=percent_pb2.FractionalPercent.TEN_THOUSAND)
    return percent_pb2.FractionalPercent(numerator=int((value * 10000).to_integral_value()),
                                         denominator=percent_pb2.FractionalPercent.MILLION)


def envoy_route(rule: Rule, match: Match, service: str) -> rc.Route:
    route = rc.Route(name=rule_hash(rule), match=route_match(match))
    filters = {f.type: f for f in rule.default.filters or () if f.type != "RequestMirror"}
    mirrors = [f.request_mirror for f in rule.default.filters or () if f.type == "RequestMirror" and f.request_mirror]
    redirect = filters.get("RequestRedirect")
    if redirect is not None and redirect.request_redirect is not None:
        r = redirect.request_redirect
        action = rc.RedirectAction(response_code=REDIRECT_CODES[r.status_code or 302])
        if r.scheme:
            action.scheme_redirect = r.scheme
        if r.hostname:
            action.host_redirect = r.hostname
        if r.port:
            action.port_redirect = r.port
        if r.path is not None:
            if r.path.type == "ReplaceFullPath":
                action.path_redirect = r.path.replace_full_path or "/"
            else:
                how, value = _prefix_rewrite(match, r.path.replace_prefix_match or "/")
                if how == "prefix":
                    action.prefix_rewrite = value
                else:
                    action.regex_rewrite.CopyFrom(value)
        route.redirect.CopyFrom(action)
    else:
        backends = rule_backends(rule, service)
        ra = rc.RouteAction(timeout=seconds(DEFAULT_ROUTE_TIMEOUT))
        if len(backends) == 1:
            ra.cluster = backends[0][0].cluster_name
        else:
            ra.weighted_clusters.clusters.extend(
                rc.WeightedCluster.ClusterWeight(name=b.cluster_name, weight={"value": w}) for b, w in backends)
        rewrite = filters.get("URLRewrite")
        if rewrite is not None and rewrite.url_rewrite is not None:
            u = rewrite.url_rewrite
            if u.hostname:
                ra.host_rewrite_literal = u.hostname
            if u.path is not None:
                if u.path.type == "ReplaceFullPath":
                    ra.regex_rewrite.CopyFrom(_full_path_rewrite(u.path.replace_full_path or "/"))
                else:
                    how, value = _prefix_rewrite(match, u.path.replace_prefix_match or "/")
                    if how == "prefix":
                        ra.prefix_rewrite = value
                    else:
                        ra.regex_rewrite.CopyFrom(value)
        for m in mirrors:
            policy = rc.RouteAction.RequestMirrorPolicy(cluster=backend_of(m.backend_ref).cluster_name)
            if m.percentage is not None:
                policy.runtime_fraction.default_value.CopyFrom(mirror_fraction(m.percentage))
            ra.request_mirror_policies.append(policy)
        route.route.CopyFrom(ra)
    request = filters.get("RequestHeaderModifier")
    if request is not None and request.request_header_modifier is not None:
        route.request_headers_to_add.extend(_header_options(request.request_header_modifier))
        route.request_headers_to_remove.extend(request.request_header_modifier.remove or ())
    response = filters.get("ResponseHeaderModifier")
    if response is not None and response.response_header_modifier is not None:
        route.response_headers_to_add.extend(_header_options(response.response_header_modifier))
        route.response_headers_to_remove.extend(response.response_header_modifier.remove or ())
    return route


def envoy_routes(rules: Sequence[Rule], service: str) -> list[rc.Route]:
    expanded = [(rule, match) for rule in rules if rule is not IMPLICIT_CATCH_ALL for match in rule.matches]
    expanded.sort(key=lambda rm: _match_order(rm[1]))  # stable: equal matches keep the merged order
    # The catch-all added for unmatched requests goes last: it must not shadow regex rules, which Kuma's
    # order puts after every PathPrefix.
    expanded += [(rule, match) for rule in rules if rule is IMPLICIT_CATCH_ALL for match in rule.matches]
    return [envoy_route(rule, match, service) for rule, match in expanded]


register_merger(POLICY, merge_rules)
register_route_names(route_names)


class HTTPRoutePlugin(PolicyPlugin):
    """Routes of the outbound HTTP listeners (before timeouts and retries, which then apply per route)."""

    policy_type = POLICY
    order = 20

    def listener_key(self, ctx: ProxyContext, service: str) -> Hashable:
        merged = _merged(ctx, service)
        return None if merged is None else merged.json

    def mesh_destinations(self, policies: Sequence[Resource]) -> Iterable[Backend]:
        for policy in policies:
            spec = policy.spec
            assert isinstance(spec, MeshHTTPRouteSpec)
            for to in spec.to or ():
                for rule in to.rules or ():
                    yield from (backend_of(r) for r in rule.default.backend_refs or ())

    def backends(self, ctx: ProxyContext, service: str, key: Hashable) -> Sequence[Backend] | None:
        assert isinstance(key, str)
        out: list[Backend] = []
        for rule in _rules_of(key):
            if _has_redirect(rule):
                continue
            out.extend(b for b, _ in rule_backends(rule, service))
            for f in rule.default.filters or ():
                if f.type == "RequestMirror" and f.request_mirror is not None:
                    out.append(backend_of(f.request_mirror.backend_ref))
        return out

    def apply_outbound_listener(self, ctx: ProxyContext, service: str, listener: listener_pb2.Listener,
                                key: Hashable) -> None:
        assert isinstance(key, str)
        routes = envoy_routes(_rules_of(key), service)

        def edit(manager: hcm_pb2.HttpConnectionManager) -> None:
            vhost = manager.route_config.virtual_hosts[0]
            del vhost.routes[:]
            vhost.routes.extend(routes)

        update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager, edit)


PLUGIN = register_plugin(HTTPRoutePlugin())
