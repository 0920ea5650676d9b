"""What a validated token says, as typed values (the JWT claim names are Kuma's: `Name`, `Mesh`, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Dataplane token `Type` values (Kuma's ProxyType). "" in a token means "dataplane", as in Kuma.
PROXY_TYPES = ("dataplane", "ingress", "egress")

# Zone token scopes: "cp" lets a zone control plane connect to global over KDS; "ingress" and "egress" let
# zone proxies connect to their zone control plane.
ZONE_SCOPES = ("cp", "ingress", "egress")


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    jti: str  # the token's ID: what `revoke()` takes
    key_serial: int  # the `kid` header: serial number of the signing key
    issued_at: datetime
    not_before: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class DataplaneClaims(Claims):
    mesh: str
    name: str = ""  # "": any dataplane name in the mesh
    # tag -> allowed values; empty: any tags. See validator.verify_dataplane_identity.
    tags: dict[str, list[str]] = field(default_factory=dict)
    type: str = "dataplane"


@dataclass(frozen=True, slots=True, kw_only=True)
class ZoneClaims(Claims):
    zone: str
    scope: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserClaims(Claims):
    name: str
    groups: list[str] = field(default_factory=list)
