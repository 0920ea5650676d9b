"""What every targetRef policy shares: the targetRef, the from/to item shapes and the field checks.

Kuma's targetRef policies all have the same outline (Kuma 2.9 shapes, the version these modules follow):

    spec:
      targetRef: {kind: Mesh|MeshSubset|MeshService|MeshServiceSubset|MeshGateway|MeshHTTPRoute|Dataplane, ...}
      from: [{targetRef: ..., default: {...}}]   # inbound traffic, by client
      to:   [{targetRef: ..., default: {...}}]   # outbound traffic, by destination

Which kinds are allowed where differs per policy; each policy module passes its own sets to
`check_target_ref`. The helpers at the end (`tags_match`, `TargetRef.selects_dataplane`,
`TargetRef.selects_service`, `kind_rank`) are the matching primitives the xDS layer uses to decide which
policies apply to which proxy and which outbound/inbound, and in which order they merge.

Everything here validates with Envoy in mind: a value that passes must not make Envoy reject the config
it is rendered into. Where Envoy is stricter than Kuma (durations, RE2 regexes, header names), the
Envoy limit is enforced and the reason says so.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Generic, Literal, TypeVar

from pydantic import Field

from controlplane.resources.base import Resource, Spec
from controlplane.resources.dataplane import SERVICE_TAG, DataplaneSpec
from controlplane.resources.errors import Violations
from controlplane.resources.fields import MAX_DURATION_NS, MAX_DURATION_TEXT, check_labels, check_name

# --- targetRef ------------------------------------------------------------------------------------

MESH: Final = "Mesh"
MESH_SUBSET: Final = "MeshSubset"
MESH_SERVICE: Final = "MeshService"
MESH_SERVICE_SUBSET: Final = "MeshServiceSubset"
MESH_GATEWAY: Final = "MeshGateway"
MESH_HTTP_ROUTE: Final = "MeshHTTPRoute"
DATAPLANE: Final = "Dataplane"

TargetRefKind = Literal["Mesh", "MeshSubset", "MeshService", "MeshServiceSubset", "MeshGateway",
                        "MeshHTTPRoute", "Dataplane"]
ProxyType = Literal["Sidecar", "Gateway"]

# Kuma's precedence of kinds (api/common/v1alpha1/targetref.go): a policy whose top-level targetRef is more
# specific (higher rank) is merged later and so wins over a less specific one.
KIND_ORDER: dict[str, int] = {
    MESH: 1, DATAPLANE: 2, MESH_SUBSET: 3, MESH_GATEWAY: 4, MESH_SERVICE: 5, MESH_SERVICE_SUBSET: 8,
    MESH_HTTP_ROUTE: 9,
}

# Top-level kinds every policy accepts on a sidecar (MeshService/MeshServiceSubset are deprecated at the top
# level since Kuma 2.9 in favour of MeshSubset/Dataplane, but still accepted there).
TOP_LEVEL_KINDS = (MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET, DATAPLANE)

# Kuma's character sets (pkg/core/resources/apis/mesh validators).
_REF_NAME = re.compile(r"^[0-9a-z.\-_]+$")
_TAG_KEY = re.compile(r"^[a-zA-Z0-9.\-_:/]+$")
_TAG_VALUE = re.compile(r"^[a-zA-Z0-9.\-_:]+$")
_SELECTOR_VALUE = re.compile(r"^([a-zA-Z0-9.\-_:/]+|\*)$")
_SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class TargetRef(Spec):
    """A reference to what a policy (or one of its from/to entries) applies to."""

    kind: TargetRefKind
    # MeshService/MeshServiceSubset: the kuma.io/service value; MeshGateway/MeshHTTPRoute/Dataplane: the
    # resource's name.
    name: str | None = None
    # MeshSubset/MeshServiceSubset (and MeshGateway listener tags where the policy allows them).
    tags: dict[str, str] | None = None
    # Reserved by Kuma for cross-mesh references: never accepted.
    mesh: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    section_name: str | None = None
    proxy_types: list[ProxyType] | None = None

    # -- matching (used by the xDS layer) --

    def rank(self) -> int:
        return kind_rank(self.kind)

    def selects_service(self, service: str, tags: Mapping[str, str] | None = None) -> bool:
        """Does this from/to/backend reference cover a service (kuma.io/service value) with these tags?

        MeshGateway, MeshHTTPRoute and Dataplane never name a service here: callers resolve those kinds.
        """
        all_tags = dict(tags or {})
        all_tags.setdefault(SERVICE_TAG, service)
        if self.kind == MESH:
            return True
        if self.kind == MESH_SUBSET:
            return tags_match(self.tags or {}, all_tags)
        if self.kind == MESH_SERVICE:
            return self.name == service
        if self.kind == MESH_SERVICE_SUBSET:
            return self.name == service and tags_match(self.tags or {}, all_tags)
        return False

    def selects_dataplane(self, dataplane: Resource, *, gateway_name: str | None = None) -> bool:
        """Does this top-level reference select the proxy of `dataplane`?

        `gateway_name` is the MeshGateway serving this (builtin gateway) dataplane, when the caller has
        resolved it. MeshHTTPRoute references select the proxies the route itself selects: resolve the
        route and ask its own targetRef. sectionName narrows a Dataplane reference to one inbound; that
        narrowing is the caller's (see `inbound_selected`).
        """
        spec = dataplane.spec
        if not isinstance(spec, DataplaneSpec):
            return False
        gateway = spec.networking.gateway
        proxy_type = "Gateway" if gateway is not None and gateway.type == "BUILTIN" else "Sidecar"
        if self.proxy_types and proxy_type not in self.proxy_types:
            return False
        tag_sets = [gateway.tags] if gateway is not None else [i.tags for i in spec.networking.inbound]
        if self.kind == MESH:
            return True
        if self.kind == MESH_SUBSET:
            return any(tags_match(self.tags or {}, t) for t in tag_sets)
        if self.kind == MESH_SERVICE:
            return any(t.get(SERVICE_TAG) == self.name for t in tag_sets)
        if self.kind == MESH_SERVICE_SUBSET:
            return any(t.get(SERVICE_TAG) == self.name and tags_match(self.tags or {}, t) for t in tag_sets)
        if self.kind == MESH_GATEWAY:
            return proxy_type == "Gateway" and gateway_name is not None and gateway_name == self.name
        if self.kind == DATAPLANE:
            if self.labels is not None:
                return tags_match(self.labels, dataplane.meta.labels, wildcard=False)
            return self.name is None or self.name == dataplane.meta.name
        return False

    def inbound_selected(self, port: int, name: str | None = None) -> bool:
        """For a Dataplane reference with sectionName: is the inbound (by name or port) the one named?"""
        if self.section_name is None:
            return True
        return self.section_name == name or self.section_name == str(port)


def kind_rank(kind: str) -> int:
    return KIND_ORDER.get(kind, 0)


def effective_target_ref(ref: TargetRef | None) -> TargetRef:
    """An omitted top-level targetRef means the whole mesh (Kuma 2.9)."""
    return ref if ref is not None else TargetRef(kind=MESH)


def tags_match(selector: Mapping[str, str], tags: Mapping[str, str], *, wildcard: bool = True) -> bool:
    """Every selector tag is present with the same value ('*' matches any value, as in Kuma selectors)."""
    for key, want in selector.items():
        have = tags.get(key)
        if have is None or (want != have and not (wildcard and want == "*")):
            return False
    return True


def check_target_ref(v: Violations, path: str, ref: TargetRef, *, allowed: Collection[str], where: str,
                     inbound: bool = False, listener_tags: bool = False, top_level: bool = False) -> None:
    """Kuma's targetRef rules, plus which kinds this position allows.

    `where` names the position for the reason ("spec.to[].targetRef of MeshRetry"); `inbound` says the
    policy configures inbound traffic (Dataplane sectionName allowed); `listener_tags` allows tags on
    MeshGateway (select listeners); `top_level` allows proxyTypes.
    """
    kind = ref.kind
    if kind not in allowed:
        v.add(f"{path}.kind", f"kind {kind} is not allowed in {where}: use one of {', '.join(allowed)}")
        return

    def forbid(field: str, value: object, why: str = "") -> None:
        if value is not None:
            alias = camel(field)
            v.add(f"{path}.{alias}", why or f"cannot be set with kind {kind}: remove it")

    forbid("mesh", ref.mesh, "cross-mesh references are not supported: remove 'mesh'")
    if ref.proxy_types is not None:
        if not top_level:
            v.add(f"{path}.proxyTypes", "can only be set on the top-level targetRef: remove it here")
        elif kind not in (MESH, MESH_SUBSET):
            v.add(f"{path}.proxyTypes", f"cannot be set with kind {kind}: proxyTypes only narrows Mesh and "
                                        "MeshSubset")
        elif not ref.proxy_types:
            v.add(f"{path}.proxyTypes", "cannot be empty: list Sidecar and/or Gateway, or remove the field")
        elif len(set(ref.proxy_types)) != len(ref.proxy_types):
            v.add(f"{path}.proxyTypes", "lists a proxy type twice: remove the duplicate")

    if kind == MESH:
        forbid("name", ref.name, "using name with kind Mesh is not supported: remove it (Mesh is this mesh)")
        for f in ("tags", "labels", "namespace", "section_name"):
            forbid(f, getattr(ref, f))
    elif kind == MESH_SUBSET:
        for f in ("name", "labels", "namespace", "section_name"):
            forbid(f, getattr(ref, f))
        _check_ref_tags(v, f"{path}.tags", ref.tags or {}, selector=False)
    elif kind in (MESH_SERVICE, MESH_HTTP_ROUTE):
        forbid("tags", ref.tags, f"cannot be set with kind {kind}: use MeshServiceSubset to select by tags"
               if kind == MESH_SERVICE else "")
        if ref.labels:
            if ref.name is not None or ref.namespace is not None:
                v.add(f"{path}.labels", "either labels or name (and namespace) must be given, not both")
            if ref.section_name is not None:
                v.add(f"{path}.sectionName", "cannot be combined with labels: select by name instead")
            check_labels(v, f"{path}.labels", ref.labels)
        elif ref.name is None:
            v.add(f"{path}.name", f"must be set with kind {kind}: name the "
                                  f"{'service (its kuma.io/service tag)' if kind == MESH_SERVICE else 'route'}")
        elif ref.labels is not None:
            v.add(f"{path}.labels", "cannot be empty: remove it or give at least one label")
        _check_ref_name(v, f"{path}.name", ref.name)
        _check_namespace(v, f"{path}.namespace", ref.namespace)
        _check_section_name(v, f"{path}.sectionName", ref.section_name)
    elif kind in (MESH_SERVICE_SUBSET, MESH_GATEWAY):
        for f in ("labels", "namespace", "section_name"):
            forbid(f, getattr(ref, f))
        if ref.name is None:
            v.add(f"{path}.name", f"must be set with kind {kind}")
        _check_ref_name(v, f"{path}.name", ref.name)
        if kind == MESH_GATEWAY and ref.tags is not None and not listener_tags:
            v.add(f"{path}.tags", f"cannot be set with kind MeshGateway in {where}: remove it")
        else:
            _check_ref_tags(v, f"{path}.tags", ref.tags or {}, selector=True)
    elif kind == DATAPLANE:
        forbid("tags", ref.tags, "cannot be set with kind Dataplane: use labels to select dataplanes")
        if ref.labels is not None:
            if ref.name is not None or ref.namespace is not None:
                v.add(f"{path}.labels", "either labels or name (and namespace) must be given, not both")
            check_labels(v, f"{path}.labels", ref.labels)
        if ref.name is not None:
            check_name(v, f"{path}.name", ref.name)
        _check_namespace(v, f"{path}.namespace", ref.namespace)
        if ref.section_name is not None and not inbound:
            v.add(f"{path}.sectionName", "can only be used with policies that configure inbound traffic "
                                         "(from/rules): remove it")
        _check_section_name(v, f"{path}.sectionName", ref.section_name)


def camel(field: str) -> str:
    """snake_case field name -> its camelCase wire name."""
    head, *rest = field.split("_")
    return head + "".join(p.title() for p in rest)


def _check_ref_name(v: Violations, path: str, name: str | None) -> None:
    if name is None:
        return
    if not name:
        v.add(path, "cannot be empty")
    elif len(name) > 253 or not _REF_NAME.match(name):
        v.add(path, f"{name!r} has invalid characters: use lowercase letters, digits, '-', '.' and '_' "
                    "(at most 253)")


def _check_namespace(v: Violations, path: str, namespace: str | None) -> None:
    if namespace is not None:
        check_name(v, path, namespace, label=True)


def _check_section_name(v: Violations, path: str, section: str | None) -> None:
    if section is not None and (len(section) > 63 or not _SECTION_NAME.match(section)):
        v.add(path, f"{section!r} must name a port (its name, or its number) with lowercase letters, digits "
                    "and '-'")


def _check_ref_tags(v: Violations, path: str, tags: Mapping[str, str], *, selector: bool) -> None:
    """Kuma's tag rules: keys [a-zA-Z0-9.-_:/]; values [a-zA-Z0-9.-_:] (selectors also '/' and '*')."""
    value_re = _SELECTOR_VALUE if selector else _TAG_VALUE
    for key in sorted(tags):
        value = tags[key]
        if not key or not _TAG_KEY.match(key):
            v.add(f'{path}["{key}"]', "tag name must be non-empty and consist of letters, digits, '.', '-', "
                                      "'_', ':' and '/'")
        if not value:
            v.add(f'{path}["{key}"]', "tag value must be non-empty")
        elif not value_re.match(value):
            allowed = "letters, digits, '.', '-', '_', ':' and '/', or be '*'" if selector else \
                "letters, digits, '.', '-', '_' and ':'"
            v.add(f'{path}["{key}"]', f"tag value {value!r} must consist of {allowed}")


def check_tag_key(v: Violations, path: str, key: str) -> None:
    if not key or not _TAG_KEY.match(key):
        v.add(path, f"{key!r} is not a tag name: use letters, digits, '.', '-', '_', ':' and '/'")


# --- from/to items ----------------------------------------------------------------------------------

C = TypeVar("C", bound=Spec)


class Item(Spec, Generic[C]):
    """One `from[]` or `to[]` entry: which clients or destinations, and the configuration for them."""

    target_ref: TargetRef
    default: C


def check_items(v: Violations, path: str, items: Sequence[Item[Any]] | None, *, allowed: Collection[str],
                where: str, inbound: bool = False) -> None:
    """Check each entry's targetRef against the position's allowed kinds, then its default."""
    for i, item in enumerate(items or ()):
        p = f"{path}[{i}]"
        check_target_ref(v, f"{p}.targetRef", item.target_ref, allowed=allowed, where=where, inbound=inbound)
        item.default.check(v, f"{p}.default")


def check_top_level(v: Violations, path: str, ref: TargetRef | None, *, allowed: Collection[str], policy: str,
                    inbound: bool = False, listener_tags: bool = False) -> None:
    if ref is not None:
        check_target_ref(v, path, ref, allowed=allowed, where=f"the top-level targetRef of {policy}",
                         inbound=inbound, listener_tags=listener_tags, top_level=True)


def require_some(v: Violations, path: str, model: Spec, fields: Iterable[str], what: str = "") -> bool:
    """At least one of `fields` (python names) is set; records a violation otherwise."""
    names = list(fields)
    if any(getattr(model, f) is not None for f in names):
        return True
    v.add(path, what or f"set at least one of: {', '.join(camel(f) for f in names)}")
    return False


# --- durations (Go / Kubernetes metav1.Duration, as Kuma reads them) ---------------------------------

_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
       "m": 60_000_000_000, "h": 3_600_000_000_000}
_GO_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")  # ASCII digits only


def parse_go_duration(text: str) -> int:
    """Nanoseconds of a Go duration ('300ms', '1h30m', '-1.5s', '0'). Raises ValueError with the fix."""
    s = text.strip()
    sign = 1
    if s and s[0] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"{text!r} is not a duration: use a number and a unit, e.g. '10s', '1m30s', '500ms'")
    pos, total = 0, Decimal(0)
    for m in _GO_DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += Decimal(m.group(1)) * _NS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        hint = " (days and years are not Go duration units: use hours, e.g. '24h')" \
            if re.search(r"\d[dwy]\b", s) else ""
        raise ValueError(f"{text!r} is not a duration: use numbers with units ns, us, ms, s, m or h, "
                         f"e.g. '10s', '1m30s', '500ms'{hint}")
    return sign * int(total)


def check_duration(v: Violations, path: str, text: str | None, *, allow_zero: bool = True) -> int | None:
    """A Kuma duration: parseable, not negative, > 0 unless zero is meaningful, and within Envoy's range."""
    if text is None:
        return None
    try:
        ns = parse_go_duration(text)
    except ValueError as e:
        v.add(path, str(e))
        return None
    if ns < 0:
        v.add(path, f"{text!r} is negative: durations must be zero or more")
        return None
    if ns == 0 and not allow_zero:
        v.add(path, "must be greater than zero")
        return None
    if ns > MAX_DURATION_NS:
        v.add(path, f"{text!r} is too long: Envoy accepts durations up to {MAX_DURATION_TEXT} (about 292 "
                    "years)")
        return None
    return ns


# --- numbers ----------------------------------------------------------------------------------------

UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1


def check_int(v: Violations, path: str, value: int | None, *, minimum: int = 0,
              maximum: int = UINT32_MAX) -> None:
    if value is not None and not minimum <= value <= maximum:
        v.add(path, f"{value} is out of range: use a whole number from {minimum} to {maximum}")


def parse_decimal(value: int | str) -> Decimal | None:
    """Kuma's IntOrString decimals: 50, "50", "62.5". None when not a plain finite number."""
    if isinstance(value, int):
        return Decimal(value)
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", value.strip()):
        return None
    try:
        d = Decimal(value.strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def check_decimal(v: Violations, path: str, value: int | str | None, *, minimum: Decimal | int = 0,
                  maximum: Decimal | int | None = None, exclusive_minimum: bool = False,
                  what: str = "number") -> Decimal | None:
    if value is None:
        return None
    d = parse_decimal(value)
    if d is None:
        v.add(path, f"{value!r} is not a {what}: give an integer or a decimal string such as \"62.5\"")
        return None
    low_ok = d > minimum if exclusive_minimum else d >= minimum
    if not low_ok or (maximum is not None and d > maximum):
        rng = f"greater than {minimum}" if exclusive_minimum else f"at least {minimum}"
        if maximum is not None:
            rng += f" and at most {maximum}"
        v.add(path, f"{value!r} is out of range: must be {rng}")
        return None
    return d


def check_percentage(v: Violations, path: str, value: int | str | None) -> Decimal | None:
    return check_decimal(v, path, value, minimum=0, maximum=100, what="percentage")


# --- HTTP names and values ---------------------------------------------------------------------------

# Kuma's HeaderName: lowercase RFC 7230 token characters, 1-256 long (Envoy matches names case-insensitively
# and stores them lowercase).
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+\-.^_`|~]{1,256}$")
# What Envoy's HTTP_HEADER_VALUE check (strict: false) refuses in a header value.
_BAD_HEADER_VALUE = re.compile(r"[\x00\r\n]")


def check_header_name(v: Violations, path: str, name: str, *, modifiable: bool = False) -> None:
    if not _HEADER_NAME.match(name):
        v.add(path, f"{name!r} is not a header name: use lowercase letters, digits and !#$%&'*+-.^_`|~ "
                    "(1 to 256 characters)")
    elif modifiable and name == "host":
        v.add(path, "Envoy does not allow adding, setting or removing 'host': use a URLRewrite filter's "
                    "hostname instead")


def check_header_value(v: Violations, path: str, value: str) -> None:
    if _BAD_HEADER_VALUE.search(value):
        v.add(path, "header values cannot contain NUL, CR or LF characters")
    elif len(value) > 16384:
        v.add(path, "is too long: header values are limited to 16384 characters")


_HOSTNAME_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_precise_hostname(v: Violations, path: str, hostname: str | None) -> None:
    """Gateway API's PreciseHostname: a lowercase DNS-1123 subdomain, not an IP address."""
    if hostname is None:
        return
    if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*", hostname):
        v.add(path, f"{hostname!r} is an IP address: give a hostname")
        return
    check_name(v, path, hostname)


def check_wildcard_hostname(v: Violations, path: str, hostname: str) -> None:
    """A listener/route hostname: 'example.com' or '*.example.com'."""
    if hostname == "*":
        return
    rest = hostname[2:] if hostname.startswith("*.") else hostname
    if len(hostname) > 253 or not rest or not all(_HOSTNAME_LABEL.match(p) for p in rest.split(".")):
        v.add(path, f"{hostname!r} is not a hostname: use lowercase DNS labels, optionally starting with '*.'")


def check_base64(v: Violations, path: str, text: str) -> None:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        v.add(path, f"{text!r} is not valid base64: encode the bytes, e.g. 'cGluZw==' for 'ping'")


def check_http_status(v: Violations, path: str, status: int) -> None:
    if not 100 <= status <= 599:
        v.add(path, f"{status} is not an HTTP status code: use 100 to 599")


# --- regular expressions (Envoy uses Google RE2) -----------------------------------------------------

# Envoy refuses an RE2 program bigger than the runtime value re2.max_program_size.error_level (default 100).
RE2_MAX_PROGRAM_SIZE = 100

_sre_parser: Any = importlib.import_module("re._parser")
_sre: Any = importlib.import_module("re._constants")
_ALLOWED_FLAGS = _sre.SRE_FLAG_IGNORECASE | _sre.SRE_FLAG_MULTILINE | _sre.SRE_FLAG_DOTALL | \
    _sre.SRE_FLAG_UNICODE


def check_regex(v: Violations, path: str, pattern: str) -> None:
    """A regex Envoy's RE2 engine accepts. Python's `re` is used to parse it (an approximation): constructs
    RE2 lacks (lookaround, backreferences, atomic groups, possessive repeats, conditionals, comments, the
    x/a/L flags, \\Z) are refused, and the RE2 program size is estimated from above and held to Envoy's
    default limit of 100."""
    problem = regex_problem(pattern)
    if problem:
        v.add(path, problem)


def regex_problem(pattern: str) -> str | None:
    if not pattern:
        return "cannot be empty: give a regular expression (RE2 syntax)"
    text_problem = _scan_regex_text(pattern)
    if text_problem:
        return text_problem
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(pattern)
            parsed = _sre_parser.parse(pattern)
    except re.error as e:
        return f"{pattern!r} is not a valid regular expression: {e}"
    except (RecursionError, OverflowError):
        return f"{pattern!r} is too complex"
    if parsed.state.flags & ~_ALLOWED_FLAGS:
        return "only the i, m and s flags exist in RE2: remove the others"
    unsupported = _re2_unsupported(parsed)
    if unsupported:
        return f"{unsupported} is not supported by Envoy's RE2 regex engine: rewrite the expression without it"
    size = estimate_re2_program_size(parsed)
    if size > RE2_MAX_PROGRAM_SIZE:
        return (f"is too complex for Envoy: its RE2 program size is about {size}, above Envoy's limit of "
                f"{RE2_MAX_PROGRAM_SIZE}; simplify it (large counted repetitions like {{1,50}} cost the most)")
    return None


def _scan_regex_text(pattern: str) -> str | None:
    """Refuse spellings Python accepts but RE2 rejects or reads differently."""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            n = pattern[i + 1]
            if n in "ZuUN":
                return f"the escape \\{n} is not supported by Envoy's RE2 regex engine" + \
                    (": use \\z for the end of text" if n == "Z" else "")
            if n in "123456789":
                return "backreferences (\\1 ...) are not supported by Envoy's RE2 regex engine"
            i += 2
            continue
        if pattern.startswith("(?#", i):
            return "comments (?#...) are not supported by Envoy's RE2 regex engine: remove them"
        if c == "{" and re.match(r"\{,\d", pattern[i:]):
            return "RE2 reads '{,n}' as literal text: write the repetition as {0,n}"
        i += 1
    return None


def _re2_unsupported(seq: Any) -> str | None:
    names = {"ASSERT": "lookahead/lookbehind", "ASSERT_NOT": "negative lookahead/lookbehind",
             "GROUPREF": "a backreference", "GROUPREF_EXISTS": "a conditional group",
             "ATOMIC_GROUP": "an atomic group", "POSSESSIVE_REPEAT": "a possessive repeat"}
    for op, av in seq:
        name = str(op)
        if name in names:
            return names[name]
        if op is _sre.AT and av is _sre.AT_END_STRING:
            return "\\Z"
        if op is _sre.SUBPATTERN:
            _group, add, delete, sub = av
            if (add | delete) & ~_ALLOWED_FLAGS:
                return "a flag other than i, m or s"
            found = _re2_unsupported(sub)
        elif op is _sre.BRANCH:
            found = next((f for alt in av[1] if (f := _re2_unsupported(alt))), None)
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            found = _re2_unsupported(av[2])
        else:
            found = None
        if found:
            return found
    return None


def estimate_re2_program_size(parsed_or_pattern: Any) -> int:
    """An upper estimate of RE2's program size for a pattern (calibrated against Envoy 1.40, which reports
    the size it computes when the limit is exceeded): never lower than the real size on the patterns
    measured, usually within a few instructions."""
    parsed = _sre_parser.parse(parsed_or_pattern) if isinstance(parsed_or_pattern, str) else parsed_or_pattern
    seq = list(parsed)
    base = 2  # match and fail instructions
    if seq and seq[0][0] is _sre.AT and seq[0][1] in (_sre.AT_BEGINNING, _sre.AT_BEGINNING_STRING):
        seq = seq[1:]
    else:
        base += 2  # the unanchored '.*?' prefix
    return base + _re2_cost(seq)


def _re2_cost(seq: Any) -> int:
    total = 0
    for op, av in seq:
        if op is _sre.LITERAL:
            total += 1 if av < 0x80 else len(chr(av).encode())
        elif op is _sre.NOT_LITERAL:
            total += 5
        elif op is _sre.ANY:
            total += 2
        elif op is _sre.IN:
            total += _re2_class_cost(av)
        elif op is _sre.AT:
            total += 1
        elif op is _sre.SUBPATTERN:
            group, _add, _del, sub = av
            total += _re2_cost(sub) + (2 if group is not None else 0)
        elif op is _sre.BRANCH:
            alts = av[1]
            total += sum(_re2_cost(a) for a in alts) + len(alts) - 1
        elif str(op) in ("MAX_REPEAT", "MIN_REPEAT"):
            lo, hi, sub = av
            s = _re2_cost(sub)
            if hi == _sre.MAXREPEAT:
                total += (lo * s + 1) if lo > 0 else s + 1
            else:
                total += lo * s + (hi - lo) * (s + 1)
        else:
            total += 10
    return total


def _re2_class_cost(items: Any) -> int:
    negate, ranges, extra = False, 0, 0
    for op, av in items:
        if op is _sre.NEGATE:
            negate = True
        elif op is _sre.LITERAL:
            ranges += 1
            extra += 2 if av >= 0x80 else 0
        elif op is _sre.RANGE:
            ranges += 1
            extra += 4 if av[1] >= 0x80 else 0
        elif op is _sre.CATEGORY:
            name = str(av)
            if "NOT" in name:
                negate = True
                ranges += 1
            else:
                ranges += 1 if "DIGIT" in name else 4 if "WORD" in name else 5
        else:
            ranges += 5
    if negate:
        return max(5, ranges + 3)
    return max(1, ranges) + extra


# --- header matches (MeshHTTPRoute matches, MeshRetry retriable headers) ------------------------------

HeaderMatchType = Literal["Exact", "Present", "RegularExpression", "Absent", "Prefix"]


class HeaderMatch(Spec):
    """Kuma's common HeaderMatch: `type` defaults to Exact."""

    type: HeaderMatchType | None = None
    name: str
    value: str | None = None

    @property
    def match_type(self) -> str:
        return self.type or "Exact"

    def check(self, v: Violations, path: str) -> None:
        check_header_name(v, f"{path}.name", self.name)
        t = self.match_type
        if t in ("Present", "Absent"):
            if self.value is not None:
                v.add(f"{path}.value", f"must not be set with type {t}: remove it")
        elif t == "RegularExpression":
            if self.value is None:
                v.add(f"{path}.value", "is required with type RegularExpression")
            else:
                check_regex(v, f"{path}.value", self.value)
        elif t == "Prefix":
            if not self.value:
                v.add(f"{path}.value", "is required with type Prefix and cannot be empty")
            else:
                check_header_value(v, f"{path}.value", self.value)
        elif self.value is not None:
            check_header_value(v, f"{path}.value", self.value)


def check_header_matches(v: Violations, path: str, matches: Sequence[HeaderMatch] | None) -> None:
    seen: dict[str, int] = {}
    for i, m in enumerate(matches or ()):
        m.check(v, f"{path}[{i}]")
        if m.name in seen:
            v.add(f"{path}[{i}].name", f"header {m.name!r} is already matched by entry [{seen[m.name]}]: "
                                       "combine them into one")
        seen.setdefault(m.name, i)


# --- backend references (routes) ----------------------------------------------------------------------

class BackendRef(TargetRef):
    """Where a route sends traffic: a targetRef plus a weight (default 1) and an optional port."""

    weight: int | None = Field(default=None)
    port: int | None = None

    @property
    def effective_weight(self) -> int:
        return 1 if self.weight is None else self.weight


BACKEND_KINDS = (MESH_SERVICE, MESH_SERVICE_SUBSET)


def check_backend_refs(v: Violations, path: str, refs: Sequence[BackendRef], *, where: str) -> None:
    """Kinds, names, ports and weights of a backendRefs list (which the caller has checked is non-empty)."""
    if not refs:
        v.add(path, "cannot be empty: list at least one backend, or remove backendRefs")
        return
    total = 0
    seen: dict[tuple[Any, ...], int] = {}
    for i, ref in enumerate(refs):
        p = f"{path}[{i}]"
        check_target_ref(v, p, ref, allowed=BACKEND_KINDS, where=where)
        if ref.weight is not None and ref.weight < 0:
            v.add(f"{p}.weight", f"{ref.weight} is negative: weights must be 0 or more")
        elif ref.weight is not None and ref.weight > UINT32_MAX:
            v.add(f"{p}.weight", f"{ref.weight} is too large: weights must be at most {UINT32_MAX}")
        else:
            total += ref.effective_weight
        if ref.port is not None:
            if ref.kind != MESH_SERVICE:
                v.add(f"{p}.port", f"cannot be set with kind {ref.kind}: only a MeshService backend takes a port")
            elif not 1 <= ref.port <= 65535:
                v.add(f"{p}.port", f"port {ref.port} must be in the range [1, 65535]")
        key = (ref.kind, ref.name, tuple(sorted((ref.tags or {}).items())), ref.port, ref.section_name,
               tuple(sorted((ref.labels or {}).items())), ref.namespace)
        if key in seen:
            v.add(p, f"is the same backend as entry [{seen[key]}]: merge them into one entry with the summed "
                     "weight")
        seen.setdefault(key, i)
    if all(r.weight is not None and 0 <= r.weight <= UINT32_MAX for r in refs) and total == 0:
        v.add(path, "all weights are 0, so no traffic could be sent: give at least one backend a weight "
                    "above 0")
    elif total > UINT32_MAX:
        v.add(path, f"the weights add up to {total}, more than Envoy's limit of {UINT32_MAX}: scale them down")


# --- precedence and merging (Kuma's rules, used by every plugin and by the inspect API) ---------------
#
# Which policies apply to a proxy, in which order, and what their `default` blocks merge into:
#
# 1. A policy applies when its top-level targetRef selects the proxy (`TargetRef.selects_dataplane`; for
#    `from[]`, the inbound: `selects_inbound`). A top-level MeshHTTPRoute reference selects what that route
#    selects.
# 2. Entries (`to[]`/`from[]` items of every applying policy) are ordered by: the top-level targetRef kind
#    (Mesh < Dataplane < MeshSubset < MeshGateway < MeshService < MeshServiceSubset < MeshHTTPRoute), then its
#    detail (Dataplane: plain < labels < labels+sectionName < name < name+sectionName; MeshGateway: more
#    listener tags), then the entry's own targetRef kind, then the policy name in INVERTED lexicographic
#    order ('zzz' first, 'aaa' last), then the entry's position. Later entries win (Kuma's
#    SortByTargetRefV2 and its "How policies are combined" table).
# 3. For one destination (a service, optionally a route of it), every entry whose targetRef covers it is
#    merged in that order with JSON merge patch (RFC 7386): objects merge key by key, scalars and arrays
#    are replaced. MeshHTTPRoute `rules` merge by their `matches` instead (see mesh_http_route).

RULE_MATCHES_HASH_TAG = "__rule-matches-hash__"  # Kuma's tag for "this route of that service"


def top_level_detail(ref: TargetRef) -> int:
    """Precedence among top-level references of the same kind (Kuma's CompareDataplaneKind and MeshGateway
    listener tags)."""
    if ref.kind == DATAPLANE:
        if ref.name is not None:
            return 3 + (ref.section_name is not None)
        if ref.labels is not None:
            return 1 + (ref.section_name is not None)
        return 0
    if ref.kind == MESH_GATEWAY:
        return len(ref.tags or {})
    return 0


def precedence_key(top: TargetRef, entry: TargetRef | None = None) -> tuple[int, int, int]:
    """Ascending: a larger key is merged later and wins (the name order is applied separately, inverted)."""
    return (top.rank(), top_level_detail(top), entry.rank() if entry is not None else 0)


T = TypeVar("T")


def in_precedence_order(items: Iterable[T], key: Any, name: Any) -> list[T]:
    """Sort `items` lowest precedence first: by `key(item)` ascending, then `name(item)` DESCENDING (so that
    for equal specificity the lexicographically smaller name comes last and wins), keeping the given order
    otherwise (entries of one policy stay in their written order)."""
    by_name = sorted(items, key=name, reverse=True)  # reverse keeps equal names in their order (stable)
    return sorted(by_name, key=key)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: `patch` applied to `target` (neither is modified)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def merge_confs(confs: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Merge `default` blocks lowest precedence first; None when there is nothing to merge."""
    merged: dict[str, Any] | None = None
    for conf in confs:
        merged = merge_patch(merged, dict(conf))
    return merged


def covers(ref: TargetRef, element: Mapping[str, str]) -> bool:
    """Does a `to[]`/`from[]` targetRef cover a destination (or client) described by its tags?

    `element` always has kuma.io/service; a route of the service adds RULE_MATCHES_HASH_TAG. As in Kuma's
    subset rules, an entry covers an element when every tag the entry names is in the element: so
    'MeshService backend' covers every route of backend, 'MeshServiceSubset backend version=v1' does not
    cover plain 'backend'."""
    if ref.kind == MESH:
        return True
    if ref.kind == MESH_SUBSET:
        return tags_match(ref.tags or {}, element)
    if ref.kind == MESH_SERVICE:
        return element.get(SERVICE_TAG) == ref.name
    if ref.kind == MESH_SERVICE_SUBSET:
        return element.get(SERVICE_TAG) == ref.name and tags_match(ref.tags or {}, element)
    return False


def selects_inbound(top: TargetRef, dataplane: Resource, inbound_tags: Mapping[str, str], port: int,
                    name: str | None = None) -> bool:
    """Does a top-level targetRef select one inbound of a dataplane (for `from[]` entries)? Mesh selects
    every inbound; tag-based kinds the inbounds whose tags match; Dataplane the proxy's inbounds (one, with
    sectionName)."""
    kind = top.kind
    if top.proxy_types and "Sidecar" not in top.proxy_types:
        spec = dataplane.spec
        gateway = spec.networking.gateway if isinstance(spec, DataplaneSpec) else None
        if gateway is None or gateway.type != "BUILTIN":
            return False
    if kind == MESH:
        return True
    if kind == MESH_SUBSET:
        return tags_match(top.tags or {}, inbound_tags)
    if kind == MESH_SERVICE:
        return inbound_tags.get(SERVICE_TAG) == top.name
    if kind == MESH_SERVICE_SUBSET:
        return inbound_tags.get(SERVICE_TAG) == top.name and tags_match(top.tags or {}, inbound_tags)
    if kind == DATAPLANE:
        return top.selects_dataplane(dataplane) and top.inbound_selected(port, name)
    return False


def matches_hash(matches: Any) -> str:
    """A stable name for one MeshHTTPRoute rule: the hash of its `matches` (wire JSON). Envoy routes built
    from the rule carry it as their name, so per-route policies (MeshTimeout, MeshRetry on a route) find
    them, as Kuma does with its rule-matches hash."""
    import hashlib
    import json

    text = json.dumps(matches, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
