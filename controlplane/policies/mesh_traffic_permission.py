"""MeshTrafficPermission: which clients may call the selected proxies' inbounds (mTLS must be on).

Two forms, as in Kuma, and a policy uses exactly one of them:

- `from[]` (Kuma 2.x): each entry selects clients with a targetRef (Mesh, MeshSubset, MeshService,
  MeshServiceSubset) and sets `default.action` to Allow, Deny or AllowWithShadowDeny (allow, but log as
  if denied).
- `rules[]` (Kuma 2.12+, SPIFFE identities): each rule's `default` lists `deny`, `allow` and
  `allowWithShadowDeny` matchers on the client's SPIFFE ID (`type: Exact|Prefix`, `value: spiffe://...`).
  Deny wins over allow; nothing matched means deny.

Envoy effect: rendered by the xDS layer into RBAC network/HTTP filters on each inbound listener, matching
the peer certificate's URI SAN (see the "Envoy effect" section at the end of this module).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.type.matcher.v3 import string_pb2
from pydantic import Field

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.dataplane import SERVICE_TAG, Inbound
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import pack, stat_name
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.targeting import (
    DATAPLANE,
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    check_top_level,
    effective_target_ref,
    in_precedence_order,
    precedence_key,
    selects_inbound,
)

from ._checks import check_from
from ._rule_matches import Match

POLICY = "MeshTrafficPermission"
Action = Literal["Allow", "Deny", "AllowWithShadowDeny"]
FROM_KINDS = (MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET)
# The SPIFFE form selects whole proxies (or their listeners, by sectionName).
RULES_TOP_LEVEL_KINDS = (MESH, DATAPLANE)


class Conf(Spec):
    action: Action | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.action is None:
            v.add(f"{path}.action", "must be set: Allow, Deny or AllowWithShadowDeny")


class RuleConf(Spec):
    deny: list[Match] | None = None
    allow_with_shadow_deny: list[Match] | None = None
    allow: list[Match] | None = None

    def check(self, v: Violations, path: str) -> None:
        if not (self.deny or self.allow or self.allow_with_shadow_deny):
            v.add(path, "list at least one matcher in deny, allow or allowWithShadowDeny")
        for name, alias in (("deny", "deny"), ("allow_with_shadow_deny", "allowWithShadowDeny"),
                            ("allow", "allow")):
            for i, m in enumerate(getattr(self, name) or ()):
                m.check(v, f"{path}.{alias}[{i}]")


class Rule(Spec):
    default: RuleConf

    def check(self, v: Violations, path: str) -> None:
        self.default.check(v, f"{path}.default")


class MeshTrafficPermissionSpec(Spec):
    target_ref: TargetRef | None = None
    from_: list[Item[Conf]] | None = Field(default=None, alias="from")
    rules: list[Rule] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.from_ and self.rules:  # Kuma: an empty list counts as not given
            v.add(path, "use either 'from' or 'rules', not both")
        elif not self.from_ and not self.rules:
            v.add(f"{path}.from", "needs at least one item (or give 'rules' with SPIFFE ID matchers)")
        allowed = RULES_TOP_LEVEL_KINDS if self.rules is not None else TOP_LEVEL_KINDS
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=allowed, policy=POLICY, inbound=True)
        check_from(v, path, self.from_, policy=POLICY, allowed=FROM_KINDS)
        for i, rule in enumerate(self.rules or ()):
            rule.check(v, f"{path}.rules[{i}]")


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshtrafficpermissions", singular="meshtrafficpermission", scope=Scope.MESH,
    spec_cls=MeshTrafficPermissionSpec, flat=False, is_policy=True,
    description="Allows or denies inbound traffic to the selected proxies, by client.",
))

# --- Envoy effect -----------------------------------------------------------------------------------
# The xDS issue adds here how a matched MeshTrafficPermission becomes Envoy RBAC configuration.

# A client matcher: ("exact"|"prefix", value) on one URI SAN, or several that must all hold.
Matcher = tuple[tuple[str, str], ...]
# (matcher, action) in precedence order: for a client, the LAST rule that matches decides. The action is
# "allow", "deny" or "shadow" (AllowWithShadowDeny: allowed, and denied in Envoy's shadow rules, whose
# `shadow_denied` stats show what a Deny would refuse).
Rules = tuple[tuple[Matcher, str], ...]
_ACTIONS = {"Allow": "allow", "Deny": "deny", "AllowWithShadowDeny": "shadow"}



def _client_matcher(mesh: str, ref: TargetRef) -> Matcher:
    if ref.kind == MESH:
        return (("prefix", f"spiffe://{mesh}/"),)
    tags = dict(ref.tags or {})
    if ref.kind in (MESH_SERVICE, MESH_SERVICE_SUBSET) and ref.name:
        tags[SERVICE_TAG] = ref.name
    parts = []
    for key, value in sorted(tags.items()):
        if key == SERVICE_TAG:
            parts.append(("exact", f"spiffe://{mesh}/{value}"))
        elif value == "*":
            parts.append(("prefix", f"kuma://{key}/"))
        else:
            parts.append(("exact", f"kuma://{key}/{value}"))
    return tuple(parts) or (("prefix", f"spiffe://{mesh}/"),)


def effective_rules(ctx: ProxyContext, inbound: Inbound) -> Rules:
    """Every `from` entry of every policy that selects this inbound, lowest precedence first, in the order
    all policies merge (`targeting.in_precedence_order`: top-level specificity, then the entry's, then policy
    name inverted, then position); SPIFFE-form `rules` after them, their denies last (deny wins)."""
    entries: list[tuple[TargetRef, Item[Conf], str]] = []
    spiffe: list[tuple[Matcher, str]] = []
    for policy in ctx.topology.policies.get(POLICY, ()):
        spec = policy.spec
        assert isinstance(spec, MeshTrafficPermissionSpec)
        top = effective_target_ref(spec.target_ref)
        if not selects_inbound(top, ctx.dataplane, inbound.tags, inbound.port):
            continue
        entries.extend((top, item, policy.meta.name) for item in spec.from_ or ())
        for rule in spec.rules or ():
            conf = rule.default
            for action, matches in (("allow", conf.allow), ("shadow", conf.allow_with_shadow_deny),
                                    ("deny", conf.deny)):
                for m in matches or []:
                    assert m.spiffe_id is not None
                    kind = "exact" if m.spiffe_id.type == "Exact" else "prefix"
                    spiffe.append((((kind, m.spiffe_id.value),), action))
    ordered = in_precedence_order(entries, key=lambda e: precedence_key(e[0], e[1].target_ref), name=lambda e: e[2])
    rules = [(_client_matcher(ctx.mesh, item.target_ref), _ACTIONS[item.default.action or "Deny"])
             for _, item, _ in ordered]
    rules += [r for r in spiffe if r[1] != "deny"] + [r for r in spiffe if r[1] == "deny"]
    return tuple(rules)


def _principal(matcher: Matcher) -> rbac_pb2.Principal:
    ids = [rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(
        principal_name=string_pb2.StringMatcher(**{kind: value}))) for kind, value in matcher]
    return ids[0] if len(ids) == 1 else rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=ids))


def rbac_rules(rules: Rules, *, shadow: bool = False) -> rbac_pb2.RBAC:
    """ALLOW policy: a client is allowed by rule i when i matches and no later rule that denies matches.
    No allowing rule at all leaves the policy empty, which Envoy treats as deny-all (Kuma's default). With
    `shadow`, AllowWithShadowDeny counts as Deny: the shadow rules, evaluated and counted, never enforced."""
    denies = {"deny", "shadow"} if shadow else {"deny"}
    principals = []
    for i, (matcher, action) in enumerate(rules):
        if action in denies:
            continue
        later_denies = [m for m, a in rules[i + 1:] if a in denies]
        p = _principal(matcher)
        if later_denies:
            overridden = rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=[_principal(m) for m in later_denies]))
            p = rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=[p, rbac_pb2.Principal(not_id=overridden)]))
        principals.append(p)
    config = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW)
    if principals:
        config.policies["mesh-traffic-permission"].CopyFrom(rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(any=True)], principals=principals))
    return config


class TrafficPermissionPlugin(PolicyPlugin):
    """Envoy RBAC on every mTLS filter chain of an inbound, matching the client's URI SAN exactly."""

    policy_type = POLICY
    order = 10

    def inbound_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        return effective_rules(ctx, inbound) if ctx.mtls else None

    def apply_inbound(self, ctx: ProxyContext, inbound: Inbound, listener: listener_pb2.Listener,
                      key: Hashable) -> None:
        assert isinstance(key, tuple)
        rules = rbac_rules(key)
        shadow = rbac_rules(key, shadow=True) if any(a == "shadow" for _, a in key) else None
        prefix = stat_name(f"{listener.name}_")
        for chain in listener.filter_chains:
            if not chain.HasField("transport_socket"):
                continue  # plaintext chain of a PERMISSIVE mesh: no identity to check
            _insert_rbac(chain, rules, shadow, prefix)


def _insert_rbac(chain: listener_components_pb2.FilterChain, rules: rbac_pb2.RBAC, shadow: rbac_pb2.RBAC | None,
                 prefix: str) -> None:
    shadow_fields = {"shadow_rules": shadow} if shadow is not None else {}
    for f in chain.filters:
        if f.name == "envoy.filters.network.http_connection_manager":
            manager = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(manager)
            manager.http_filters.insert(0, hcm_pb2.HttpFilter(
                name="envoy.filters.http.rbac",
                typed_config=pack(http_rbac_pb2.RBAC(rules=rules, **shadow_fields))))
            f.typed_config.CopyFrom(pack(manager))
            return
    chain.filters.insert(0, listener_components_pb2.Filter(
        name="envoy.filters.network.rbac",
        typed_config=pack(net_rbac_pb2.RBAC(rules=rules, stat_prefix=prefix, **shadow_fields))))


PLUGIN = register_plugin(TrafficPermissionPlugin())
