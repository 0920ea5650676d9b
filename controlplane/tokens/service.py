"""One object per control plane for everything token-related (what the API layer and xDS hold)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta

from controlplane.store.base import ResourceStore

from .claims import DataplaneClaims, UserClaims, ZoneClaims
from .issuer import DEFAULT_VALID_FOR, TokenIssuer
from .keys import SigningKey, SigningKeys
from .kinds import TokenKind, as_kind, check_mesh
from .revocation import Revocations
from .users import ensure_admin_user_token
from .validator import TokenValidator


class TokenService:
    """Issuer, validator, revocation and key rotation over one store, sharing one key cache."""

    def __init__(self, store: ResourceStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys = SigningKeys(store)
        self.revocations = Revocations(store)
        self.issuer = TokenIssuer(store, self.keys, clock)
        self.validator = TokenValidator(store, self.keys, self.revocations, clock)

    async def issue_dataplane_token(self, mesh: str, name: str | None = None,
                                    tags: Mapping[str, str | Iterable[str]] | None = None,
                                    type: str = "dataplane", valid_for: timedelta = DEFAULT_VALID_FOR) -> str:
        return await self.issuer.issue_dataplane_token(mesh, name, tags, type, valid_for)

    async def issue_zone_token(self, zone: str, scope: Iterable[str] | None = None,
                               valid_for: timedelta = DEFAULT_VALID_FOR) -> str:
        return await self.issuer.issue_zone_token(zone, scope, valid_for)

    async def issue_user_token(self, name: str, groups: Iterable[str], valid_for: timedelta) -> str:
        return await self.issuer.issue_user_token(name, groups, valid_for)

    async def validate_dataplane_token(self, token: str, mesh: str) -> DataplaneClaims:
        return await self.validator.validate_dataplane_token(token, mesh)

    async def validate_zone_token(self, token: str) -> ZoneClaims:
        return await self.validator.validate_zone_token(token)

    async def validate_user_token(self, token: str) -> UserClaims:
        return await self.validator.validate_user_token(token)

    async def revoke(self, kind: TokenKind | str, jti: str, mesh: str | None = None) -> bool:
        return await self.revocations.revoke(as_kind(kind), jti, mesh)

    async def rotate_signing_key(self, kind: TokenKind | str, mesh: str | None = None) -> SigningKey:
        k = as_kind(kind)
        return await self.keys.rotate(k, check_mesh(k, mesh))

    async def ensure_admin_user_token(self) -> tuple[str, bool]:
        return await ensure_admin_user_token(self.store, self.issuer)
