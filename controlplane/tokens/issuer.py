"""Issuing tokens: RS256 JWTs signed with the newest signing key of their kind, `kid` = its serial.

Claims follow Kuma so its tools and docs read true: registered `exp`, `iat`, `nbf` (5 minutes before `iat`,
Kuma's allowance for clock skew between control planes), `jti` (a UUID: what revocation takes), then
- dataplane: `Name` ("" = any), `Mesh`, `Tags` (tag -> list of allowed values), `Type`
  (dataplane|ingress|egress);
- zone: `Zone`, `Scope` (list of cp|ingress|egress);
- user: `Name`, `Groups`.

Validity (Kuma's defaults): dataplane and zone tokens default to 10 years when no `valid_for` is given; user
tokens must say how long they are valid (kumactl generate user-token --valid-for). Every `valid_for` must be
positive and at most `MAX_VALID_FOR` (10 years).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

import jwt

from controlplane.resources.errors import InvalidParameter, Violations
from controlplane.resources.fields import check_key, check_name
from controlplane.store.base import ResourceStore

from .claims import PROXY_TYPES, ZONE_SCOPES
from .errors import TokenRequestError
from .keys import SigningKeys
from .kinds import TokenKind

log = logging.getLogger("kuma.tokens")

ALGORITHM = "RS256"
DEFAULT_VALID_FOR = timedelta(days=3650)  # Kuma: 24h * 365 * 10 for dataplane and zone tokens
MAX_VALID_FOR = timedelta(days=3650)
NOT_BEFORE_SKEW = timedelta(minutes=5)


def check_valid_for(v: Violations, valid_for: Any) -> int:
    """`valid_for` in whole seconds (rounded up), recording a violation under `validFor` if it is wrong."""
    if not isinstance(valid_for, timedelta):
        v.add("validFor", f"must be a duration (e.g. 24h), not {type(valid_for).__name__}")
        return 0
    if valid_for <= timedelta(0):
        v.add("validFor", f"must be greater than zero (got {valid_for})")
        return 0
    if valid_for > MAX_VALID_FOR:
        v.add("validFor", f"must be at most {MAX_VALID_FOR.days} days (10 years), got {valid_for}")
        return 0
    seconds = valid_for.total_seconds()
    return int(seconds) + (0 if seconds == int(seconds) else 1)


def _raise(v: Violations, what: str) -> None:
    if v:
        details = "; ".join(f"{p.field}: {p.reason}" for p in v.items)
        raise TokenRequestError(f"cannot issue a {what} token: {details}", v.items)


def _string_list(v: Violations, path: str, values: Any) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        v.add(path, "must be a list of strings")
        return []
    out: list[str] = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value or value != value.strip():
            v.add(f"{path}[{i}]", f"{value!r} must be a non-empty string without surrounding whitespace")
        elif value not in out:
            out.append(value)
    return out


class TokenIssuer:
    def __init__(self, store: ResourceStore, keys: SigningKeys | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.keys = keys or SigningKeys(store)
        self._clock = clock

    async def _sign(self, kind: TokenKind, mesh: str, claims: dict[str, Any], valid_for_s: int) -> str:
        key = await self.keys.latest_or_create(kind, mesh)
        now = int(self._clock())
        payload = {
            **claims,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now - int(NOT_BEFORE_SKEW.total_seconds()),
            "exp": now + valid_for_s,
        }
        token = jwt.encode(payload, key.private_key, algorithm=ALGORITHM, headers={"kid": str(key.serial)})
        log.info("token issued", extra={"kind": kind.value, "mesh": mesh, "kid": str(key.serial),
                                        "jti": payload["jti"], "valid_for_s": valid_for_s})
        return token

    async def issue_dataplane_token(self, mesh: str, name: str | None = None,
                                    tags: Mapping[str, str | Iterable[str]] | None = None,
                                    type: str = "dataplane",
                                    valid_for: timedelta = DEFAULT_VALID_FOR) -> str:
        """A token for dataplanes of `mesh`, optionally bound to one dataplane `name` and to tag values
        (`{"kuma.io/service": ["web", "web-api"]}`); signed by the mesh's own signing key."""
        v = Violations()
        if not isinstance(mesh, str) or not mesh:
            v.add("mesh", "cannot be empty")
        else:
            check_name(v, "mesh", mesh, label=True)
        if name is not None and name != "":
            if not isinstance(name, str):
                v.add("name", "must be a string")
            else:
                check_name(v, "name", name)
        if type not in PROXY_TYPES:
            v.add("type", f"{type!r} is not a valid proxy type: use one of {', '.join(PROXY_TYPES)}")
        token_tags: dict[str, list[str]] = {}
        if tags is not None:
            if not isinstance(tags, Mapping):
                v.add("tags", "must be a map of tag name to a list of values")
            else:
                for key, values in tags.items():
                    path = f'tags["{key}"]'
                    if not isinstance(key, str):
                        v.add("tags", f"tag name {key!r} must be a string")
                        continue
                    check_key(v, path, key)
                    before = len(v.items)
                    listed = _string_list(v, path, [values] if isinstance(values, str) else values)
                    if not listed and len(v.items) == before:
                        v.add(path, "needs at least one value")
                    token_tags[key] = listed
        valid_for_s = check_valid_for(v, valid_for)
        _raise(v, "dataplane")
        return await self._sign(TokenKind.DATAPLANE, mesh, {
            "Name": name or "", "Mesh": mesh, "Tags": token_tags, "Type": type,
        }, valid_for_s)

    async def issue_zone_token(self, zone: str, scope: Iterable[str] | None = None,
                               valid_for: timedelta = DEFAULT_VALID_FOR) -> str:
        """A token that proves a zone's identity, for the given scopes (default: all of cp, ingress, egress)."""
        v = Violations()
        if not isinstance(zone, str) or not zone:
            v.add("zone", "cannot be empty")
        else:
            check_name(v, "zone", zone, label=True)
        scopes = list(ZONE_SCOPES) if scope is None else _string_list(v, "scope", scope)
        for i, s in enumerate(scopes):
            if s not in ZONE_SCOPES:
                v.add(f"scope[{i}]", f"{s!r} is not a zone token scope: use any of {', '.join(ZONE_SCOPES)}")
        if scope is not None and not scopes and not v:
            v.add("scope", f"cannot be empty: use any of {', '.join(ZONE_SCOPES)}, or leave it out for all")
        valid_for_s = check_valid_for(v, valid_for)
        _raise(v, "zone")
        return await self._sign(TokenKind.ZONE, "", {"Zone": zone, "Scope": scopes}, valid_for_s)

    async def issue_user_token(self, name: str, groups: Iterable[str], valid_for: timedelta) -> str:
        """A token for an API user; `valid_for` has no default (as in Kuma)."""
        v = Violations()
        if not isinstance(name, str) or not name.strip():
            v.add("name", "cannot be empty")
        elif name != name.strip():
            v.add("name", "cannot start or end with whitespace")
        group_list = _string_list(v, "groups", groups if groups is not None else [])
        if valid_for is None:
            v.items.append(InvalidParameter("validFor", "cannot be empty: say how long the token is valid, "
                                                        "e.g. 24h"))
            valid_for_s = 0
        else:
            valid_for_s = check_valid_for(v, valid_for)
        _raise(v, "user")
        return await self._sign(TokenKind.USER, "", {"Name": name, "Groups": group_list}, valid_for_s)
