"""Dataplane, zone and user tokens: issuing, validation and every way a token is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from controlplane.resources.base import Meta, Resource
from controlplane.resources.mesh import MESH, MeshSpec
from controlplane.resources.secret import GLOBAL_SECRET, SECRET, SecretSpec
from controlplane.store.base import ListQuery, MeshNotFound
from controlplane.store.memory import MemoryStore
from controlplane.tokens import (
    ADMIN_GROUP,
    DataplaneClaims,
    IdentityMismatch,
    InvalidSignature,
    MalformedToken,
    MissingKeyId,
    SigningKeyNotFound,
    TokenError,
    TokenExpired,
    TokenIssuer,
    TokenKind,
    TokenNotYetValid,
    TokenRequestError,
    TokenRevoked,
    TokenService,
    UnsupportedAlgorithm,
    is_admin,
    revoke,
    rotate_signing_key,
    verify_dataplane_identity,
    verify_zone_identity,
)
from controlplane.tokens import keys as keys_module
from controlplane.tokens.revocation import parse_revocations

WEB_TAGS = {"kuma.io/service": {"web"}, "kuma.io/protocol": {"http"}}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store() -> MemoryStore:
    s = MemoryStore()
    for mesh in ("default", "other"):
        await s.create(Resource(MESH, Meta(name=mesh), MeshSpec()))
    return s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(store: MemoryStore, clock: Clock) -> TokenService:
    return TokenService(store, clock=clock)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64(signature)}"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def stored_private_pem(store: MemoryStore, name: str, mesh: str = "") -> bytes:
    secret = await store.get(SECRET if mesh else GLOBAL_SECRET, name, mesh)
    assert isinstance(secret.spec, SecretSpec)
    return secret.spec.value()


# --- issue + validate ---------------------------------------------------------------------------------------

async def test_dataplane_token_round_trip(tokens: TokenService, store: MemoryStore) -> None:
    token = await tokens.issue_dataplane_token("default", name="web-01",
                                               tags={"kuma.io/service": ["web", "web-api"]})
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"] == "1"
    raw = claims_of(token)
    assert raw["Mesh"] == "default" and raw["Name"] == "web-01" and raw["Type"] == "dataplane"
    assert raw["Tags"] == {"kuma.io/service": ["web", "web-api"]}
    assert {"exp", "iat", "nbf", "jti"} <= raw.keys()
    assert raw["nbf"] == raw["iat"] - 300  # Kuma's 5-minute clock-skew allowance
    assert raw["exp"] - raw["iat"] == 3650 * 86400  # Kuma's default: 10 years

    claims = await tokens.validate_dataplane_token(token, "default")
    assert isinstance(claims, DataplaneClaims)
    assert (claims.mesh, claims.name, claims.type, claims.key_serial) == ("default", "web-01", "dataplane", 1)
    assert claims.tags == {"kuma.io/service": ["web", "web-api"]}
    assert claims.jti == raw["jti"]
    # the signing key is a Secret of that mesh, named as Kuma names it
    secret = await store.get(SECRET, "dataplane-token-signing-key-default-1", "default")
    assert secret.spec.value().startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # type: ignore[attr-defined]
    key = serialization.load_pem_private_key(secret.spec.value(), None)  # type: ignore[attr-defined]
    assert key.key_size == 2048  # type: ignore[union-attr]


async def test_dataplane_token_minimal_and_types(tokens: TokenService) -> None:
    token = await tokens.issue_dataplane_token("default")
    claims = await tokens.validate_dataplane_token(token, "default")
    assert (claims.name, claims.tags, claims.type) == ("", {}, "dataplane")
    ingress = await tokens.issue_dataplane_token("default", type="ingress", valid_for=timedelta(hours=1))
    assert (await tokens.validate_dataplane_token(ingress, "default")).type == "ingress"
    single = await tokens.issue_dataplane_token("default", tags={"kuma.io/service": "web"})
    assert (await tokens.validate_dataplane_token(single, "default")).tags == {"kuma.io/service": ["web"]}


async def test_zone_token_round_trip(tokens: TokenService, store: MemoryStore) -> None:
    token = await tokens.issue_zone_token("zone-1")
    claims = await tokens.validate_zone_token(token)
    assert claims.zone == "zone-1" and claims.scope == ["cp", "ingress", "egress"]
    assert claims_of(token)["Zone"] == "zone-1"
    await store.get(GLOBAL_SECRET, "zone-token-signing-key-1")
    narrow = await tokens.issue_zone_token("zone-1", ["cp"], timedelta(days=1))
    narrow_claims = await tokens.validate_zone_token(narrow)
    verify_zone_identity(narrow_claims, "zone-1", "cp")
    with pytest.raises(IdentityMismatch, match="does not include 'ingress'"):
        verify_zone_identity(narrow_claims, "zone-1", "ingress")
    with pytest.raises(IdentityMismatch, match="for zone 'zone-1', not 'zone-2'"):
        verify_zone_identity(narrow_claims, "zone-2", "cp")


async def test_user_token_round_trip(tokens: TokenService, store: MemoryStore) -> None:
    token = await tokens.issue_user_token("john", ["team-a"], timedelta(hours=24))
    claims = await tokens.validate_user_token(token)
    assert (claims.name, claims.groups) == ("john", ["team-a"])
    assert claims.expires_at - claims.issued_at == timedelta(hours=24)
    assert not is_admin(claims)
    admin = await tokens.validate_user_token(await tokens.issue_user_token("ops", [ADMIN_GROUP], timedelta(hours=1)))
    assert is_admin(admin)
    await store.get(GLOBAL_SECRET, "user-token-signing-key-1")


async def test_admin_user_token_bootstrapped_once(tokens: TokenService, store: MemoryStore) -> None:
    first, created = await tokens.ensure_admin_user_token()
    again, created_again = await tokens.ensure_admin_user_token()
    assert created and not created_again and first == again
    claims = await tokens.validate_user_token(first)
    assert claims.name == "mesh-system:admin" and is_admin(claims)
    secret = await store.get(GLOBAL_SECRET, "admin-user-token")
    assert secret.spec.value().decode() == first  # type: ignore[attr-defined]


# --- issuing requests that are refused ----------------------------------------------------------------------

@pytest.mark.parametrize("valid_for", [timedelta(0), timedelta(seconds=-1), timedelta(days=3651), "24h", 3600])
async def test_valid_for_must_be_positive_and_bounded(tokens: TokenService, valid_for: Any) -> None:
    with pytest.raises(TokenRequestError, match="validFor") as e:
        await tokens.issue_dataplane_token("default", valid_for=valid_for)
    assert [p.field for p in e.value.invalid] == ["validFor"]
    with pytest.raises(TokenRequestError, match="validFor"):
        await tokens.issue_zone_token("zone-1", valid_for=valid_for)
    with pytest.raises(TokenRequestError, match="validFor"):
        await tokens.issue_user_token("john", [], valid_for)


async def test_user_token_needs_valid_for_and_name(tokens: TokenService) -> None:
    with pytest.raises(TokenRequestError, match="validFor: cannot be empty"):
        await tokens.issue_user_token("john", [], None)  # type: ignore[arg-type]
    with pytest.raises(TokenRequestError, match="name: cannot be empty"):
        await tokens.issue_user_token("", [], timedelta(hours=1))


async def test_bad_dataplane_requests(tokens: TokenService) -> None:
    with pytest.raises(TokenRequestError, match="mesh: cannot be empty"):
        await tokens.issue_dataplane_token("")
    with pytest.raises(TokenRequestError, match="not a valid proxy type"):
        await tokens.issue_dataplane_token("default", type="gateway")
    with pytest.raises(TokenRequestError, match="needs at least one value"):
        await tokens.issue_dataplane_token("default", tags={"kuma.io/service": []})
    with pytest.raises(TokenRequestError, match="not a zone token scope"):
        await tokens.issue_zone_token("zone-1", ["everything"])
    with pytest.raises(MeshNotFound):
        await tokens.issue_dataplane_token("missing")


# --- validation refusals ------------------------------------------------------------------------------------

async def test_hs256_signed_with_public_key_is_refused(tokens: TokenService, store: MemoryStore) -> None:
    """The algorithm-confusion attack: HMAC 'signed' with our (public) RSA key as the secret."""
    good = await tokens.issue_dataplane_token("default", name="web-01")
    private = serialization.load_pem_private_key(
        await stored_private_pem(store, "dataplane-token-signing-key-default-1", "default"), None)
    public_pems = [
        private.public_key().public_bytes(serialization.Encoding.PEM, fmt)
        for fmt in (serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1)
    ]
    payload = {**claims_of(good), "Name": "admin-box"}
    for pem in public_pems:
        forged = forge({"alg": "HS256", "typ": "JWT", "kid": "1"}, payload,
                       lambda data, pem=pem: hmac.new(pem, data, hashlib.sha256).digest())
        with pytest.raises(UnsupportedAlgorithm, match="'HS256', but only RS256 is accepted"):
            await tokens.validate_dataplane_token(forged, "default")


async def test_alg_none_is_refused(tokens: TokenService) -> None:
    good = await tokens.issue_dataplane_token("default")
    for alg in ("none", "None", "NONE", None):
        forged = forge({"alg": alg, "typ": "JWT", "kid": "1"}, claims_of(good))
        assert forged.endswith(".")  # no signature at all
        with pytest.raises(UnsupportedAlgorithm):
            await tokens.validate_dataplane_token(forged, "default")


async def test_missing_or_bad_kid_is_refused(tokens: TokenService, store: MemoryStore) -> None:
    good = await tokens.issue_dataplane_token("default")
    key = serialization.load_pem_private_key(
        await stored_private_pem(store, "dataplane-token-signing-key-default-1", "default"), None)
    no_kid = jwt.encode(claims_of(good), key, algorithm="RS256")  # type: ignore[arg-type]
    with pytest.raises(MissingKeyId, match="no 'kid' header"):
        await tokens.validate_dataplane_token(no_kid, "default")
    for kid in ("abc", "-1", "1.0", "", " 1", "1" * 12):
        bad = jwt.encode(claims_of(good), key, algorithm="RS256", headers={"kid": kid})  # type: ignore[arg-type]
        with pytest.raises(MissingKeyId, match="not a signing key serial number"):
            await tokens.validate_dataplane_token(bad, "default")
    numeric = forge({"alg": "RS256", "typ": "JWT", "kid": 1}, claims_of(good),
                    lambda data: jwt.get_algorithm_by_name("RS256").sign(data, key))
    with pytest.raises(MalformedToken, match="Key ID"):
        await tokens.validate_dataplane_token(numeric, "default")


async def test_unknown_kid_is_refused(tokens: TokenService, store: MemoryStore) -> None:
    good = await tokens.issue_dataplane_token("default")
    key = serialization.load_pem_private_key(
        await stored_private_pem(store, "dataplane-token-signing-key-default-1", "default"), None)
    unknown = jwt.encode(claims_of(good), key, algorithm="RS256", headers={"kid": "7"})  # type: ignore[arg-type]
    with pytest.raises(SigningKeyNotFound, match=r"serial number 7.*dataplane-token-signing-key-default-7"):
        await tokens.validate_dataplane_token(unknown, "default")


async def test_tampered_payload_is_refused(tokens: TokenService) -> None:
    token = await tokens.issue_dataplane_token("default", name="web-01", tags={"kuma.io/service": ["web"]})
    header, _, signature = token.split(".")
    for change in ({"Name": "db-01"}, {"Tags": {"kuma.io/service": ["db"]}}, {"exp": int(time.time()) + 10**9}):
        payload = b64(json.dumps({**claims_of(token), **change}).encode())
        with pytest.raises(InvalidSignature, match="does not match signing key dataplane-token-signing-key-default-1"):
            await tokens.validate_dataplane_token(f"{header}.{payload}.{signature}", "default")
    with pytest.raises(InvalidSignature):
        flipped = signature[:-4] + ("BBBB" if signature.endswith("AAAA") else "AAAA")
        await tokens.validate_dataplane_token(f"{header}.{token.split('.')[1]}.{flipped}", "default")


async def test_expired_token_is_refused(tokens: TokenService, clock: Clock) -> None:
    token = await tokens.issue_dataplane_token("default", valid_for=timedelta(hours=1))
    clock.now += 3600 + 1
    with pytest.raises(TokenExpired, match=r"expired at .*Z: generate a new one with kumactl generate "
                                           r"dataplane-token --mesh default"):
        await tokens.validate_dataplane_token(token, "default")
    user = await tokens.issue_user_token("john", [], timedelta(seconds=10))
    clock.now += 11
    with pytest.raises(TokenExpired, match="kumactl generate user-token"):
        await tokens.validate_user_token(user)


async def test_not_yet_valid_token_is_refused(tokens: TokenService, clock: Clock) -> None:
    token = await tokens.issue_zone_token("zone-1")
    clock.now -= 4 * 60  # within the 5-minute skew allowance
    await tokens.validate_zone_token(token)
    clock.now -= 2 * 60
    with pytest.raises(TokenNotYetValid, match=r"not valid before .*clocks"):
        await tokens.validate_zone_token(token)


async def test_missing_registered_claims_are_refused(tokens: TokenService, store: MemoryStore) -> None:
    good = await tokens.issue_dataplane_token("default")
    key = serialization.load_pem_private_key(
        await stored_private_pem(store, "dataplane-token-signing-key-default-1", "default"), None)
    for claim in ("exp", "jti", "nbf", "iat"):
        payload = {k: v for k, v in claims_of(good).items() if k != claim}
        bad = jwt.encode(payload, key, algorithm="RS256", headers={"kid": "1"})  # type: ignore[arg-type]
        with pytest.raises(MalformedToken, match=f"no '{claim}' claim"):
            await tokens.validate_dataplane_token(bad, "default")
    wrong_tags = jwt.encode({**claims_of(good), "Tags": {"a": "b"}}, key, algorithm="RS256",  # type: ignore[arg-type]
                            headers={"kid": "1"})
    with pytest.raises(MalformedToken, match="'Tags' claim"):
        await tokens.validate_dataplane_token(wrong_tags, "default")


@pytest.mark.parametrize("garbage", [
    "", "   ", "abc", "a.b.c", "...", "eyJhbGciOiJSUzI1NiJ9", "eyJ.eyJ.sig", "a" * 20000,
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.bm90IGpzb24.c2ln",  # valid header, payload not JSON
    "\x00\x01\x02", "Bearer abc.def.ghi", b64(b"[1,2]") + ".e30.", 42, None, b"\xff\xfe",
])
async def test_garbage_is_refused(tokens: TokenService, garbage: Any) -> None:
    await tokens.issue_dataplane_token("default")
    with pytest.raises(TokenError):
        await tokens.validate_dataplane_token(garbage, "default")
    with pytest.raises(TokenError):
        await tokens.validate_zone_token(garbage)
    with pytest.raises(TokenError):
        await tokens.validate_user_token(garbage)


async def test_token_kinds_do_not_mix(tokens: TokenService) -> None:
    user = await tokens.issue_user_token("john", [ADMIN_GROUP], timedelta(hours=1))
    zone = await tokens.issue_zone_token("zone-1")
    with pytest.raises(InvalidSignature):
        await tokens.validate_zone_token(user)
    with pytest.raises(InvalidSignature):
        await tokens.validate_user_token(zone)
    with pytest.raises(SigningKeyNotFound):
        await tokens.validate_dataplane_token(user, "default")


async def test_token_with_whitespace_from_a_file_is_accepted(tokens: TokenService) -> None:
    token = await tokens.issue_dataplane_token("default")
    await tokens.validate_dataplane_token(token + "\n", "default")


# --- revocation ---------------------------------------------------------------------------------------------

async def test_revoked_token_is_refused(tokens: TokenService, store: MemoryStore) -> None:
    revoked = await tokens.issue_dataplane_token("default", name="web-01")
    kept = await tokens.issue_dataplane_token("default", name="web-02")
    jti = (await tokens.validate_dataplane_token(revoked, "default")).jti
    assert await tokens.revoke("dataplane", jti, mesh="default")
    assert not await tokens.revoke(TokenKind.DATAPLANE, jti, mesh="default")  # already there
    with pytest.raises(TokenRevoked, match=f"{jti} is revoked"):
        await tokens.validate_dataplane_token(revoked, "default")
    await tokens.validate_dataplane_token(kept, "default")
    secret = await store.get(SECRET, "dataplane-token-revocations-default", "default")
    assert secret.spec.value() == jti.encode()  # type: ignore[attr-defined]
    # a second revocation appends, comma separated (Kuma's format)
    other_jti = (await tokens.validate_dataplane_token(kept, "default")).jti
    await revoke(store, "dataplane", other_jti, "default")
    secret = await store.get(SECRET, "dataplane-token-revocations-default", "default")
    assert secret.spec.value() == f"{jti},{other_jti}".encode()  # type: ignore[attr-defined]
    with pytest.raises(TokenRevoked):
        await tokens.validate_dataplane_token(kept, "default")


async def test_zone_and_user_revocations(tokens: TokenService, store: MemoryStore) -> None:
    zone = await tokens.issue_zone_token("zone-1")
    user = await tokens.issue_user_token("john", [], timedelta(hours=1))
    await tokens.revoke("zone", (await tokens.validate_zone_token(zone)).jti)
    await tokens.revoke("user", (await tokens.validate_user_token(user)).jti)
    with pytest.raises(TokenRevoked):
        await tokens.validate_zone_token(zone)
    with pytest.raises(TokenRevoked):
        await tokens.validate_user_token(user)
    await store.get(GLOBAL_SECRET, "zone-token-revocations")
    await store.get(GLOBAL_SECRET, "user-token-revocations")


async def test_revocation_list_written_by_an_operator(tokens: TokenService, store: MemoryStore) -> None:
    """A list written by hand (one ID a line, trailing newline) is read as Kuma reads its comma list."""
    token = await tokens.issue_user_token("john", [], timedelta(hours=1))
    jti = claims_of(token)["jti"]
    await store.create(Resource(GLOBAL_SECRET, Meta(name="user-token-revocations"),
                                SecretSpec.of(f"some-other-id\n{jti}\n".encode())))
    with pytest.raises(TokenRevoked):
        await tokens.validate_user_token(token)
    assert parse_revocations(b"a,b\nc,,a\n") == ["a", "b", "c"]


async def test_concurrent_revocations_are_all_kept(store: MemoryStore) -> None:
    ids = [f"id-{i}" for i in range(12)]
    await asyncio.gather(*(revoke(store, "user", i) for i in ids))
    secret = await store.get(GLOBAL_SECRET, "user-token-revocations")
    assert sorted(parse_revocations(secret.spec.value())) == sorted(ids)  # type: ignore[attr-defined]


async def test_bad_revocation_requests(tokens: TokenService) -> None:
    with pytest.raises(TokenRequestError, match="not valid"):
        await tokens.revoke("user", "a,b")
    with pytest.raises(TokenRequestError, match="belong to a mesh"):
        await tokens.revoke("dataplane", "abc")
    with pytest.raises(TokenRequestError, match="global"):
        await tokens.revoke("zone", "abc", mesh="default")
    with pytest.raises(TokenRequestError, match="unknown token kind"):
        await tokens.revoke("cluster", "abc")


# --- dataplane identity (what the xDS server checks) -----------------------------------------------------------

def dp_claims(mesh: str = "default", name: str = "", tags: dict[str, list[str]] | None = None,
              type: str = "dataplane") -> DataplaneClaims:
    from datetime import UTC, datetime
    now = datetime.now(UTC)
    return DataplaneClaims(jti="x", key_serial=1, issued_at=now, not_before=now, expires_at=now,
                           mesh=mesh, name=name, tags=tags or {}, type=type)


def test_identity_wrong_mesh() -> None:
    with pytest.raises(IdentityMismatch, match="for mesh 'default' but dataplane 'web-01' is in mesh 'other'"):
        verify_dataplane_identity(dp_claims(), "other", "web-01", WEB_TAGS)


def test_identity_wrong_name() -> None:
    verify_dataplane_identity(dp_claims(name="web-01"), "default", "web-01", WEB_TAGS)
    with pytest.raises(IdentityMismatch, match="for dataplane 'web-01', not 'web-02'"):
        verify_dataplane_identity(dp_claims(name="web-01"), "default", "web-02", WEB_TAGS)


def test_identity_tags() -> None:
    token = dp_claims(tags={"kuma.io/service": ["web", "web-api"]})
    verify_dataplane_identity(token, "default", "web-01", WEB_TAGS)
    verify_dataplane_identity(token, "default", "web-01", {"kuma.io/service": {"web", "web-api"}})
    # a dataplane value the token does not allow
    with pytest.raises(IdentityMismatch, match=r"tag kuma.io/service=db, which the token does not allow .*"
                                               r"--tag kuma.io/service=db,web,web-api"):
        verify_dataplane_identity(token, "default", "web-01", {"kuma.io/service": {"web", "db"}})
    # a tag the token requires and the dataplane lacks
    with pytest.raises(IdentityMismatch, match="has no tag 'version'"):
        verify_dataplane_identity(dp_claims(tags={"version": ["v1"]}), "default", "web-01", WEB_TAGS)
    # tags the token does not mention are not restricted
    verify_dataplane_identity(dp_claims(tags={}), "default", "web-01", WEB_TAGS)


def test_identity_proxy_type() -> None:
    verify_dataplane_identity(dp_claims(type="ingress"), "default", "ingress-1", {}, proxy_type="ingress")
    with pytest.raises(IdentityMismatch, match="type 'ingress', not 'dataplane'"):
        verify_dataplane_identity(dp_claims(type="ingress"), "default", "web-01", WEB_TAGS, proxy_type="dataplane")


async def test_token_of_mesh_a_used_in_mesh_b(tokens: TokenService) -> None:
    token_a = await tokens.issue_dataplane_token("default", name="web-01")
    await tokens.issue_dataplane_token("other")  # mesh B has its own key with serial 1
    with pytest.raises(IdentityMismatch, match="issued for mesh 'default' but is used in mesh 'other'"):
        await tokens.validate_dataplane_token(token_a, "other")
    # rewriting the Mesh claim does not help: mesh B's key did not sign it
    header, _, sig = token_a.split(".")
    moved = b64(json.dumps({**claims_of(token_a), "Mesh": "other"}).encode())
    with pytest.raises(InvalidSignature):
        await tokens.validate_dataplane_token(f"{header}.{moved}.{sig}", "other")


async def test_end_to_end_identity_check(tokens: TokenService) -> None:
    token = await tokens.issue_dataplane_token("default", tags={"kuma.io/service": ["web"]})
    claims = await tokens.validate_dataplane_token(token, "default")
    verify_dataplane_identity(claims, "default", "web-01", WEB_TAGS)
    with pytest.raises(IdentityMismatch):
        verify_dataplane_identity(claims, "default", "db-01", {"kuma.io/service": {"db"}})


# --- signing keys: rotation, races, caching ----------------------------------------------------------------------

async def test_key_rotation(tokens: TokenService, store: MemoryStore) -> None:
    old = await tokens.issue_dataplane_token("default", name="web-01")
    key = await tokens.rotate_signing_key("dataplane", "default")
    assert key.serial == 2
    new = await tokens.issue_dataplane_token("default", name="web-01")
    assert jwt.get_unverified_header(new)["kid"] == "2"
    assert jwt.get_unverified_header(old)["kid"] == "1"
    assert (await tokens.validate_dataplane_token(old, "default")).key_serial == 1
    assert (await tokens.validate_dataplane_token(new, "default")).key_serial == 2
    # rotating through the module function works on any store handle, too
    assert (await rotate_signing_key(store, TokenKind.USER)).serial == 1
    assert (await rotate_signing_key(store, "user")).serial == 2
    # deleting the old key invalidates every token it signed, despite the cache
    await store.delete(SECRET, "dataplane-token-signing-key-default-1", "default")
    with pytest.raises(SigningKeyNotFound, match="if the signing key was rotated, generate a new token"):
        await tokens.validate_dataplane_token(old, "default")
    await tokens.validate_dataplane_token(new, "default")


async def test_replaced_key_is_not_served_from_cache(tokens: TokenService, store: MemoryStore) -> None:
    token = await tokens.issue_zone_token("zone-1")
    await tokens.validate_zone_token(token)
    current = await store.get(GLOBAL_SECRET, "zone-token-signing-key-1")
    await store.update(Resource(GLOBAL_SECRET, current.meta,
                                SecretSpec.of(keys_module.generate_signing_key_pem())))
    with pytest.raises(InvalidSignature):
        await tokens.validate_zone_token(token)


async def test_parsed_keys_are_cached(tokens: TokenService, monkeypatch: pytest.MonkeyPatch) -> None:
    token = await tokens.issue_dataplane_token("default")
    calls = 0
    real = keys_module.load_signing_key

    def counting(data: bytes, where: str) -> Any:
        nonlocal calls
        calls += 1
        return real(data, where)

    monkeypatch.setattr(keys_module, "load_signing_key", counting)
    for _ in range(5):
        await tokens.validate_dataplane_token(token, "default")
    assert calls == 0  # parsed once, when the key was created


async def test_signing_key_created_once_when_issuers_race(store: MemoryStore) -> None:
    """Two control planes (separate issuers, no shared lock) on one store: one key, both tokens valid."""
    issuers = [TokenIssuer(store) for _ in range(2)]
    dp_tokens = await asyncio.gather(*(i.issue_dataplane_token("default") for i in issuers))
    user_tokens = await asyncio.gather(*(i.issue_user_token("john", [], timedelta(hours=1)) for i in issuers))
    dp_keys = await store.list(SECRET, ListQuery(mesh="default", name_prefix="dataplane-token-signing-key"))
    assert [r.meta.name for r in dp_keys.items] == ["dataplane-token-signing-key-default-1"]
    user_keys = await store.list(GLOBAL_SECRET, ListQuery(name_prefix="user-token-signing-key"))
    assert [r.meta.name for r in user_keys.items] == ["user-token-signing-key-1"]
    validator = TokenService(store)
    for t in dp_tokens:
        await validator.validate_dataplane_token(t, "default")
    for t in user_tokens:
        await validator.validate_user_token(t)


async def test_key_creation_is_logged(tokens: TokenService, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kuma.tokens"):
        token = await tokens.issue_dataplane_token("default")
        with pytest.raises(TokenError):
            await tokens.validate_dataplane_token(token[:-4] + ("BBBB" if token.endswith("AAAA") else "AAAA"),
                                                  "default")
    created = [r for r in caplog.records if r.getMessage() == "token signing key created"]
    assert created and created[0].__dict__["mesh"] == "default" and created[0].__dict__["kid"] == "1"
    assert created[0].__dict__["kind"] == "dataplane"
    rejected = [r for r in caplog.records if r.getMessage() == "token rejected"]
    assert rejected and rejected[0].__dict__["reason"] == "InvalidSignature" and rejected[0].__dict__["kid"] == "1"
