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

Refused as conflicting (Gateway API and Envoy semantics): RequestRedirect together with backendRefs or
URLRewrite (a redirect answers the request itself); a filter type other than RequestMirror given twice;
identical matches within a rule, and two rules with identical matches in one `to[]` entry.

Envoy effect: virtual host routes (match, weighted_clusters, redirect, rewrites, header mutations,
request_mirror_policies) on the outbound HTTP listener. Added by the xDS layer, not here.
"""

from __future__ import annotations

from typing import Any, Literal

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations

from ._common import (
    MESH,
    MESH_GATEWAY,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    TOP_LEVEL_KINDS,
    BackendRef,
    HeaderMatch,
    TargetRef,
    check_backend_refs,
    check_header_matches,
    check_header_name,
    check_header_value,
    check_percentage,
    check_precise_hostname,
    check_regex,
    check_target_ref,
    check_top_level,
    check_wildcard_hostname,
    effective_target_ref,
    require_some,
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
        seen: dict[str, int] = {}
        for i, q in enumerate(self.query_params or ()):
            q.check(v, f"{path}.queryParams[{i}]")
            if q.name in seen:
                v.add(f"{path}.queryParams[{i}].name", f"multiple entries for name {q.name}: combine them")
            seen.setdefault(q.name, i)
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
        seen: dict[str, str] = {}

        def once(name: str, p: str) -> None:
            if name in seen:
                v.add(p, f"header {name!r} is already modified at {seen[name]}: only one action per header")
            seen.setdefault(name, p)

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
        want = FILTER_FIELDS[self.type]
        for field, alias in FILTER_ALIASES.items():
            block = getattr(self, field)
            p = f"{path}.{alias}"
            if field != want:
                if block is not None:
                    v.add(p, f"does not apply to a filter of type {self.type}: remove it")
                continue
            if block is None:
                v.add(p, f"must be set for a filter of type {self.type}")
            elif isinstance(block, HeaderModifier | RequestMirror):
                block.check(v, p)
            elif isinstance(block, RequestRedirect):
                block.check_in(v, p, all_prefix=all_prefix)
            else:
                block.check_in(v, p, all_prefix=all_prefix, top=top)


class RuleConf(Spec):
    filters: list[Filter] | None = None
    backend_refs: list[BackendRef] | None = None

    def check_in(self, v: Violations, path: str, *, all_prefix: bool, top: str) -> None:
        types: dict[str, int] = {}
        for i, f in enumerate(self.filters or ()):
            p = f"{path}.filters[{i}]"
            f.check_in(v, p, all_prefix=all_prefix, top=top)
            if f.type in SINGLE_USE_FILTERS and f.type in types:
                v.add(f"{p}.type", f"a {f.type} filter is already given at filters[{types[f.type]}]: merge them")
            types.setdefault(f.type, i)
        if "RequestRedirect" in types:
            if "URLRewrite" in types:
                v.add(f"{path}.filters[{types['URLRewrite']}].type",
                      "URLRewrite cannot be combined with RequestRedirect (a redirect answers the request itself): "
                      "remove one")
            if self.backend_refs is not None:
                v.add(f"{path}.backendRefs", "cannot be combined with a RequestRedirect filter (the request is "
                                             "redirected, never forwarded): remove backendRefs or the redirect")
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
        seen: dict[Any, int] = {}
        for i, m in enumerate(self.matches):
            m.check(v, f"{path}.matches[{i}]")
            key = m.key()
            if key in seen:
                v.add(f"{path}.matches[{i}]", f"is identical to matches[{seen[key]}]: remove the duplicate")
            seen.setdefault(key, i)
        all_prefix = all(m.path is not None and m.path.type == "PathPrefix" for m in self.matches)
        self.default.check_in(v, f"{path}.default", all_prefix=all_prefix, top=top)

    def matches_key(self) -> Any:
        return frozenset(m.key() for m in self.matches)


class To(Spec):
    target_ref: TargetRef
    hostnames: list[str] | None = None
    rules: list[Rule] | None = None

    def check_in(self, v: Violations, path: str, *, top: str) -> None:
        allowed = (MESH,) if top == MESH_GATEWAY else (MESH_SERVICE,)
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
        if not self.rules:
            v.add(f"{path}.rules", "needs at least one rule")
        seen: dict[Any, int] = {}
        for i, rule in enumerate(self.rules or ()):
            rule.check_in(v, f"{path}.rules[{i}]", top=top)
            key = rule.matches_key()
            if rule.matches and key in seen:
                v.add(f"{path}.rules[{i}].matches", f"are the same as rules[{seen[key]}].matches: merge the two "
                                                    "rules")
            seen.setdefault(key, i)


class MeshHTTPRouteSpec(Spec):
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
    name=POLICY, plural="meshhttproutes", singular="meshhttproute", scope=Scope.MESH,
    spec_cls=MeshHTTPRouteSpec, flat=False, is_policy=True,
    description="HTTP routing: request matching, filters and weighted backends.",
))

# --- Envoy effect -----------------------------------------------------------------------------------
# The xDS issue adds here how MeshHTTPRoute rules become Envoy routes on the outbound listeners.
