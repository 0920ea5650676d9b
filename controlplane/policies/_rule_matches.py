"""Kuma 2.13+'s `rules[].matches` of inbound policies (MeshFaultInjection, MeshTimeout, MeshRateLimit,
MeshAccessLog; MeshTrafficPermission's rules use `Match`): which callers a rule applies to, by SPIFFE ID.

Kuma's shape (api/common/v1alpha1 Match): `matches: [{spiffeID: {type: Exact|Prefix, value: spiffe://...}}]`;
a rule applies to a caller that any of its matches selects, and a rule without `matches` to every caller.
`Prefix` is a plain string prefix of the ID (as MeshTrafficPermission's). Kuma's other matcher, `sni`, is
refused (SNI_NOT_YET says why): kuma-vm's inbounds tell callers apart by their certificate.

kuma-vm's callers present `spiffe://<mesh>/<service>` as the first URI SAN of their mTLS certificate, and the
inbound connection manager writes it into `x-forwarded-client-cert` (SANITIZE_SET: a caller cannot forge it;
see `_clients`). A rule's matches become one regex header matcher on that header, so an HTTP filter that takes
header matchers (the fault filter) applies only to those callers, and so does a copy of a route (MeshTimeout's and
MeshRateLimit's per-caller routes, `copy_routes_per_caller`, with Kuma 2.14's merge of covering rules,
`per_caller_confs`). MeshAccessLog reads the certificate itself (a CEL filter), as Kuma does. Without mTLS there
is no header, and a rule with matches applies to nobody.

Values are limited to the characters of a SPIFFE ID (letters, digits, '.', '-', '_', '/'; RFC: trust domain
and path segments): Envoy quotes XFCC values holding ',', ';' or '=', which the matcher could not match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from pydantic import Field

from controlplane.resources.base import Spec
from controlplane.resources.dataplane import Inbound
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.targeting import merge_confs, selects_inbound

from ._checks import InboundRule
from ._clients import XFCC

RuleConf = TypeVar("RuleConf", bound=Spec)

_SPIFFE_ID = re.compile(r"^spiffe://[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-/]*)?$")

# One spiffeID match: (type, value).
Caller = tuple[str, str]
# A rule's matches as a memo key: ((type, value), ...) in written order; None for every caller.
MatchKey = tuple[Caller, ...] | None
# Per caller match, the merged `default` (canonical JSON), most specific match first (see `per_caller_confs`).
CallerConfs = tuple[tuple[Caller, str], ...]


# Kuma 2.14's `sni` matcher compares the TLS server name a caller asked for with a DNS name (Kuma validates it as
# one), which Kuma's callers send for MeshService destinations. kuma-vm has no MeshService resources: its proxies
# send Kuma's tag form `<service>{mesh=<mesh>}`, which no valid `sni` value equals, so an sni rule would silently
# select no caller of the mesh. Refused until kuma-vm names destinations the MeshService way.
SNI_NOT_YET = ("a Kuma field kuma-vm does not support yet: sni (Kuma matches the DNS-style SNI of MeshService "
               "traffic; kuma-vm's proxies send `<service>{mesh=<mesh>}`, which no sni value matches): match "
               "callers by spiffeID")


class SpiffeIDMatch(Spec):
    """Kuma's client SPIFFE ID matcher (MeshTrafficPermission's rules and inbound policies' `rules[].matches`)."""

    type: Literal["Exact", "Prefix"]
    value: str

    def check(self, v: Violations, path: str) -> None:
        if not self.value.startswith("spiffe://") or len(self.value) <= len("spiffe://"):
            v.add(f"{path}.value", f"{self.value!r} is not a SPIFFE ID: it starts with 'spiffe://' and a trust "
                                   "domain, e.g. spiffe://default.zone-1.mesh.local/ns/demo/sa/client")
        elif any(c.isspace() for c in self.value):
            v.add(f"{path}.value", "cannot contain whitespace")


class HeaderSpiffeIDMatch(SpiffeIDMatch):
    """A SPIFFE ID matched in `x-forwarded-client-cert` (see the module's docstring): its characters only."""

    def check(self, v: Violations, path: str) -> None:
        if not _SPIFFE_ID.match(self.value):
            v.add(f"{path}.value", f"{self.value!r} is not a SPIFFE ID kuma-vm can match: write 'spiffe://', a trust "
                                   "domain and a path of letters, digits, '.', '-', '_' and '/' (kuma-vm's callers "
                                   "are spiffe://<mesh>/<service>, e.g. spiffe://default/web)")


class Match(Spec):
    """One of Kuma's client matchers: a SPIFFE ID (Kuma's `sni` is kept only to refuse it by name)."""

    spiffe_id: SpiffeIDMatch | None = Field(default=None, alias="spiffeID")
    sni: dict[str, Any] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.sni is not None:
            v.add(f"{path}.sni", SNI_NOT_YET)
        elif self.spiffe_id is None:
            v.add(f"{path}.spiffeID", "is required: give the caller's SPIFFE ID (type Exact or Prefix, and value)")
        else:
            self.spiffe_id.check(v, f"{path}.spiffeID")


class RuleMatch(Match):
    spiffe_id: HeaderSpiffeIDMatch | None = Field(default=None, alias="spiffeID")


class MatchingInboundRule(InboundRule[RuleConf]):
    """An inbound rule whose `matches` kuma-vm renders (for the policies that take them)."""

    matches: list[RuleMatch] | None = None


def check_rule_matches(v: Violations, path: str, rules: Sequence[MatchingInboundRule[Any]] | None) -> None:
    for i, rule in enumerate(rules or ()):
        for j, match in enumerate(rule.matches or ()):
            match.check(v, f"{path}.rules[{i}].matches[{j}]")


def match_key(rule: MatchingInboundRule[Any]) -> MatchKey:
    if not rule.matches:
        return None
    return tuple((m.spiffe_id.type, m.spiffe_id.value) for m in rule.matches if m.spiffe_id is not None)


def describe_matches(key: MatchKey) -> str | list[dict[str, Any]]:
    """The callers a rule applies to, as the inspect API shows them."""
    if key is None:
        return "every client"
    return [{"spiffeID": {"type": t, "value": value}} for t, value in key]


def caller_matcher(key: tuple[tuple[str, str], ...]) -> route_components_pb2.HeaderMatcher:
    """One header matcher for the callers any of the (validated) matches selects."""
    # SANITIZE_SET writes `By=<ours>;Hash=<hash>;URI=<caller's first URI SAN>`: match the URI element, never
    # our own `By=`, up to the next element or the end.
    alternatives = [re.escape(value) + ("" if kind == "Exact" else "[^;,]*") for kind, value in key]
    regex = f"(.*;)?URI=({'|'.join(alternatives)})([;,].*)?"
    return route_components_pb2.HeaderMatcher(
        name=XFCC, treat_missing_header_as_empty=True,
        string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex)))


def without_matches(rules: Sequence[MatchingInboundRule[Any]] | None) -> list[MatchingInboundRule[Any]]:
    """The rules for every caller (Kuma's catch-all rules: no `matches`, or an empty list)."""
    return [r for r in rules or () if not r.matches]


def matched_rules(ctx: ProxyContext, policy_type: str, inbound: Inbound) -> list[tuple[Caller, dict[str, Any]]]:
    """Every match of the rules with matches of the policies selecting this inbound, each with its rule's
    `default` (wire JSON): policies lowest precedence first, rules and matches in written order (Kuma's inbound
    rules carry one match each)."""
    out: list[tuple[Caller, dict[str, Any]]] = []
    for policy in ctx.rules.matched(policy_type, ctx.dataplane):
        if not selects_inbound(ctx.rules.top_level(policy), ctx.dataplane, inbound.tags, inbound.port):
            continue
        for rule in getattr(policy.spec, "rules", None) or ():
            for caller in match_key(rule) or ():
                out.append((caller, rule.default.to_wire()))
    return out


def _specificity(caller: Caller) -> tuple[int, int]:
    """Kuma's order of spiffeID matches: Exact before Prefix, a longer prefix before a shorter one."""
    kind, value = caller
    return (2, 0) if kind == "Exact" else (1, len(value))


def _covers(candidate: Caller, target: Caller) -> bool:
    """Does a match select every caller `target` selects (Exact: the same ID; Prefix: every longer ID)?"""
    kind, value = candidate
    return candidate == target if kind == "Exact" else target[1].startswith(value)


def per_caller_confs(rules: Sequence[tuple[Caller, Mapping[str, Any]]],
                     base: Mapping[str, Any] | None = None) -> CallerConfs:
    """Kuma 2.14's per-caller inbound configuration (MeshTimeout's and MeshRateLimit's matched routes): for each
    distinct match, most specific first, the merge of every rule whose match covers it, least specific first (the
    more specific wins; at equal specificity the later, higher precedence one), on top of `base` (MeshRateLimit:
    the conf for every caller). `rules`: lowest precedence first."""
    ordered = sorted(rules, key=lambda r: _specificity(r[0]), reverse=True)  # sorted() is stable, also reversed
    out: list[tuple[Caller, str]] = []
    for caller, _conf in ordered:
        if any(c == caller for c, _ in out):
            continue
        covering = sorted((r for r in rules if _covers(r[0], caller)), key=lambda r: _specificity(r[0]))
        merged = merge_confs([*([base] if base is not None else []), *(conf for _c, conf in covering)])
        if merged is not None:
            out.append((caller, json.dumps(merged, sort_keys=True, separators=(",", ":"))))
    return tuple(out)


# Per policy type that renders per-caller routes (MeshTimeout, MeshRateLimit): its `per_caller_confs` for an
# inbound, the one computation both its plugin and the inspect API use.
CallerConfsOf = Callable[[ProxyContext, Inbound], CallerConfs]
CALLER_CONFS: dict[str, CallerConfsOf] = {}


def register_caller_confs(policy_type: str, confs_of: CallerConfsOf) -> CallerConfsOf:
    CALLER_CONFS[policy_type] = confs_of
    return confs_of


def describe_caller_confs(callers: CallerConfs) -> list[dict[str, Any]]:
    """Per caller match, its merged conf, as the inspect API shows them (most specific match first)."""
    return [{"clients": describe_matches((caller,)), "conf": json.loads(conf)} for caller, conf in callers]


def copy_routes_per_caller(manager: hcm_pb2.HttpConnectionManager, callers: CallerConfs,
                           edit: Callable[[route_components_pb2.Route, dict[str, Any]], None]) -> None:
    """Kuma 2.14's matched routes: before each route, one copy per caller match (most specific first) that only that
    match's callers take (their SPIFFE ID in x-forwarded-client-cert), edited with the match's merged conf; other
    callers fall through to the route itself. Policies that do this one after the other (MeshTimeout, then
    MeshRateLimit) copy each other's copies, so a caller matched by both gets both."""
    for vhost in manager.route_config.virtual_hosts:
        routes = list(vhost.routes)
        del vhost.routes[:]
        for route in routes:
            if route.HasField("route"):
                for caller, conf_json in callers:
                    copy = vhost.routes.add()
                    copy.CopyFrom(route)
                    copy.match.headers.append(caller_matcher((caller,)))
                    edit(copy, json.loads(conf_json))
            vhost.routes.add().CopyFrom(route)
