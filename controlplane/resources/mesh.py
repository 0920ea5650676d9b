"""Mesh: a tenant with its own CA, identities and policies.

Validation follows Kuma 2.14's mesh_validator.go: at most one mTLS backend (Kuma's open-source limit), unique
backend names, `enabledBackend` naming one of them, zone egress only with mTLS on, and `constraints`
selectors with at least one tag each. `constraints.dataplaneProxy` is enforced when a Dataplane is written
(`membership_refusal`, Kuma's membership validator). The older mesh-wide `logging`, `tracing` and `metrics`
sections are refused with the policy that replaces each.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field

from .base import ResourceType, Scope, Spec, parse_spec_model, register
from .datasource import DataSource
from .errors import Violations
from .fields import check_duration, check_name, check_selector


class Rotation(Spec):
    expiration: str = "24h"


class DpCert(Spec):
    rotation: Rotation | None = None
    request_timeout: str | None = None


class CaCert(Spec):
    rsa_bits: int | None = Field(default=None, alias="RSAbits")  # Kuma's spelling
    expiration: str | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.rsa_bits is not None and self.rsa_bits not in (2048, 3072, 4096):
            v.add(f"{path}.RSAbits", "must be 2048, 3072 or 4096")
        check_duration(v, f"{path}.expiration", self.expiration)


class BuiltinConf(Spec):
    ca_cert: CaCert | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.ca_cert:
            self.ca_cert.check(v, f"{path}.caCert")


class ProvidedConf(Spec):
    cert: DataSource
    key: DataSource

    def check(self, v: Violations, path: str) -> None:
        self.cert.check(v, f"{path}.cert")
        self.key.check(v, f"{path}.key")


_CONF_BY_TYPE: dict[str, type[Spec]] = {"builtin": BuiltinConf, "provided": ProvidedConf}


class MtlsBackend(Spec):
    kuma_unsupported = frozenset({"rootChain"})

    name: str
    type: Literal["builtin", "provided"]
    mode: Literal["STRICT", "PERMISSIVE"] = "STRICT"
    dp_cert: DpCert | None = None
    # Each backend type has its own conf shape (as in Kuma); it is checked against that type's model.
    conf: dict[str, Any] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_name(v, f"{path}.name", self.name)
        if self.dp_cert and self.dp_cert.rotation:
            check_duration(v, f"{path}.dpCert.rotation.expiration", self.dp_cert.rotation.expiration,
                           maximum=timedelta(days=365))
        if self.dp_cert:
            check_duration(v, f"{path}.dpCert.requestTimeout", self.dp_cert.request_timeout)
        if self.type == "provided" and self.conf is None:
            v.add(f"{path}.conf", "is required for a provided CA: give 'cert' and 'key' (secrets with PEM)")
        else:
            parse_spec_model(_CONF_BY_TYPE[self.type], self.conf or {}, f"{path}.conf", v)

    def builtin_conf(self) -> BuiltinConf:
        return BuiltinConf.model_validate(self.conf or {})

    def provided_conf(self) -> ProvidedConf:
        return ProvidedConf.model_validate(self.conf or {})


MAX_MTLS_BACKENDS = 1  # Kuma's AllowedMTLSBackends (open source)


class Mtls(Spec):
    kuma_unsupported = frozenset({"skipValidation"})

    enabled_backend: str | None = None
    backends: list[MtlsBackend] = []

    def check(self, v: Violations, path: str) -> None:
        if len(self.backends) > MAX_MTLS_BACKENDS:
            v.add(f"{path}.backends", f"cannot have more than {MAX_MTLS_BACKENDS} backend (Kuma's limit): keep the "
                                      "one you enable; to change CA, replace it")
        seen: set[str] = set()
        for i, b in enumerate(self.backends):
            b.check(v, f"{path}.backends[{i}]")
            if b.name in seen:
                v.add(f"{path}.backends[{i}].name", f"backend name {b.name!r} is used twice")
            seen.add(b.name)
        if self.enabled_backend and self.enabled_backend not in seen:
            v.add(f"{path}.enabledBackend", f"names backend {self.enabled_backend!r}, which is not among "
                                           "mtls.backends: add it there or fix the name")

    def enabled(self) -> MtlsBackend | None:
        return next((b for b in self.backends if b.name == self.enabled_backend), None)


class Outbound(Spec):
    passthrough: bool | None = None


class MeshNetworking(Spec):
    outbound: Outbound | None = None


class Routing(Spec):
    locality_aware_load_balancing: bool | None = None
    zone_egress: bool | None = None
    default_forbid_mesh_external_service_access: bool | None = None


class ConstraintRule(Spec):
    tags: dict[str, str] = {}

    def check(self, v: Violations, path: str) -> None:
        if not self.tags:
            v.add(f"{path}.tags", "must have at least one tag")
        check_selector(v, f"{path}.tags", self.tags)

    def matches(self, tags: dict[str, str]) -> bool:
        """Kuma's matchTags: every tag of the rule is on the set; a '*' value needs the tag with any value."""
        return all((tags.get(k, "") != "") if want == "*" else tags.get(k) == want for k, want in self.tags.items())


class DataplaneProxyConstraints(Spec):
    requirements: list[ConstraintRule] | None = None
    restrictions: list[ConstraintRule] | None = None

    def check(self, v: Violations, path: str) -> None:
        for name in ("requirements", "restrictions"):
            for i, rule in enumerate(getattr(self, name) or ()):
                rule.check(v, f"{path}.{name}[{i}]")


class Constraints(Spec):
    dataplane_proxy: DataplaneProxyConstraints | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.dataplane_proxy is not None:
            self.dataplane_proxy.check(v, f"{path}.dataplaneProxy")


def _tag_set(tags: dict[str, str]) -> str:
    return " ".join(f"{k}={tags[k]}" for k in sorted(tags))


def membership_refusal(mesh: MeshSpec, mesh_name: str, tag_sets: list[dict[str, str]]) -> str | None:
    """Why a dataplane with these tag sets (one per inbound, or its gateway's) may not join the mesh, or None
    (Kuma's membership validator): each set must match a requirement when there are any, and none of the
    restrictions."""
    rules = mesh.constraints.dataplane_proxy if mesh.constraints else None
    if rules is None:
        return None
    for tags in tag_sets:
        if rules.requirements and not any(r.matches(tags) for r in rules.requirements):
            return (f"dataplane cannot be a member of mesh {mesh_name!r}: its tags '{_tag_set(tags)}' fulfil none "
                    "of the mesh's constraints.dataplaneProxy.requirements")
        denied = next((r for r in rules.restrictions or () if r.matches(tags)), None)
        if denied is not None:
            return (f"dataplane cannot be a member of mesh {mesh_name!r}: its tags '{_tag_set(tags)}' match the "
                    f"restricted tags '{_tag_set(denied.tags)}' of the mesh's constraints.dataplaneProxy")
    return None


class MeshSpec(Spec):
    kuma_unsupported = frozenset({"tracing", "logging", "metrics", "meshServices"})
    # The older mesh-wide sections and the policies that replaced them in Kuma (and exist in kuma-vm).
    kuma_unsupported_fix: ClassVar[dict[str, str]] = {
        "logging": "Kuma's older mesh-wide access logs: use a MeshAccessLog policy instead",
        "tracing": "Kuma's older mesh-wide tracing: use a MeshTrace policy instead",
        "metrics": "Kuma's older mesh-wide metrics: use a MeshMetric policy instead",
    }

    mtls: Mtls | None = None
    constraints: Constraints | None = None
    networking: MeshNetworking | None = None
    routing: Routing | None = None
    # Kuma creates default policies in a new mesh unless told not to ("*" skips all).
    skip_creating_initial_policies: list[str] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.mtls:
            self.mtls.check(v, f"{path}.mtls" if path else "mtls")
        if self.constraints:
            self.constraints.check(v, f"{path}.constraints" if path else "constraints")
        if self.routing is not None and self.routing.zone_egress and not (self.mtls and self.mtls.enabled_backend):
            # Kuma: zone egress identifies the services behind it by their mTLS certificates
            v.add(f"{path}.mtls" if path else "mtls", "has to be set when zoneEgress is enabled: enable mTLS "
                                                      "(mtls.enabledBackend) or turn routing.zoneEgress off")


MESH = register(ResourceType(
    name="Mesh", plural="meshes", singular="mesh", scope=Scope.GLOBAL, spec_cls=MeshSpec, flat=True,
    name_is_label=True,
    description="A service mesh: its CA backends, mTLS mode and defaults.",
))
