"""Token signing keys: RSA 2048 private keys (PKCS#1 PEM, as Kuma stores them) kept in (Global)Secrets.

A key's name ends in its serial number (`user-token-signing-key-1`); tokens carry the serial as `kid`, so a
token is checked against exactly one key. New tokens are signed with the highest serial. Rotation adds
serial+1; tokens signed by older keys stay valid until their key's secret is deleted.

The first key is created on first use. Two control planes on one store may both try: the store's
AlreadyExists settles it (one wins, the other re-reads and signs with the winner's key), so one serial never
names two keys.

Parsed keys are cached by (kind, mesh, serial) together with the secret's data they were parsed from; every
lookup still reads the secret (cheap), so a deleted or replaced key takes effect on the next validation.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from controlplane.resources.base import Meta, Resource
from controlplane.resources.secret import SecretSpec
from controlplane.store.base import AlreadyExists, ListQuery, NotFound, ResourceStore

from .errors import SigningKeyNotFound
from .kinds import TokenKind, as_kind, check_mesh, describe_secret, signing_key_name, signing_key_prefix

log = logging.getLogger("kuma.tokens")

RSA_KEY_BITS = 2048
DEFAULT_SERIAL = 1


def generate_signing_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def load_signing_key(data: bytes, where: str) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (PKCS#1 or PKCS#8); `where` names the secret for the error message."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyNotFound(f"{where} does not hold a PEM private key ({e}): delete it and rotate the "
                                 "signing key") from e
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < RSA_KEY_BITS:
        raise SigningKeyNotFound(f"{where} does not hold an RSA key of at least {RSA_KEY_BITS} bits: delete it "
                                 "and rotate the signing key")
    return key


def parse_serial(name: str, prefix: str) -> int | None:
    """The serial number of a signing key secret named `<prefix>-<serial>`, else None."""
    if not name.startswith(prefix + "-"):
        return None
    rest = name[len(prefix) + 1:]
    return int(rest) if rest.isascii() and rest.isdigit() else None


@dataclass(frozen=True, slots=True)
class SigningKey:
    kind: TokenKind
    mesh: str
    serial: int
    private_key: rsa.RSAPrivateKey

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()


class SigningKeys:
    """Reads, creates and rotates signing keys in one store; shared by the issuer and the validator."""

    def __init__(self, store: ResourceStore) -> None:
        self._store = store
        # (kind, mesh, serial) -> (secret data it was parsed from, key)
        self._cache: dict[tuple[TokenKind, str, int], tuple[str, SigningKey]] = {}
        self._locks: dict[tuple[TokenKind, str], asyncio.Lock] = {}

    def _parsed(self, kind: TokenKind, mesh: str, serial: int, secret: Resource) -> SigningKey:
        assert isinstance(secret.spec, SecretSpec)
        cache_key = (kind, mesh, serial)
        cached = self._cache.get(cache_key)
        if cached is not None and cached[0] == secret.spec.data:
            return cached[1]
        where = describe_secret(kind, secret.meta.name, mesh)
        key = SigningKey(kind, mesh, serial, load_signing_key(secret.spec.value(), where))
        self._cache[cache_key] = (secret.spec.data, key)
        return key

    async def serials(self, kind: TokenKind, mesh: str = "") -> list[int]:
        """Serial numbers of every signing key of a kind (in a mesh), ascending."""
        return sorted(s for s, _ in await self._list(kind, mesh))

    async def _list(self, kind: TokenKind, mesh: str) -> list[tuple[int, Resource]]:
        mesh = check_mesh(kind, mesh)
        prefix = signing_key_prefix(kind, mesh)
        found = await self._store.list(kind.secret_type, ListQuery(mesh=mesh, name_prefix=prefix + "-"))
        out = []
        for r in found.items:
            serial = parse_serial(r.meta.name, prefix)
            if serial is not None:
                out.append((serial, r))
        return out

    async def get(self, kind: TokenKind, serial: int, mesh: str = "") -> SigningKey:
        """The key with this serial; SigningKeyNotFound if its secret does not exist."""
        mesh = check_mesh(kind, mesh)
        name = signing_key_name(kind, serial, mesh)
        try:
            secret = await self._store.get(kind.secret_type, name, mesh)
        except NotFound:
            self._cache.pop((kind, mesh, serial), None)
            raise SigningKeyNotFound(
                f"there is no {kind.value} token signing key with serial number {serial} "
                f"({describe_secret(kind, name, mesh)} does not exist): if the signing key was rotated, "
                f"generate a new token with {kind.generate_command}"
            ) from None
        return self._parsed(kind, mesh, serial, secret)

    async def latest(self, kind: TokenKind, mesh: str = "") -> SigningKey | None:
        """The key with the highest serial, or None if there is none yet."""
        mesh = check_mesh(kind, mesh)
        keys = await self._list(kind, mesh)
        if not keys:
            return None
        serial, secret = max(keys, key=lambda k: k[0])
        return self._parsed(kind, mesh, serial, secret)

    async def latest_or_create(self, kind: TokenKind, mesh: str = "") -> SigningKey:
        """The key new tokens are signed with; creates serial 1 on first use."""
        mesh = check_mesh(kind, mesh)
        key = await self.latest(kind, mesh)
        if key is not None:
            return key
        async with self._lock(kind, mesh):
            key = await self.latest(kind, mesh)
            if key is not None:
                return key
            return await self._create(kind, mesh, DEFAULT_SERIAL)

    async def rotate(self, kind: TokenKind, mesh: str = "") -> SigningKey:
        """Add a key with the next serial; new tokens are signed with it, old tokens stay valid while their
        key exists (delete the old secret to invalidate every token it signed)."""
        mesh = check_mesh(kind, mesh)
        async with self._lock(kind, mesh):
            serials = await self.serials(kind, mesh)
            serial = (serials[-1] + 1) if serials else DEFAULT_SERIAL
            key = await self._create(kind, mesh, serial)
        log.info("token signing key rotated", extra={"kind": kind.value, "mesh": mesh, "kid": str(key.serial),
                                                      "previous_kid": str(serials[-1]) if serials else ""})
        return key

    def _lock(self, kind: TokenKind, mesh: str) -> asyncio.Lock:
        return self._locks.setdefault((kind, mesh), asyncio.Lock())

    async def _create(self, kind: TokenKind, mesh: str, serial: int) -> SigningKey:
        name = signing_key_name(kind, serial, mesh)
        pem = await asyncio.to_thread(generate_signing_key_pem)
        resource = Resource(kind.secret_type, Meta(name=name, mesh=mesh), SecretSpec.of(pem))
        try:
            stored = await self._store.create(resource)
        except AlreadyExists:
            # Another control plane (or issuer) created this serial first: use its key, never a second one.
            log.info("token signing key was created concurrently, using the stored one",
                     extra={"kind": kind.value, "mesh": mesh, "kid": str(serial), "secret": name})
            return await self.get(kind, serial, mesh)
        log.info("token signing key created", extra={"kind": kind.value, "mesh": mesh, "kid": str(serial),
                                                      "secret": name})
        return self._parsed(kind, mesh, serial, stored)


async def rotate_signing_key(store: ResourceStore, kind: TokenKind | str, mesh: str | None = None) -> SigningKey:
    """Add a signing key with the next serial number (see `SigningKeys.rotate`)."""
    k = as_kind(kind)
    return await SigningKeys(store).rotate(k, check_mesh(k, mesh))
