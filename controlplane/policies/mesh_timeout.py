"""MeshTimeout: connection, idle and HTTP timeouts on inbound (`from[]`) and outbound (`to[]`) traffic.

`default` holds `connectionTimeout` (TCP connect, > 0; Kuma's default 5s), `idleTimeout` (no bytes either
way; 0 disables, default 1h) and `http` with `requestTimeout` (default 15s), `streamIdleTimeout` (default
30m), `maxStreamDuration`, `maxConnectionDuration` and `requestHeadersTimeout` (0 disables each). Values are
Go durations ('500ms', '1m30s'); negative or unparseable values, and values beyond what Envoy accepts
(about 292 years), are refused.

Positions (Kuma 2.9): top-level Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane, MeshGateway
(with listener tags) or MeshHTTPRoute; `from[]` Mesh; `to[]` Mesh, MeshService or MeshHTTPRoute (only Mesh
under a MeshGateway or MeshHTTPRoute top-level). Under a route only per-request timeouts make sense, so
`connectionTimeout`, `idleTimeout`, `http.maxStreamDuration` and `http.maxConnectionDuration` are refused
there.

Envoy effect: cluster connect_timeout, HCM/cluster idle and stream timeouts, route timeouts. Added by the
xDS layer, not here.
"""

from __future__ import annotations

from pydantic import Field

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations

from ._common import (
    MESH,
    MESH_GATEWAY,
    MESH_HTTP_ROUTE,
    MESH_SERVICE,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    camel,
    check_duration,
    check_target_ref,
    check_top_level,
    effective_target_ref,
    require_some,
)

POLICY = "MeshTimeout"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY, MESH_HTTP_ROUTE)
ROUTE_ONLY = "cannot be set for a MeshHTTPRoute (it applies per connection, not per route): remove it"


class Http(Spec):
    request_timeout: str | None = None
    stream_idle_timeout: str | None = None
    max_stream_duration: str | None = None
    max_connection_duration: str | None = None
    request_headers_timeout: str | None = None

    def check(self, v: Violations, path: str) -> None:
        if require_some(v, path, self, ("request_timeout", "stream_idle_timeout", "max_stream_duration",
                                        "max_connection_duration", "request_headers_timeout")):
            for f in ("request_timeout", "stream_idle_timeout", "max_stream_duration", "max_connection_duration",
                      "request_headers_timeout"):
                check_duration(v, f"{path}.{camel(f)}", getattr(self, f))


class Conf(Spec):
    connection_timeout: str | None = None
    idle_timeout: str | None = None
    http: Http | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, ("connection_timeout", "idle_timeout", "http"),
                            "configure at least one timeout: connectionTimeout, idleTimeout or http"):
            return
        check_duration(v, f"{path}.connectionTimeout", self.connection_timeout, allow_zero=False)
        check_duration(v, f"{path}.idleTimeout", self.idle_timeout)
        if self.http is not None:
            self.http.check(v, f"{path}.http")

    def check_for_route(self, v: Violations, path: str) -> None:
        for f in ("connection_timeout", "idle_timeout"):
            if getattr(self, f) is not None:
                v.add(f"{path}.{camel(f)}", ROUTE_ONLY)
        if self.http is not None:
            for f in ("max_stream_duration", "max_connection_duration"):
                if getattr(self.http, f) is not None:
                    v.add(f"{path}.http.{camel(f)}", ROUTE_ONLY)


class MeshTimeoutSpec(Spec):
    target_ref: TargetRef | None = None
    from_: list[Item[Conf]] | None = Field(default=None, alias="from")
    to: list[Item[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        top = effective_target_ref(self.target_ref).kind
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_KINDS, policy=POLICY,
                        inbound=bool(self.from_), listener_tags=True)
        if not self.from_ and not self.to:
            v.add(path, "at least one of 'from' or 'to' must have an item")
        if self.from_ and top in (MESH_GATEWAY, MESH_HTTP_ROUTE):
            v.add(f"{path}.from", f"cannot be used with a top-level {top}: use 'to'")
        for i, item in enumerate(self.from_ or ()):
            p = f"{path}.from[{i}]"
            check_target_ref(v, f"{p}.targetRef", item.target_ref, allowed=(MESH,),
                             where=f"spec.from[].targetRef of {POLICY}", inbound=True)
            item.default.check(v, f"{p}.default")
        to_kinds = (MESH,) if top in (MESH_GATEWAY, MESH_HTTP_ROUTE) else (MESH, MESH_SERVICE, MESH_HTTP_ROUTE)
        for i, item in enumerate(self.to or ()):
            p = f"{path}.to[{i}]"
            check_target_ref(v, f"{p}.targetRef", item.target_ref, allowed=to_kinds,
                             where=f"spec.to[].targetRef of {POLICY}" +
                                   (f" under a top-level {top}" if len(to_kinds) == 1 else ""))
            item.default.check(v, f"{p}.default")
            if top == MESH_HTTP_ROUTE or item.target_ref.kind == MESH_HTTP_ROUTE:
                item.default.check_for_route(v, f"{p}.default")


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshtimeouts", singular="meshtimeout", scope=Scope.MESH, spec_cls=MeshTimeoutSpec,
    flat=False, is_policy=True,
    description="Connection, idle and HTTP timeouts for inbound and outbound traffic.",
))

# --- Envoy effect -----------------------------------------------------------------------------------
# The xDS issue adds here how merged MeshTimeout confs set cluster, listener (HCM) and route timeouts.
