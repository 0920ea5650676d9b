"""Revoked token IDs (`jti`), kept as Kuma keeps them: one (Global)Secret per kind whose data is the IDs
separated by commas (`id1,id2`); newlines are accepted as separators too, so an operator can write the
secret from a file with one ID a line.

Revoking one leaked token is lighter than rotating the signing key (which invalidates every token it
signed). The list is read on every validation (parsed once per content), so a revocation takes effect on the
next connection without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re

from controlplane.resources.base import Meta, Resource
from controlplane.resources.secret import SecretSpec
from controlplane.store.base import AlreadyExists, Conflict, NotFound, ResourceStore

from .errors import TokenRequestError
from .kinds import TokenKind, as_kind, check_mesh, describe_secret, revocations_name

log = logging.getLogger("kuma.tokens")

MAX_ATTEMPTS = 20
_SEPARATORS = re.compile(r"[,\r\n]+")
_JTI = re.compile(r"^[^\s,]{1,256}$")


def parse_revocations(data: bytes) -> list[str]:
    """IDs in file order, without blanks or duplicates."""
    text = data.decode("utf-8", errors="replace")
    seen: dict[str, None] = {}
    for part in _SEPARATORS.split(text):
        part = part.strip()
        if part:
            seen.setdefault(part, None)
    return list(seen)


def format_revocations(ids: list[str]) -> bytes:
    return ",".join(ids).encode()


class Revocations:
    def __init__(self, store: ResourceStore) -> None:
        self._store = store
        self._cache: dict[tuple[TokenKind, str], tuple[str, frozenset[str]]] = {}

    async def revoked(self, kind: TokenKind, mesh: str = "") -> frozenset[str]:
        mesh = check_mesh(kind, mesh)
        name = revocations_name(kind, mesh)
        try:
            secret = await self._store.get(kind.secret_type, name, mesh)
        except NotFound:
            self._cache.pop((kind, mesh), None)
            return frozenset()
        assert isinstance(secret.spec, SecretSpec)
        cached = self._cache.get((kind, mesh))
        if cached is not None and cached[0] == secret.spec.data:
            return cached[1]
        ids = frozenset(parse_revocations(secret.spec.value()))
        self._cache[(kind, mesh)] = (secret.spec.data, ids)
        return ids

    async def is_revoked(self, kind: TokenKind, jti: str, mesh: str = "") -> bool:
        return jti in await self.revoked(kind, mesh)

    async def revoke(self, kind: TokenKind, jti: str, mesh: str | None = None) -> bool:
        """Add `jti` to the kind's revocation list; False if it was already there.

        Read-modify-write with optimistic concurrency: a concurrent revoke (Conflict, or AlreadyExists when
        both create the list) makes us read again and retry, so no revocation is lost.
        """
        mesh = check_mesh(kind, mesh)
        if not isinstance(jti, str) or not _JTI.match(jti):
            raise TokenRequestError(f"token ID {jti!r} is not valid: pass the token's `jti` claim (it contains "
                                    "no whitespace or commas)")
        name = revocations_name(kind, mesh)
        rtype = kind.secret_type
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.005 * attempt))
            try:
                current = await self._store.get(rtype, name, mesh)
            except NotFound:
                try:
                    await self._store.create(Resource(rtype, Meta(name=name, mesh=mesh),
                                                      SecretSpec.of(format_revocations([jti]))))
                except AlreadyExists:
                    continue
                break
            assert isinstance(current.spec, SecretSpec)
            ids = parse_revocations(current.spec.value())
            if jti in ids:
                return False
            try:
                await self._store.update(Resource(rtype, current.meta,
                                                  SecretSpec.of(format_revocations([*ids, jti]))))
            except (Conflict, NotFound):
                continue
            break
        else:
            raise Conflict(f"could not update {describe_secret(kind, name, mesh)}: it kept changing during "
                           f"{MAX_ATTEMPTS} attempts; try again")
        log.info("token revoked", extra={"kind": kind.value, "mesh": mesh, "jti": jti, "secret": name})
        return True


async def revoke(store: ResourceStore, kind: TokenKind | str, jti: str, mesh: str | None = None) -> bool:
    """Revoke one token by its ID (`jti`); see `Revocations.revoke`."""
    return await Revocations(store).revoke(as_kind(kind), jti, mesh)
