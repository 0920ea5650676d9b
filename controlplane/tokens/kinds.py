"""The three kinds of token and where each keeps its signing keys and revocation list (Kuma's names).

| kind      | signing keys                                        | revocations                                |
|-----------|-----------------------------------------------------|--------------------------------------------|
| dataplane | Secret `dataplane-token-signing-key-<mesh>-<serial>` | Secret `dataplane-token-revocations-<mesh>` |
|           | in that mesh                                        | in that mesh                               |
| zone      | GlobalSecret `zone-token-signing-key-<serial>`      | GlobalSecret `zone-token-revocations`      |
| user      | GlobalSecret `user-token-signing-key-<serial>`      | GlobalSecret `user-token-revocations`      |
"""

from __future__ import annotations

from enum import StrEnum

from controlplane.resources.base import ResourceType
from controlplane.resources.secret import GLOBAL_SECRET, SECRET

from .errors import TokenRequestError


class TokenKind(StrEnum):
    DATAPLANE = "dataplane"
    ZONE = "zone"
    USER = "user"

    @property
    def mesh_scoped(self) -> bool:
        return self is TokenKind.DATAPLANE

    @property
    def secret_type(self) -> ResourceType:
        return SECRET if self.mesh_scoped else GLOBAL_SECRET

    @property
    def generate_command(self) -> str:
        """The kumactl command that makes a new token of this kind (for error messages)."""
        return f"kumactl generate {self.value}-token"


def check_mesh(kind: TokenKind, mesh: str | None) -> str:
    """The mesh a kind's secrets live in: required for dataplane tokens, "" (no mesh) for the others."""
    if kind.mesh_scoped:
        if not mesh:
            raise TokenRequestError(f"{kind.value} tokens belong to a mesh: pass the mesh name")
        return mesh
    if mesh:
        raise TokenRequestError(f"{kind.value} tokens are global, not bound to a mesh: do not pass a mesh "
                                f"(got {mesh!r})")
    return ""


def signing_key_prefix(kind: TokenKind, mesh: str = "") -> str:
    if kind is TokenKind.DATAPLANE:
        return f"dataplane-token-signing-key-{check_mesh(kind, mesh)}"
    check_mesh(kind, mesh)
    return f"{kind.value}-token-signing-key"


def signing_key_name(kind: TokenKind, serial: int, mesh: str = "") -> str:
    return f"{signing_key_prefix(kind, mesh)}-{serial}"


def revocations_name(kind: TokenKind, mesh: str = "") -> str:
    if kind is TokenKind.DATAPLANE:
        return f"dataplane-token-revocations-{check_mesh(kind, mesh)}"
    check_mesh(kind, mesh)
    return f"{kind.value}-token-revocations"


def describe_secret(kind: TokenKind, name: str, mesh: str = "") -> str:
    return f"Secret {name!r} in mesh {mesh!r}" if kind.mesh_scoped else f"GlobalSecret {name!r}"


def as_kind(kind: TokenKind | str) -> TokenKind:
    try:
        return TokenKind(kind)
    except ValueError:
        raise TokenRequestError(f"unknown token kind {kind!r}: use one of "
                                f"{', '.join(k.value for k in TokenKind)}") from None
