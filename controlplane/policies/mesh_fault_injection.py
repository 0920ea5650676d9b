"""MeshFaultInjection: HTTP faults (abort, delay, response bandwidth) injected by the destination's proxy.

`from[]` entries select clients (Mesh, MeshSubset, MeshService, MeshServiceSubset) and give `default.http`,
a list of faults run in order, each with any of:

- `abort`: `httpStatus` and `percentage` (the share of requests answered with that status);
- `delay`: `value` (a Go duration) and `percentage`;
- `responseBandwidth`: `limit` ('<n>Gbps', 'Mbps', 'kbps' or 'bps') and `percentage`.

Percentages are Kuma's IntOrString decimals from 0 to 100 (`50`, `"2.5"`). Lists are not merged: the most
specific entry's `http` list replaces the others (Kuma's merge rule for arrays).

Differences from Kuma, each with a clear validation message: statuses 100-199 are refused (Envoy's fault
filter accepts 200-599 only; Kuma passes them through and Envoy NACKs); a fault with no abort, delay or
responseBandwidth is refused; `to[]` (Kuma's builtin-gateway form) is refused; clients are told apart by
their certificate's kuma.io/service (see `_clients`), so selecting them by other tags is refused.

Kuma 2.10+'s `rules[]` form (`rules: [{default: {http: [...]}}]`) injects faults for every client. As in Kuma
2.14, where MeshFaultInjection's `from` entries are not rules, rules are not merged: each rule's faults are
added after the previous rule's (policies in precedence order, rules in written order), and once a policy with
rules selects an inbound, `from` entries of other policies are ignored there. One rule gives the Envoy config of
a `from` entry of kind Mesh with the same default. A policy with `rules` cannot also have `from`. A rule's
`matches` (Kuma 2.13+: `[{spiffeID: {type: Exact|Prefix, value}}]`, see `_rule_matches`) limit its faults to
the callers any of them selects; Kuma's `sni` matcher is refused.

Envoy effect (end of this module): on each inbound HTTP connection manager, one `envoy.filters.http.fault`
per fault, before the router, with a header match on the client's SPIFFE ID for per-service entries and for
rules with matches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Sequence
from decimal import Decimal
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import percent_pb2
from pydantic import Field

from controlplane.resources.base import Resource, ResourceType, Scope, Spec, register
from controlplane.resources.dataplane import Inbound
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import duration, pack
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.rules import Entry
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    check_top_level,
)

from ._checks import (
    IntOrString,
    check_duration,
    check_from,
    check_percentage,
    check_rules,
    parse_decimal,
    parse_go_duration,
    refuse_to,
    rules_as_from,
)
from ._clients import ClientRules, check_client_ref, client_matchers, client_rules, describe, register_per_client
from ._http_filters import add_http_filters
from ._inbound_view import origins, register_inbound_view
from ._rule_matches import (
    MatchingInboundRule,
    MatchKey,
    caller_matcher,
    check_rule_matches,
    describe_matches,
    match_key,
)

POLICY = "MeshFaultInjection"
FROM_KINDS = (MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET)
FAULT_FILTER = "envoy.filters.http.fault"

_BANDWIDTH = re.compile(r"^([0-9]+)(Gbps|Mbps|kbps|bps)$")
_KBPS = {"Gbps": 1_000_000, "Mbps": 1_000, "kbps": 1}


def bandwidth_kbps(text: str) -> int | None:
    """'50Mbps' -> 50000 (Envoy limits in whole kbps); None when not Kuma's bandwidth form or below 1kbps."""
    m = _BANDWIDTH.match(text)
    if m is None:
        return None
    value, unit = int(m.group(1)), m.group(2)
    kbps = value // 1000 if unit == "bps" else value * _KBPS[unit]
    return kbps or None


class Abort(Spec):
    http_status: int
    percentage: IntOrString

    def check(self, v: Violations, path: str) -> None:
        if not 200 <= self.http_status <= 599:
            v.add(f"{path}.httpStatus", f"{self.http_status} cannot be injected: Envoy's fault filter aborts with "
                                        "a status from 200 to 599")
        check_percentage(v, f"{path}.percentage", self.percentage)


class Delay(Spec):
    value: str
    percentage: IntOrString

    def check(self, v: Violations, path: str) -> None:
        check_duration(v, f"{path}.value", self.value)
        check_percentage(v, f"{path}.percentage", self.percentage)


class ResponseBandwidth(Spec):
    limit: str
    percentage: IntOrString

    def check(self, v: Violations, path: str) -> None:
        if bandwidth_kbps(self.limit) is None:
            v.add(f"{path}.limit", f"{self.limit!r} is not a bandwidth: give a whole number and a unit, Gbps, Mbps, "
                                   "kbps or bps, of at least 1kbps (e.g. '10kbps', '50Mbps')")
        check_percentage(v, f"{path}.percentage", self.percentage)


class Fault(Spec):
    abort: Abort | None = None
    delay: Delay | None = None
    response_bandwidth: ResponseBandwidth | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.abort is None and self.delay is None and self.response_bandwidth is None:
            v.add(path, "this fault does nothing: set abort, delay or responseBandwidth")
        if self.abort is not None:
            self.abort.check(v, f"{path}.abort")
        if self.delay is not None:
            self.delay.check(v, f"{path}.delay")
        if self.response_bandwidth is not None:
            self.response_bandwidth.check(v, f"{path}.responseBandwidth")


class Conf(Spec):
    http: list[Fault] | None = None

    def check(self, v: Violations, path: str) -> None:
        for i, fault in enumerate(self.http or ()):
            fault.check(v, f"{path}.http[{i}]")


class MeshFaultInjectionSpec(Spec):
    target_ref: TargetRef | None = None
    from_: list[Item[Conf]] | None = Field(default=None, alias="from")
    to: list[Item[Conf]] | None = None
    rules: list[MatchingInboundRule[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_LEVEL_KINDS, policy=POLICY,
                        inbound=True)
        refuse_to(v, path, self.to, doing="injects faults")
        # Kuma 2.14 takes a policy without `from` entries or rules (it configures nothing)
        check_from(v, path, self.from_, policy=POLICY, allowed=FROM_KINDS)
        for i, item in enumerate(self.from_ or ()):
            check_client_ref(v, f"{path}.from[{i}].targetRef", item.target_ref, POLICY)
        if self.rules and self.from_:  # unlike its other inbound policies, Kuma lets `to` be (gateways) here
            v.add(path, "field 'from' must be empty when 'rules' is defined")
        check_rules(v, path, self.rules, other=None)
        check_rule_matches(v, path, self.rules)

    def inbound_items(self) -> list[Item[Conf]]:
        return [*(self.from_ or ()), *rules_as_from(self.rules)]


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshfaultinjections", singular="meshfaultinjection", scope=Scope.MESH,
    spec_cls=MeshFaultInjectionSpec, flat=False, is_policy=True,
    description="Injects HTTP aborts, delays and response bandwidth limits on inbound traffic, by client.",
))

register_per_client(POLICY)

# --- Envoy effect -----------------------------------------------------------------------------------


def fractional_percent(value: int | str) -> percent_pb2.FractionalPercent:
    """Kuma's conversion: a whole percentage per hundred, a decimal one per million (62.5 -> 625000)."""
    d = parse_decimal(value)
    assert d is not None  # validated
    if d == d.to_integral_value():
        return percent_pb2.FractionalPercent(numerator=int(d), denominator=percent_pb2.FractionalPercent.HUNDRED)
    return percent_pb2.FractionalPercent(numerator=int((d * Decimal(10_000)).to_integral_value()),
                                         denominator=percent_pb2.FractionalPercent.MILLION)


def fault_config(fault: dict[str, Any]) -> fault_pb2.HTTPFault:
    config = fault_pb2.HTTPFault()
    if (abort := fault.get("abort")) is not None:
        config.abort.http_status = abort["httpStatus"]
        config.abort.percentage.CopyFrom(fractional_percent(abort["percentage"]))
    if (delay := fault.get("delay")) is not None:
        config.delay.fixed_delay.CopyFrom(duration(parse_go_duration(delay["value"])))
        config.delay.percentage.CopyFrom(fractional_percent(delay["percentage"]))
    if (bandwidth := fault.get("responseBandwidth")) is not None:
        limit = bandwidth_kbps(bandwidth["limit"])
        assert limit is not None  # validated
        config.response_rate_limit.CopyFrom(common_fault_pb2.FaultRateLimit(
            fixed_limit=common_fault_pb2.FaultRateLimit.FixedLimit(limit_kbps=limit),
            percentage=fractional_percent(bandwidth["percentage"])))
    return config


def fault_filters(mesh: str, rules: ClientRules) -> list[hcm_pb2.HttpFilter]:
    """One fault filter per fault of each client rule: per-service rules first, then everyone else's."""
    per_service, everyone = rules
    named = [s for s, _ in per_service]
    out = []
    for service, conf in [*per_service, (None, everyone)]:
        if conf is None:
            continue
        matchers = client_matchers(mesh, service, named)
        for fault in json.loads(conf).get("http") or ():
            config = fault_config(fault)
            config.headers.extend(matchers)
            out.append(hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=pack(config)))
    return out


# A rule as it renders: its `default` (canonical JSON) and the callers it applies to.
RuleKey = tuple[str, MatchKey]


def rule_fault_filters(rules: Sequence[RuleKey]) -> list[hcm_pb2.HttpFilter]:
    """Kuma 2.14's `rules`: every rule's faults, rule after rule (rules are not merged), each for the callers its
    matches select (every caller without matches)."""
    out = []
    for conf, matches in rules:
        for fault in json.loads(conf).get("http") or ():
            config = fault_config(fault)
            if matches is not None:
                config.headers.append(caller_matcher(matches))
            out.append(hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=pack(config)))
    return out


def rule_entries(entries: Sequence[Entry], matched: Sequence[Resource]) -> list[Entry]:
    """The entries that are rules (of policies with `rules`), in precedence order."""
    with_rules = {p.meta.name for p in matched if getattr(p.spec, "rules", None)}
    return [e for e in entries if e.policy in with_rules]


def rule_keys(entries: Sequence[Entry], matched: Sequence[Resource]) -> list[RuleKey]:
    """Each rule entry with its matches (an entry's index is its rule's: a policy with rules has no `from`)."""
    by_name = {p.meta.name: p for p in matched}
    out: list[RuleKey] = []
    for e in rule_entries(entries, matched):
        spec = by_name[e.policy].spec
        assert isinstance(spec, MeshFaultInjectionSpec) and spec.rules is not None  # rule_entries: has rules
        rules = spec.rules
        out.append((json.dumps(e.conf, sort_keys=True, separators=(",", ":")), match_key(rules[e.index])))
    return out


def _inbound_view(entries: Sequence[Entry], matched: Sequence[Resource]) -> dict[str, Any]:
    rules = rule_entries(entries, matched)
    if not rules:
        return {"clients": describe(client_rules(entries))}
    return {"clients": [{"clients": describe_matches(matches), "conf": json.loads(conf)}
                        for conf, matches in rule_keys(entries, matched)], "origins": origins(rules)}


register_inbound_view(POLICY, _inbound_view)


class FaultInjectionPlugin(PolicyPlugin):
    policy_type = POLICY
    order = 80

    def inbound_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        entries = ctx.rules.from_entries(POLICY, ctx.dataplane, inbound)
        # Kuma 2.14 (MeshFaultInjection is not `is_from_as_rules`): once a policy with rules selects the
        # inbound, its faults come from the rules alone, and `from` entries of other policies are ignored.
        rules_only = rule_keys(entries, ctx.rules.matched(POLICY, ctx.dataplane))
        if rules_only:
            return ("rules", tuple(rules_only))
        rules = client_rules(entries)
        return None if rules is None else (ctx.mesh, rules)

    def apply_inbound(self, ctx: ProxyContext, inbound: Inbound, listener: listener_pb2.Listener,
                      key: Hashable) -> None:
        assert isinstance(key, tuple)
        if key[0] == "rules":
            add_http_filters(listener, rule_fault_filters(key[1]))
            return
        mesh, rules = key
        add_http_filters(listener, fault_filters(mesh, rules))


PLUGIN = register_plugin(FaultInjectionPlugin())
