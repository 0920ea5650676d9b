"""Mesh: a tenant with its own CA, identities and policies."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field

from .base import ResourceType, Scope, Spec, parse_spec_model, register
from .datasource import DataSource
from .errors import Violations
from .fields import check_duration, check_name


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


class Mtls(Spec):
    kuma_unsupported = frozenset({"skipValidation"})

    enabled_backend: str | None = None
    backends: list[MtlsBackend] = []

    def check(self, v: Violations, path: str) -> None:
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


class MeshSpec(Spec):
    kuma_unsupported = frozenset({"tracing", "logging", "metrics", "constraints", "meshServices"})

    mtls: Mtls | None = None
    networking: MeshNetworking | None = None
    routing: Routing | None = None
    # Kuma creates default policies in a new mesh unless told not to ("*" skips all).
    skip_creating_initial_policies: list[str] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.mtls:
            self.mtls.check(v, f"{path}.mtls" if path else "mtls")
        if self.routing is not None and self.routing.zone_egress and not (self.mtls and self.mtls.enabled_backend):
            # Kuma: zone egress identifies the services behind it by their mTLS certificates
            v.add(f"{path}.mtls" if path else "mtls", "has to be set when zoneEgress is enabled: enable mTLS "
                                                      "(mtls.enabledBackend) or turn routing.zoneEgress off")


MESH = register(ResourceType(
    name="Mesh", plural="meshes", singular="mesh", scope=Scope.GLOBAL, spec_cls=MeshSpec, flat=True,
    name_is_label=True,
    description="A service mesh: its CA backends, mTLS mode and defaults.",
))
