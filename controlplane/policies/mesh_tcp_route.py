"""MeshTCPRoute: weighted routing of outbound TCP connections.

Each `to[]` entry names a destination (`targetRef` MeshService; Mesh under a MeshGateway) and exactly one
rule (Kuma allows at most one, as there is nothing to match on in TCP): `rules[0].default.backendRefs[]`
of MeshService / MeshServiceSubset with `name`, `tags`, `weight` (>= 0, default 1, not all 0) and `port`.

A MeshHTTPRoute for the same destination takes precedence over a MeshTCPRoute (Kuma's rule, applied by
the xDS layer).

Envoy effect: the outbound TCP proxy's weighted_clusters (or a single cluster). Added by the xDS layer, not
here.
"""

from __future__ import annotations

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations

from ._common import (
    MESH,
    MESH_GATEWAY,
    MESH_SERVICE,
    TOP_LEVEL_KINDS,
    BackendRef,
    TargetRef,
    check_backend_refs,
    check_target_ref,
    check_top_level,
    effective_target_ref,
)

POLICY = "MeshTCPRoute"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY)


class RuleConf(Spec):
    backend_refs: list[BackendRef] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.backend_refs is None:
            v.add(f"{path}.backendRefs", "must be set: list where the connections go")
        else:
            check_backend_refs(v, f"{path}.backendRefs", self.backend_refs, where=f"default.backendRefs of {POLICY}")


class Rule(Spec):
    default: RuleConf

    def check(self, v: Violations, path: str) -> None:
        self.default.check(v, f"{path}.default")


class To(Spec):
    target_ref: TargetRef
    rules: list[Rule]

    def check_in(self, v: Violations, path: str, *, top: str) -> None:
        allowed = (MESH,) if top == MESH_GATEWAY else (MESH_SERVICE,)
        check_target_ref(v, f"{path}.targetRef", self.target_ref, allowed=allowed,
                         where=f"spec.to[].targetRef of {POLICY}" +
                               (" under a top-level MeshGateway" if top == MESH_GATEWAY else ""))
        if len(self.rules) != 1:
            v.add(f"{path}.rules", f"must have exactly one rule (got {len(self.rules)}): TCP has nothing to match "
                                   "on")
        for i, rule in enumerate(self.rules):
            rule.check(v, f"{path}.rules[{i}]")


class MeshTCPRouteSpec(Spec):
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
    name=POLICY, plural="meshtcproutes", singular="meshtcproute", scope=Scope.MESH, spec_cls=MeshTCPRouteSpec,
    flat=False, is_policy=True,
    description="TCP routing: weighted backends for outbound connections.",
))

# --- Envoy effect -----------------------------------------------------------------------------------
# The xDS issue adds here how MeshTCPRoute backends become the outbound TCP proxy's clusters.
