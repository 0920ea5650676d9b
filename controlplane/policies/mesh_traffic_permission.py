"""MeshTrafficPermission: which clients may call the selected proxies' inbounds (mTLS must be on).

Two forms, as in Kuma, and a policy uses exactly one of them:

- `from[]` (Kuma 2.x): each entry selects clients with a targetRef (Mesh, MeshSubset, MeshService,
  MeshServiceSubset) and sets `default.action` to Allow, Deny or AllowWithShadowDeny (allow, but log as
  if denied).
- `rules[]` (Kuma 2.12+, SPIFFE identities): each rule's `default` lists `deny`, `allow` and
  `allowWithShadowDeny` matchers on the client's SPIFFE ID (`type: Exact|Prefix`, `value: spiffe://...`).
  Deny wins over allow; nothing matched means deny.

Envoy effect: rendered by the xDS layer into RBAC network/HTTP filters on each inbound listener, matching
the peer certificate's URI SAN. That code is added there, not here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations

from ._common import (
    DATAPLANE,
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    check_items,
    check_top_level,
)

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


class SpiffeIDMatch(Spec):
    type: Literal["Exact", "Prefix"]
    value: str

    def check(self, v: Violations, path: str) -> None:
        if not self.value.startswith("spiffe://") or len(self.value) <= len("spiffe://"):
            v.add(f"{path}.value", f"{self.value!r} is not a SPIFFE ID: it starts with 'spiffe://' and a trust "
                                   "domain, e.g. spiffe://default.zone-1.mesh.local/ns/demo/sa/client")
        elif any(c.isspace() for c in self.value):
            v.add(f"{path}.value", "cannot contain whitespace")


class Match(Spec):
    spiffe_id: SpiffeIDMatch | None = Field(default=None, alias="spiffeID")

    def check(self, v: Violations, path: str) -> None:
        if self.spiffe_id is None:
            v.add(f"{path}.spiffeID", "is required: an empty matcher would match nothing useful")
        else:
            self.spiffe_id.check(v, f"{path}.spiffeID")


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
        if self.from_ is not None and self.rules is not None:
            v.add(path, "use either 'from' or 'rules', not both")
        elif not self.from_ and not self.rules:
            v.add(f"{path}.from", "needs at least one item (or give 'rules' with SPIFFE ID matchers)")
        allowed = RULES_TOP_LEVEL_KINDS if self.rules is not None else TOP_LEVEL_KINDS
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=allowed, policy=POLICY, inbound=True)
        check_items(v, f"{path}.from", self.from_, allowed=FROM_KINDS,
                    where=f"spec.from[].targetRef of {POLICY}", inbound=True)
        for i, rule in enumerate(self.rules or ()):
            rule.check(v, f"{path}.rules[{i}]")


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshtrafficpermissions", singular="meshtrafficpermission", scope=Scope.MESH,
    spec_cls=MeshTrafficPermissionSpec, flat=False, is_policy=True,
    description="Allows or denies inbound traffic to the selected proxies, by client.",
))

# --- Envoy effect -----------------------------------------------------------------------------------
# The xDS issue adds here how a matched MeshTrafficPermission becomes Envoy RBAC configuration.
