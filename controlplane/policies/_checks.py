"""The field checks targetRef policies share: Go durations, numbers and percentages, HTTP names and values,
RE2 regular expressions, header matches and route backend references.

Everything here validates with Envoy in mind: a value that passes must not make Envoy reject the config
it is rendered into. Where Envoy is stricter than Kuma (durations, RE2 regexes, header names), the
Envoy limit is enforced and the reason says so. The targetRef model, matching and merging are the
framework's: controlplane/xds/generate/targeting.py.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
import warnings
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BeforeValidator, Field

from controlplane.resources.base import Spec
from controlplane.resources.errors import Violations
from controlplane.resources.fields import MAX_DURATION_NS, MAX_DURATION_TEXT, check_name
from controlplane.xds.generate.plugins import Backend
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    SELECTS_NOTHING_YET,
    Item,
    TargetRef,
    check_items,
    check_target_ref,
)

# --- from[] and to[] lists ---------------------------------------------------------------------------


def check_from(v: Violations, path: str, items: Sequence[Item[Any]] | None, *, policy: str,
               allowed: Collection[str]) -> None:
    """A policy's `from[]` (inbound) list at `{path}.from`: each entry's targetRef among `allowed` kinds in an
    inbound position, then its `default`."""
    check_items(v, f"{path}.from", items, allowed=allowed, where=f"spec.from[].targetRef of {policy}", inbound=True)


def check_to(v: Violations, path: str, items: Sequence[Item[Any]] | None, *, policy: str,
             allowed: Collection[str], under: str | None = None) -> None:
    """A policy's `to[]` (outbound) list at `{path}.to`; `under` names a top-level kind that narrows the
    allowed kinds (e.g. MeshGateway), so the reason says why."""
    check_items(v, f"{path}.to", items, allowed=allowed,
                where=f"spec.to[].targetRef of {policy}" + (f" under a top-level {under}" if under else ""))


def refuse_to(v: Violations, path: str, items: Sequence[Item[Any]] | None, *, doing: str) -> None:
    """Policies kuma-vm applies on the destination's inbounds only: Kuma's `to[]` form of them configures
    builtin gateways, which kuma-vm does not run, so any `to` (even an empty one) is refused."""
    if items is not None:
        v.add(f"{path}.to", f"kuma-vm {doing} on the destination's inbounds only (Kuma's 'to' is for builtin "
                            "gateways): use 'from' on the destination's proxies")


# Kuma 2.14's `rules[]` form of inbound policies: a `default` for all of a proxy's inbound traffic, in place of
# `from[]`. kuma-vm merges each rule as a `from` entry of kind Mesh. MeshCircuitBreaker's rules are just that; the
# policies whose Kuma rules also take `matches` use _rule_matches.MatchingInboundRule.
RuleConf = TypeVar("RuleConf", bound=Spec)


class InboundRule(Spec, Generic[RuleConf]):
    default: RuleConf


def check_rules(v: Violations, path: str, rules: Sequence[InboundRule[Any]] | None, *,
                other: Sequence[Any] | None) -> None:
    """Kuma: `rules` replaces `from` and `to` (`other`: the two, concatenated); each rule's default is checked
    as a `from` entry's is."""
    if rules and other:
        v.add(path, "fields 'to' and 'from' must be empty when 'rules' is defined")
    for i, rule in enumerate(rules or ()):
        rule.default.check(v, f"{path}.rules[{i}].default")


def rules_as_from(rules: Sequence[InboundRule[Any]] | None) -> list[Item[Any]]:
    """The rules as the `from[]` entries (kind Mesh: every client) they merge as."""
    return [Item.model_construct(target_ref=TargetRef.model_construct(kind=MESH), default=r.default)
            for r in rules or ()]


# --- entries that must be unique in a list ------------------------------------------------------------

Key = TypeVar("Key", bound=Hashable)
Where = TypeVar("Where")


def seen_before(seen: dict[Key, Where], key: Key, here: Where) -> Where | None:
    """Where `key` was first given (an index or a path) if it was, else None; records `here` for the next call.
    The one loop behind every "X is already given at Y" message, which each caller words itself."""
    if key in seen:
        return seen[key]
    seen[key] = here
    return None


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


def check_type_blocks(v: Violations, path: str, chosen: str,
                      blocks: Mapping[str, tuple[str, Spec | None, str]], *, required: bool = True,
                      check: Callable[[Any, str], None] | None = None,
                      missing: str = "must be set with type {chosen}", unused: str = "") -> None:
    """A `type` that selects one of several blocks (a backend's `zipkin`, a load balancer's `ringHash`, a route
    filter's `urlRewrite`...): the chosen block is checked (and must be set unless not `required`), the others
    must not be set. `blocks`: type -> (field alias, the block, what to give when it is missing, or ""); types
    may share a block (hash policies' Connection and SourceIP). `check(block, path)` checks the chosen block
    (default: its `check(v, path)`); `missing` and `unused` word the two refusals ({chosen}: the type given,
    {owner}: a type that takes the unused block; default "cannot be set with type {chosen}: set type {owner}
    or remove it")."""
    unused = unused or "cannot be set with type {chosen}: set type {owner} or remove it"
    want = blocks[chosen][0] if chosen in blocks else None  # an unknown type is refused by the caller
    done: set[str] = set()
    for kind, (alias, block, hint) in blocks.items():
        if alias in done:
            continue
        done.add(alias)
        if alias == want:
            hint = blocks[chosen][2]  # the chosen type's (a shared block's first type may say otherwise)
            if block is None:
                if required:
                    v.add(f"{path}.{alias}", missing.format(chosen=chosen) + (f": {hint}" if hint else ""))
            elif check is not None:
                check(block, f"{path}.{alias}")
            else:
                block.check(v, f"{path}.{alias}")
        elif block is not None:
            v.add(f"{path}.{alias}", unused.format(chosen=chosen, owner=kind))


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


def _no_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(f"{value!r} is a YAML/JSON number with a fraction, which Kuma's integer-or-string fields "
                         f"do not take: quote it, e.g. \"{value}\"")
    return value


# Kuma's IntOrString decimal: 50 or "62.5"; an unquoted 62.5 is refused with a message that says to quote it.
IntOrString = Annotated[int | str, BeforeValidator(_no_float)]


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
    seen: dict[Hashable, int] = {}
    for i, m in enumerate(matches or ()):
        m.check(v, f"{path}[{i}]")
        if (earlier := seen_before(seen, m.name, i)) is not None:
            v.add(f"{path}[{i}].name", f"header {m.name!r} is already matched by entry [{earlier}]: "
                                       "combine them into one")


# --- backend references (routes) ----------------------------------------------------------------------

class BackendRef(TargetRef):
    """Where a route sends traffic: a targetRef plus a weight (default 1) and an optional port."""

    weight: int | None = Field(default=None)
    port: int | None = None

    @property
    def effective_weight(self) -> int:
        return 1 if self.weight is None else self.weight


BACKEND_KINDS = (MESH_SERVICE, MESH_SERVICE_SUBSET)


def refuse_backend_kind_not_supported(v: Violations, path: str, ref: TargetRef) -> bool:
    """Kuma routes to MeshExternalService and MeshMultiZoneService backends too; kuma-vm has no such resources
    to send traffic to, so it says so (rather than "not allowed"). True when refused."""
    if ref.kind not in SELECTS_NOTHING_YET:
        return False
    v.add(f"{path}.kind", f"a {ref.kind} backend is not supported by kuma-vm yet (it has no {ref.kind} "
                          "resources): use a MeshService or MeshServiceSubset")
    return True


def backend_of(ref: BackendRef) -> Backend:
    """The destination a route's backendRef names: the service, or its subset with these tags."""
    return Backend.of(ref.name or "", ref.tags if ref.kind == MESH_SERVICE_SUBSET else None)


def check_backend_refs(v: Violations, path: str, refs: Sequence[BackendRef], *, where: str) -> None:
    """Kinds, names, ports and weights of a backendRefs list (which the caller has checked is non-empty)."""
    if not refs:
        v.add(path, "cannot be empty: list at least one backend, or remove backendRefs")
        return
    total = 0
    seen: dict[Hashable, int] = {}
    for i, ref in enumerate(refs):
        p = f"{path}[{i}]"
        if refuse_backend_kind_not_supported(v, p, ref):
            continue
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
        if (earlier := seen_before(seen, key, i)) is not None:
            v.add(p, f"is the same backend as entry [{earlier}]: merge them into one entry with the summed "
                     "weight")
    if all(r.weight is not None and 0 <= r.weight <= UINT32_MAX for r in refs) and total == 0:
        v.add(path, "all weights are 0, so no traffic could be sent: give at least one backend a weight "
                    "above 0")
    elif total > UINT32_MAX:
        v.add(path, f"the weights add up to {total}, more than Envoy's limit of {UINT32_MAX}: scale them down")
