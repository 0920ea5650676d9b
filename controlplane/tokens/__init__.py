"""Dataplane, zone and user tokens: RS256 JWTs signed by keys the control plane keeps in its store.

Entry point: one `TokenService(store)` per control plane (it caches parsed keys; validation runs on every xDS
stream open). Modules: `kinds` (names of secrets), `keys` (signing keys, rotation), `issuer`, `validator`
(including `verify_dataplane_identity` / `verify_zone_identity`), `revocation`, `users` (groups, admin).
"""

from __future__ import annotations

from .claims import PROXY_TYPES, ZONE_SCOPES, Claims, DataplaneClaims, UserClaims, ZoneClaims
from .errors import (
    IdentityMismatch,
    InvalidSignature,
    MalformedToken,
    MissingKeyId,
    SigningKeyNotFound,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    TokenRequestError,
    TokenRevoked,
    UnsupportedAlgorithm,
)
from .issuer import DEFAULT_VALID_FOR, MAX_VALID_FOR, TokenIssuer
from .keys import SigningKey, SigningKeys, rotate_signing_key
from .kinds import TokenKind, revocations_name, signing_key_name, signing_key_prefix
from .revocation import Revocations, revoke
from .service import TokenService
from .users import ADMIN_GROUP, AUTHENTICATED_GROUP, UNAUTHENTICATED_GROUP, effective_groups, is_admin
from .validator import TokenValidator, verify_dataplane_identity, verify_zone_identity

__all__ = [
    "ADMIN_GROUP", "AUTHENTICATED_GROUP", "DEFAULT_VALID_FOR", "MAX_VALID_FOR", "PROXY_TYPES",
    "UNAUTHENTICATED_GROUP", "ZONE_SCOPES", "Claims", "DataplaneClaims", "IdentityMismatch", "InvalidSignature",
    "MalformedToken", "MissingKeyId", "Revocations", "SigningKey", "SigningKeyNotFound", "SigningKeys",
    "TokenError", "TokenExpired", "TokenIssuer", "TokenKind", "TokenNotYetValid", "TokenRequestError",
    "TokenRevoked", "TokenService", "TokenValidator", "UnsupportedAlgorithm", "UserClaims", "ZoneClaims",
    "effective_groups", "is_admin", "revocations_name", "revoke", "rotate_signing_key", "signing_key_name",
    "signing_key_prefix", "verify_dataplane_identity", "verify_zone_identity",
]
