"""Mesh certificate authorities and dataplane identity certificates.

Entry points (one of each per control plane): `CaManager(store)` — the CA of a mesh's enabled backend
(`get_ca`), builtin CAs created on first use, provided CAs loaded and checked, `validate_backend` for the API;
`IdentityCache(ca_manager)` — each dataplane's identity certificate, reissued only when due. Modules:
`builtin` (secret names, creation, race safety), `provided` (DataSources), `material` (checks shared by both),
`manager`, `identity` (`issue_identity`, `lifetime_for`), `errors`.
"""

from __future__ import annotations

from .builtin import cert_secret_name, key_secret_name
from .errors import (
    CaCorrupted,
    CaError,
    CaExpired,
    CaInvalidPem,
    CaKeyMismatch,
    CaNotACertificateAuthority,
    CaSourceNotFound,
    CaUnsupportedKey,
    IdentityError,
)
from .identity import (
    DEFAULT_LIFETIME,
    IdentityCache,
    IdentityCert,
    issue_identity,
    kuma_uri,
    lifetime_for,
    spiffe_id,
)
from .manager import CaManager, MeshCa, enabled_backend, used_secrets

__all__ = [
    "DEFAULT_LIFETIME", "CaCorrupted", "CaError", "CaExpired", "CaInvalidPem", "CaKeyMismatch", "CaManager",
    "CaNotACertificateAuthority", "CaSourceNotFound", "CaUnsupportedKey", "IdentityCache", "IdentityCert",
    "IdentityError", "MeshCa", "cert_secret_name", "enabled_backend", "issue_identity", "key_secret_name",
    "kuma_uri", "lifetime_for", "spiffe_id", "used_secrets",
]
