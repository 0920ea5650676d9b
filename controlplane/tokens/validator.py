"""Validating tokens, and checking that a valid token fits what it is used for.

Order of checks (each failure is a `TokenError` subclass naming the problem and the fix):
1. shape: a JWT at all (MalformedToken);
2. header: `alg` exactly RS256 (UnsupportedAlgorithm: `none`, HS256 - including HS256 "signed" with our public
   key as the HMAC secret - and everything else are refused before any key is read); `kid` present and a
   signing key serial number (MissingKeyId);
3. the signing key named by `kid` exists for this kind (and mesh) (SigningKeyNotFound);
4. signature (InvalidSignature), required claims `exp`, `iat`, `nbf`, `jti` (MalformedToken);
5. time: `exp` in the past (TokenExpired), `nbf` in the future (TokenNotYetValid);
6. the claims' types (MalformedToken) and, for dataplane tokens, the mesh (IdentityMismatch);
7. the revocation list (TokenRevoked).

Store errors propagate unchanged (the caller answers "unavailable", not "unauthenticated").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Set
from datetime import UTC, datetime
from typing import Any, TypeVar

import jwt

from controlplane.store.base import ResourceStore

from .claims import PROXY_TYPES, Claims, DataplaneClaims, UserClaims, ZoneClaims
from .errors import (
    IdentityMismatch,
    InvalidSignature,
    MalformedToken,
    MissingKeyId,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    TokenRevoked,
    UnsupportedAlgorithm,
)
from .issuer import ALGORITHM
from .keys import SigningKeys
from .kinds import TokenKind, check_mesh, signing_key_name
from .revocation import Revocations

log = logging.getLogger("kuma.tokens")

MAX_TOKEN_LENGTH = 16 * 1024
_REQUIRED = ["exp", "iat", "nbf", "jti"]
ClaimsT = TypeVar("ClaimsT", bound=Claims)


def _fix(kind: TokenKind, mesh: str) -> str:
    return f"{kind.generate_command} --mesh {mesh}" if kind.mesh_scoped else kind.generate_command


def _time(value: Any) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _iso(value: float) -> str:
    return _time(value).isoformat().replace("+00:00", "Z")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TokenValidator:
    """Validates tokens against the signing keys and revocation lists in one store.

    Keep one instance per control plane: parsed keys are cached (see `keys.SigningKeys`), which matters
    because every xDS stream open validates a token.
    """

    def __init__(self, store: ResourceStore, keys: SigningKeys | None = None,
                 revocations: Revocations | None = None, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.keys = keys or SigningKeys(store)
        self.revocations = revocations or Revocations(store)
        self._clock = clock

    async def validate_dataplane_token(self, token: str, mesh: str) -> DataplaneClaims:
        """Claims of a dataplane token presented by a dataplane of `mesh` (checked against that mesh's
        keys). Then call `verify_dataplane_identity` with the dataplane's name and tags."""
        mesh = check_mesh(TokenKind.DATAPLANE, mesh)

        def same_mesh(payload: Mapping[str, Any]) -> None:
            claimed = payload.get("Mesh")
            if isinstance(claimed, str) and claimed and claimed != mesh:
                raise IdentityMismatch(f"the token was issued for mesh {claimed!r} but is used in mesh {mesh!r}: "
                                       f"generate a token for this mesh with {_fix(TokenKind.DATAPLANE, mesh)}")

        payload, base = await self._verify(TokenKind.DATAPLANE, token, mesh, same_mesh)
        return await self._finish(TokenKind.DATAPLANE, mesh, base, lambda: DataplaneClaims(
            mesh=_str(payload, "Mesh", required=True),
            name=_str(payload, "Name"),
            tags=_tags(payload),
            type=_proxy_type(payload),
            **base,
        ), same_mesh, payload)

    async def validate_zone_token(self, token: str) -> ZoneClaims:
        payload, base = await self._verify(TokenKind.ZONE, token, "", None)
        return await self._finish(TokenKind.ZONE, "", base, lambda: ZoneClaims(
            zone=_str(payload, "Zone", required=True),
            scope=_str_list(payload, "Scope"),
            **base,
        ), None, payload)

    async def validate_user_token(self, token: str) -> UserClaims:
        payload, base = await self._verify(TokenKind.USER, token, "", None)
        return await self._finish(TokenKind.USER, "", base, lambda: UserClaims(
            name=_str(payload, "Name", required=True),
            groups=_str_list(payload, "Groups"),
            **base,
        ), None, payload)

    async def _finish(self, kind: TokenKind, mesh: str, base: dict[str, Any], build: Callable[[], ClaimsT],
                      check: Callable[[Mapping[str, Any]], None] | None, payload: Mapping[str, Any]) -> ClaimsT:
        try:
            claims = build()
            if check is not None:
                check(payload)
            if await self.revocations.is_revoked(kind, claims.jti, mesh):
                raise TokenRevoked(f"the token {claims.jti} is revoked: generate a new one with {_fix(kind, mesh)}")
        except TokenError as e:
            _log_rejection(kind, mesh, str(base["key_serial"]), e)
            raise
        log.debug("token accepted", extra={"kind": kind.value, "mesh": mesh, "kid": str(base["key_serial"]),
                                           "jti": claims.jti})
        return claims

    async def _verify(self, kind: TokenKind, token: Any, mesh: str,
                      peek: Callable[[Mapping[str, Any]], None] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        seen_kid: list[str] = []
        try:
            payload, serial = await self._verify_signed(kind, token, mesh, peek, seen_kid)
            base = self._check_times(kind, mesh, payload)
            base["key_serial"] = serial
            return payload, base
        except TokenError as e:
            _log_rejection(kind, mesh, seen_kid[0] if seen_kid else "", e)
            raise

    async def _verify_signed(self, kind: TokenKind, token: Any, mesh: str,
                             peek: Callable[[Mapping[str, Any]], None] | None,
                             seen_kid: list[str]) -> tuple[dict[str, Any], int]:
        fix = _fix(kind, mesh)
        if not isinstance(token, str | bytes):
            raise MalformedToken(f"the token must be a string, not {type(token).__name__}")
        text = token.decode("utf-8", errors="replace") if isinstance(token, bytes) else token
        text = text.strip()
        if not text:
            raise MalformedToken(f"the token is empty: pass the token that {fix} printed")
        if len(text) > MAX_TOKEN_LENGTH:
            raise MalformedToken(f"the token is {len(text)} characters long, more than any token we issue "
                                 f"({MAX_TOKEN_LENGTH}): pass the token that {fix} printed")
        try:
            header = jwt.get_unverified_header(text)
        except jwt.InvalidTokenError as e:
            raise MalformedToken(f"the token is not a JWT ({e}): pass the whole token that {fix} printed, "
                                 "three base64url parts separated by '.'") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise UnsupportedAlgorithm(f"the token is signed with {alg!r}, but only {ALGORITHM} is accepted: "
                                       f"generate a new token with {fix}")
        kid = header.get("kid")
        if kid is None:
            raise MissingKeyId(f"the token has no 'kid' header naming its signing key: generate a new token "
                               f"with {fix}")
        if not isinstance(kid, str) or not kid.isascii() or not kid.isdigit() or len(kid) > 9:
            raise MissingKeyId(f"the token's 'kid' header {kid!r} is not a signing key serial number: generate "
                               f"a new token with {fix}")
        serial = int(kid)
        seen_kid.append(kid)
        if peek is not None:
            try:
                unverified = jwt.decode(text, options={"verify_signature": False})
            except jwt.InvalidTokenError:
                unverified = {}
            peek(unverified)
        key = await self.keys.get(kind, serial, mesh)
        try:
            payload: dict[str, Any] = jwt.decode(
                text, key.public_key, algorithms=[ALGORITHM],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": _REQUIRED},
            )
        except jwt.InvalidSignatureError:
            raise InvalidSignature(
                f"the token's signature does not match signing key {signing_key_name(kind, serial, mesh)}: the "
                f"token was altered or issued by another control plane; generate a new one with {fix}"
            ) from None
        except jwt.MissingRequiredClaimError as e:
            raise MalformedToken(f"the token has no {e.claim!r} claim, which every token we issue has: "
                                 f"generate a new one with {fix}") from None
        except jwt.InvalidTokenError as e:
            raise MalformedToken(f"the token is not valid ({e}): generate a new one with {fix}") from None
        return payload, serial

    def _check_times(self, kind: TokenKind, mesh: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        fix = _fix(kind, mesh)
        for claim in ("exp", "iat", "nbf"):
            if not _is_number(payload[claim]):
                raise MalformedToken(f"the token's {claim!r} claim {payload[claim]!r} is not a number of seconds: "
                                     f"generate a new token with {fix}")
        jti = payload["jti"]
        if not isinstance(jti, str) or not jti:
            raise MalformedToken(f"the token's 'jti' claim {jti!r} is not a token ID: generate a new token with "
                                 f"{fix}")
        now = self._clock()
        exp, nbf = payload["exp"], payload["nbf"]
        if exp <= now:
            raise TokenExpired(f"the token expired at {_iso(exp)}: generate a new one with {fix}")
        if nbf > now:
            raise TokenNotYetValid(f"the token is not valid before {_iso(nbf)} (now {_iso(now)}): check that the "
                                   "clocks of the control plane and the machine that issued it agree (NTP)")
        try:
            return {"jti": jti, "issued_at": _time(payload["iat"]), "not_before": _time(nbf),
                    "expires_at": _time(exp)}
        except (OverflowError, OSError, ValueError):
            raise MalformedToken(f"the token's times are out of range: generate a new token with {fix}") from None


def _log_rejection(kind: TokenKind, mesh: str, kid: str, e: TokenError) -> None:
    log.info("token rejected", extra={"kind": kind.value, "mesh": mesh, "kid": kid, "reason": type(e).__name__,
                                      "error": str(e)})


def _str(payload: Mapping[str, Any], claim: str, *, required: bool = False) -> str:
    value = payload.get(claim)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise MalformedToken(f"the token's {claim!r} claim is {value!r}, not a non-empty string")
    return value


def _str_list(payload: Mapping[str, Any], claim: str) -> list[str]:
    value = payload.get(claim)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedToken(f"the token's {claim!r} claim is {value!r}, not a list of strings")
    return list(value)


def _tags(payload: Mapping[str, Any]) -> dict[str, list[str]]:
    value = payload.get("Tags")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(vs, list) and all(isinstance(v, str) for v in vs)
            for k, vs in value.items()):
        raise MalformedToken(f"the token's 'Tags' claim is {value!r}, not a map of tag to a list of values")
    return {k: list(vs) for k, vs in value.items()}


def _proxy_type(payload: Mapping[str, Any]) -> str:
    value = _str(payload, "Type") or "dataplane"
    if value not in PROXY_TYPES:
        raise MalformedToken(f"the token's 'Type' claim {value!r} is not one of {', '.join(PROXY_TYPES)}")
    return value


def verify_dataplane_identity(claims: DataplaneClaims, mesh: str, name: str,
                              dataplane_tags: Mapping[str, Set[str]], *, proxy_type: str | None = None) -> None:
    """Check that a valid dataplane token may be used by this dataplane (Kuma's rules):

    - the token's mesh must be the dataplane's mesh;
    - if the token names a dataplane, it must be this one;
    - for every tag in the token, the dataplane must have that tag (on some inbound or its gateway:
      `DataplaneSpec.tags()`), and every value the dataplane has for it must be among the token's values.
      So a dataplane with inbounds `kuma.io/service=web` and `kuma.io/service=web-api` needs a token with
      `kuma.io/service=web,web-api`; tags the token does not mention are not restricted;
    - if `proxy_type` is given, the token's Type must be it (an ingress token cannot run a dataplane).

    Raises IdentityMismatch saying which rule failed and what token would fit.
    """
    fix = f"kumactl generate dataplane-token --mesh {mesh}"
    if claims.mesh != mesh:
        raise IdentityMismatch(f"the token is for mesh {claims.mesh!r} but dataplane {name!r} is in mesh {mesh!r}: "
                               f"generate a token with {fix} --name {name}")
    if claims.name and claims.name != name:
        raise IdentityMismatch(f"the token is for dataplane {claims.name!r}, not {name!r}: generate a token "
                               f"with {fix} --name {name} (or one without --name, bound to tags)")
    if proxy_type is not None and (claims.type or "dataplane") != proxy_type:
        raise IdentityMismatch(f"the token is for proxies of type {claims.type!r}, not {proxy_type!r}: "
                               f"generate a token with {fix} --type {proxy_type}")
    for tag, allowed in sorted(claims.tags.items()):
        values = dataplane_tags.get(tag)
        if not values:
            raise IdentityMismatch(f"dataplane {name!r} has no tag {tag!r}, which the token requires (allowed "
                                   f"values: {', '.join(allowed)}): add the tag to an inbound or generate a token "
                                   "without it")
        for value in sorted(values):
            if value not in allowed:
                wanted = ",".join(sorted(set(allowed) | set(values)))
                raise IdentityMismatch(
                    f"dataplane {name!r} has tag {tag}={value}, which the token does not allow (allowed values: "
                    f"{', '.join(allowed)}): generate a token with {fix} --tag {tag}={wanted}")


def verify_zone_identity(claims: ZoneClaims, zone: str, scope: str) -> None:
    """Check that a valid zone token may be used by `zone` for `scope` (cp: KDS; ingress/egress: zone proxies)."""
    fix = f"kumactl generate zone-token --zone {zone} --scope {scope}"
    if claims.zone != zone:
        raise IdentityMismatch(f"the token is for zone {claims.zone!r}, not {zone!r}: generate a token with {fix}")
    if scope not in claims.scope:
        raise IdentityMismatch(f"the token's scope ({', '.join(claims.scope) or 'none'}) does not include "
                               f"{scope!r}: generate a token with {fix}")
