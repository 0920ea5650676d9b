"""Mesh CAs (builtin and provided), their checks and caching, identity certificates and the identity cache."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.ca import (
    CaCorrupted,
    CaError,
    CaExpired,
    CaInvalidPem,
    CaKeyMismatch,
    CaManager,
    CaNotACertificateAuthority,
    CaSourceNotFound,
    IdentityCache,
    IdentityError,
    MeshCa,
    cert_secret_name,
    issue_identity,
    key_secret_name,
    lifetime_for,
    used_secrets,
)
from controlplane.ca import builtin as builtin_module
from controlplane.resources.base import Meta, Resource, ResourceType
from controlplane.resources.mesh import MESH, MeshSpec
from controlplane.resources.secret import SECRET, SecretSpec
from controlplane.store.base import ListQuery
from controlplane.store.memory import MemoryStore

SERVICE = "kuma.io/service"


# --- helpers -------------------------------------------------------------------------------------------------------

def mesh_resource(name: str, backends: list[dict[str, Any]] | None = None, enabled: str | None = None) -> Resource:
    spec: dict[str, Any] = {}
    if backends is not None:
        spec["mtls"] = {"backends": backends, **({"enabledBackend": enabled} if enabled else {})}
    return Resource(MESH, Meta(name=name), MeshSpec.model_validate(spec, strict=False))


def builtin(name: str = "ca-1", **conf: Any) -> dict[str, Any]:
    return {"name": name, "type": "builtin", **({"conf": conf} if conf else {})}


def provided(cert: dict[str, str], key: dict[str, str], name: str = "ca-1", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "provided", "conf": {"cert": cert, "key": key}, **extra}


async def add_mesh(store: MemoryStore, mesh: Resource) -> Resource:
    await store.create(mesh)
    return mesh


async def put_secret(store: MemoryStore, mesh: str, name: str, data: bytes) -> None:
    await store.create(Resource(SECRET, Meta(name=name, mesh=mesh), SecretSpec.of(data)))


async def secret_names(store: MemoryStore, mesh: str) -> list[str]:
    return [r.meta.name for r in (await store.list(SECRET, ListQuery(mesh=mesh))).items]


async def secret_value(store: MemoryStore, mesh: str, name: str) -> bytes:
    res = await store.get(SECRET, name, mesh)
    assert isinstance(res.spec, SecretSpec)
    return res.spec.value()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_cert(*, ca: bool = True, cert_sign: bool = True, days: int = 365, start_days_ago: int = 1,
              cn: str = "operator root", key: ec.EllipticCurvePrivateKey | None = None,
              ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed certificate an operator might provide (EC, to keep the tests fast)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=start_days_ago)).not_valid_after(now - timedelta(days=start_days_ago)
                                                                                 + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                                     decipher_only=False), critical=True)
    )
    return builder.sign(key, hashes.SHA256()), key


def uri_sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier)


def leaf_of(cert_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(cert_pem)[0]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture(autouse=True)
def small_rsa(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Record the RSA sizes builtin CAs ask for."""
    requested: list[int] = []
    real = builtin_module.generate_key

    def recording(bits: int) -> rsa.RSAPrivateKey:
        requested.append(bits)
        return real(bits)

    monkeypatch.setattr(builtin_module, "generate_key", recording)
    yield requested


# --- builtin -------------------------------------------------------------------------------------------------------

async def test_builtin_ca_is_created_once_and_named_as_kuma(store: MemoryStore, small_rsa: list[int]) -> None:
    mesh = await add_mesh(store, mesh_resource("default", [builtin("ca-1")], "ca-1"))
    manager = CaManager(store)
    ca = await manager.get_ca(mesh)
    assert ca is not None
    assert sorted(await secret_names(store, "default")) == ["default.ca-builtin-cert-ca-1",
                                                             "default.ca-builtin-key-ca-1"]
    assert cert_secret_name("default", "ca-1") == "default.ca-builtin-cert-ca-1"
    assert key_secret_name("default", "ca-1") == "default.ca-builtin-key-ca-1"
    assert (ca.mesh, ca.backend, ca.type, ca.mode) == ("default", "ca-1", "builtin", "STRICT")
    assert await secret_value(store, "default", "default.ca-builtin-cert-ca-1") == ca.cert_pem

    again = await manager.get_ca(mesh)
    assert again is ca  # cached: same object
    other = await CaManager(store).get_ca(mesh)  # a fresh control plane reads, does not create
    assert other is not None and other.fingerprint == ca.fingerprint
    assert small_rsa == [2048]
    assert len(await secret_names(store, "default")) == 2


async def test_builtin_ca_certificate_shape(store: MemoryStore) -> None:
    mesh = await add_mesh(store, mesh_resource("demo", [builtin()], "ca-1"))
    ca = await CaManager(store).get_ca(mesh)
    assert ca is not None
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    attrs = {a.oid: a.value for a in cert.subject}
    assert attrs == {NameOID.ORGANIZATION_NAME: "Kuma", NameOID.ORGANIZATIONAL_UNIT_NAME: "Mesh",
                     NameOID.COMMON_NAME: "demo"}
    assert cert.issuer == cert.subject
    assert uri_sans(cert) == ["spiffe://demo"]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    validity = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=3649) < validity <= timedelta(days=3650)
    cert.verify_directly_issued_by(cert)
    key_res = await secret_value(store, "demo", "demo.ca-builtin-key-ca-1")
    assert b"BEGIN RSA PRIVATE KEY" in key_res  # PKCS#1, as Kuma stores it


async def test_builtin_rsabits_and_expiration_are_honoured(store: MemoryStore, small_rsa: list[int]) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [builtin(caCert={"RSAbits": 3072, "expiration": "1y"})], "ca-1"))
    ca = await CaManager(store).get_ca(mesh)
    assert ca is not None
    pub = ca.cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 3072
    assert small_rsa == [3072]
    validity = ca.not_after - datetime.now(UTC)
    assert timedelta(days=364) < validity <= timedelta(days=365)


async def test_two_control_planes_racing_end_with_one_ca(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every control plane generates its own key (as for real); only one may end up stored.
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(4)]
    handed: list[rsa.RSAPrivateKey] = []

    def distinct(bits: int) -> rsa.RSAPrivateKey:
        handed.append(keys[len(handed)])
        return handed[-1]

    monkeypatch.setattr(builtin_module, "generate_key", distinct)
    mesh = await add_mesh(store, mesh_resource("race", [builtin()], "ca-1"))
    managers = [CaManager(store) for _ in range(4)]
    cas = await asyncio.gather(*(m.get_ca(mesh) for m in managers))
    assert len(handed) >= 2  # they really raced
    fingerprints = {ca.fingerprint for ca in cas if ca is not None}
    assert len(fingerprints) == 1
    assert len(await secret_names(store, "race")) == 2
    stored_key = serialization.load_pem_private_key(await secret_value(store, "race", "race.ca-builtin-key-ca-1"),
                                                    None)
    assert cas[0] is not None
    assert _spki(stored_key.public_key()) == _spki(cas[0].cert.public_key())


def _spki(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


async def test_builtin_key_without_certificate_is_completed_from_that_key(store: MemoryStore) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [builtin()], "ca-1"))
    orphan = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await put_secret(store, "m", "m.ca-builtin-key-ca-1", key_pem(orphan))  # a crash right after the key write
    ca = await CaManager(store).get_ca(mesh)
    assert ca is not None
    assert _spki(ca.cert.public_key()) == _spki(orphan.public_key())


async def test_builtin_certificate_without_key_is_regenerated(store: MemoryStore) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [builtin()], "ca-1"))
    old = await CaManager(store).get_ca(mesh)
    assert old is not None
    await store.delete(SECRET, "m.ca-builtin-key-ca-1", "m")
    new = await CaManager(store).get_ca(mesh)
    assert new is not None and new.fingerprint != old.fingerprint
    stored_key = serialization.load_pem_private_key(await secret_value(store, "m", "m.ca-builtin-key-ca-1"), None)
    assert _spki(stored_key.public_key()) == _spki(new.cert.public_key())
    cert_res = await store.get(SECRET, "m.ca-builtin-cert-ca-1", "m")
    assert cert_res.meta.version == 2  # replaced by a conditional update, not deleted and re-created


async def test_builtin_mismatched_certificate_is_replaced_from_the_stored_key(store: MemoryStore) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [builtin()], "ca-1"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stray, _ = make_cert()
    await put_secret(store, "m", "m.ca-builtin-key-ca-1", key_pem(key))
    await put_secret(store, "m", "m.ca-builtin-cert-ca-1", pem(stray))
    ca = await CaManager(store).get_ca(mesh)
    assert ca is not None and _spki(ca.cert.public_key()) == _spki(key.public_key())


async def test_builtin_garbage_key_is_an_error_not_a_silent_new_ca(store: MemoryStore) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [builtin()], "ca-1"))
    await put_secret(store, "m", "m.ca-builtin-key-ca-1", b"not a key")
    with pytest.raises(CaCorrupted, match=r"m\.ca-builtin-key-ca-1.*delete it"):
        await CaManager(store).get_ca(mesh)
    assert await secret_names(store, "m") == ["m.ca-builtin-key-ca-1"]


async def test_builtin_expired_ca_is_refused(store: MemoryStore) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [builtin()], "ca-1"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    expired = builtin_module.make_ca_cert("m", key, timedelta(days=1), now=datetime.now(UTC) - timedelta(days=2))
    await put_secret(store, "m", "m.ca-builtin-key-ca-1", key_pem(key))
    await put_secret(store, "m", "m.ca-builtin-cert-ca-1", pem(expired))
    with pytest.raises(CaExpired, match=r"expired at"):
        await CaManager(store).get_ca(mesh)


async def test_mtls_off_means_no_ca(store: MemoryStore) -> None:
    manager = CaManager(store)
    assert await manager.get_ca(await add_mesh(store, mesh_resource("plain"))) is None
    assert await manager.get_ca(await add_mesh(store, mesh_resource("listed", [builtin()]))) is None
    assert await secret_names(store, "listed") == []


# --- provided ------------------------------------------------------------------------------------------------------

@pytest.fixture
def operator_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return make_cert()


async def test_provided_ca_from_a_secret(store: MemoryStore, operator_ca: Any) -> None:
    cert, key = operator_ca
    await add_mesh(store, mesh_resource("m"))
    await put_secret(store, "m", "my-cert", pem(cert))
    await put_secret(store, "m", "my-key", key_pem(key))
    mesh = mesh_resource("m", [provided({"secret": "my-cert"}, {"secret": "my-key"}, mode="PERMISSIVE")], "ca-1")
    ca = await CaManager(store).get_ca(mesh)
    assert ca is not None
    assert (ca.type, ca.mode, ca.cert_pem, ca.trust_bundle_pem) == ("provided", "PERMISSIVE", pem(cert), pem(cert))
    assert ca.chain_pem == b""
    assert await secret_names(store, "m") == ["my-cert", "my-key"]  # nothing created


@pytest.mark.parametrize("kind", ["inline", "inlineString", "file"])
async def test_provided_ca_inline_inline_string_and_file(store: MemoryStore, operator_ca: Any, tmp_path: Path,
                                                         kind: str) -> None:
    cert, key = operator_ca
    if kind == "inline":
        cert_src = {"inline": base64.b64encode(pem(cert)).decode()}
        key_src = {"inline": base64.b64encode(key_pem(key)).decode()}
    elif kind == "inlineString":
        cert_src, key_src = {"inlineString": pem(cert).decode()}, {"inlineString": key_pem(key).decode()}
    else:
        (tmp_path / "ca.crt").write_bytes(pem(cert))
        (tmp_path / "ca.key").write_bytes(key_pem(key))
        cert_src, key_src = {"file": str(tmp_path / "ca.crt")}, {"file": str(tmp_path / "ca.key")}
    mesh = await add_mesh(store, mesh_resource("m", [provided(cert_src, key_src)], "ca-1"))
    ca = await CaManager(store).get_ca(mesh)
    assert ca is not None and ca.cert_pem == pem(cert)


async def test_provided_file_change_is_seen(store: MemoryStore, tmp_path: Path) -> None:
    first, first_key = make_cert(cn="first")
    crt, k = tmp_path / "ca.crt", tmp_path / "ca.key"
    crt.write_bytes(pem(first))
    k.write_bytes(key_pem(first_key))
    mesh = await add_mesh(store, mesh_resource("m", [provided({"file": str(crt)}, {"file": str(k)})], "ca-1"))
    manager = CaManager(store)
    await manager.start()
    try:
        a = await manager.get_ca(mesh)
        second, second_key = make_cert(cn="second, a longer name so the file size changes")
        k.write_bytes(key_pem(second_key))
        crt.write_bytes(pem(second))
        b = await manager.get_ca(mesh)
    finally:
        await manager.stop()
    assert a is not None and b is not None and b.cert_pem == pem(second)


async def _provided_error(store: MemoryStore, cert: bytes | None, key: bytes | None) -> CaError:
    """get_ca on a mesh whose provided backend's secrets hold `cert`/`key` (None: the secret is missing)."""
    await add_mesh(store, mesh_resource("m"))
    if cert is not None:
        await put_secret(store, "m", "c", cert)
    if key is not None:
        await put_secret(store, "m", "k", key)
    mesh = mesh_resource("m", [builtin("other"), provided({"secret": "c"}, {"secret": "k"})], "ca-1")
    with pytest.raises(CaError) as info:
        await CaManager(store).get_ca(mesh)
    return info.value


async def test_provided_missing_secret(store: MemoryStore, operator_ca: Any) -> None:
    _, key = operator_ca
    err = await _provided_error(store, None, key_pem(key))
    assert isinstance(err, CaSourceNotFound)
    assert err.field == "mtls.backends[1].conf.cert.secret"
    assert "mtls.backends[1].conf.cert.secret: secret 'c' does not exist in mesh 'm'" in str(err)
    assert "CA backend 'ca-1'" in str(err)


async def test_provided_not_a_ca(store: MemoryStore) -> None:
    cert, key = make_cert(ca=False, cert_sign=False)
    err = await _provided_error(store, pem(cert), key_pem(key))
    assert isinstance(err, CaNotACertificateAuthority)
    assert err.field == "mtls.backends[1].conf.cert"
    assert "basic constraint 'CA' must be set to 'true'" in str(err)
    assert "keyCertSign" in str(err)  # the second problem is reported too


async def test_provided_key_mismatch(store: MemoryStore, operator_ca: Any) -> None:
    cert, _ = operator_ca
    _, other_key = make_cert()
    err = await _provided_error(store, pem(cert), key_pem(other_key))
    assert isinstance(err, CaKeyMismatch)
    assert err.field == "mtls.backends[1].conf.key"


async def test_provided_expired(store: MemoryStore) -> None:
    cert, key = make_cert(days=10, start_days_ago=20)
    err = await _provided_error(store, pem(cert), key_pem(key))
    assert isinstance(err, CaExpired)
    assert err.field == "mtls.backends[1].conf.cert" and "expired at" in str(err)


async def test_provided_garbage_pem(store: MemoryStore, operator_ca: Any) -> None:
    _, key = operator_ca
    err = await _provided_error(store, b"hello", key_pem(key))
    assert isinstance(err, CaInvalidPem) and err.field == "mtls.backends[1].conf.cert"
    err2 = await _provided_error(MemoryStore(), pem(operator_ca[0]), b"-----BEGIN PRIVATE KEY-----\nxx\n")
    assert isinstance(err2, CaInvalidPem) and err2.field == "mtls.backends[1].conf.key"


async def test_provided_missing_file(store: MemoryStore, tmp_path: Path, operator_ca: Any) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [provided({"file": str(tmp_path / "nope.crt")},
                                                              {"inlineString": key_pem(operator_ca[1]).decode()})],
                                               "ca-1"))
    with pytest.raises(CaSourceNotFound, match=r"conf\.cert\.file: file .*nope\.crt' does not exist"):
        await CaManager(store).get_ca(mesh)


async def test_validate_backend_reports_every_problem_and_creates_nothing(store: MemoryStore,
                                                                          operator_ca: Any) -> None:
    cert, key = operator_ca
    await add_mesh(store, mesh_resource("m"))
    await put_secret(store, "m", "garbage", b"not pem")
    await put_secret(store, "m", "good-cert", pem(cert))
    await put_secret(store, "m", "good-key", key_pem(key))
    manager = CaManager(store)
    mesh = mesh_resource("m", [
        builtin("b"),
        provided({"secret": "garbage"}, {"secret": "missing"}, name="p1"),
        provided({"secret": "good-cert"}, {"secret": "good-key"}, name="p2"),
    ], "b")
    invalid = await manager.validate_backend(mesh)
    assert [(p.field, p.reason[:40]) for p in invalid] == [
        ("mtls.backends[1].conf.key.secret", "secret 'missing' does not exist in mesh "),
        ("mtls.backends[1].conf.cert", "holds no PEM certificate (-----BEGIN CER"),
    ]
    mesh2 = mesh_resource("m", [provided({"secret": "garbage"}, {"secret": "good-key"})], "ca-1")
    invalid = await manager.validate_backend(mesh2)
    assert [p.field for p in invalid] == ["mtls.backends[0].conf.cert"]
    assert "no PEM certificate" in invalid[0].reason
    not_ca, _ = make_cert(ca=False, cert_sign=False)
    await put_secret(store, "m", "leaf", pem(not_ca))
    mesh3 = mesh_resource("m", [provided({"secret": "leaf"}, {"secret": "good-key"})], "ca-1")
    assert sorted({p.field for p in await manager.validate_backend(mesh3)}) == [
        "mtls.backends[0].conf.cert", "mtls.backends[0].conf.key"]
    ok = mesh_resource("m", [builtin("b"), provided({"secret": "good-cert"}, {"secret": "good-key"})], "b")
    assert await manager.validate_backend(ok) == []
    assert await secret_names(store, "m") == ["garbage", "good-cert", "good-key", "leaf"]


# --- bundles, caching --------------------------------------------------------------------------------------------

async def test_trust_bundle_holds_every_backend_so_a_switch_keeps_connections(store: MemoryStore,
                                                                              operator_ca: Any) -> None:
    cert, key = operator_ca
    backends = [builtin("old"), provided({"inlineString": pem(cert).decode()},
                                         {"inlineString": key_pem(key).decode()}, name="new"),
                provided({"secret": "absent"}, {"secret": "absent"}, name="broken")]
    manager = CaManager(store)
    mesh = await add_mesh(store, mesh_resource("m", backends, "old"))
    before = await manager.get_ca(mesh)
    assert before is not None and before.backend == "old"
    after = await manager.get_ca(mesh_resource("m", backends, "new"))
    assert after is not None and after.backend == "new" and after.fingerprint != before.fingerprint
    for ca in (before, after):
        bundle = x509.load_pem_x509_certificates(ca.trust_bundle_pem)
        assert {c.fingerprint(hashes.SHA256()).hex() for c in bundle} == {before.fingerprint, after.fingerprint}
        assert bundle[0].fingerprint(hashes.SHA256()).hex() == ca.fingerprint  # enabled backend first
    assert set(before.trusted_fingerprints) == {before.fingerprint, after.fingerprint}


async def test_a_non_enabled_builtin_backend_is_created_ahead_of_a_switch(store: MemoryStore) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [builtin("a"), builtin("b")], "a"))
    ca = await CaManager(store).get_ca(mesh)
    assert ca is not None
    assert len(await secret_names(store, "m")) == 4
    assert ca.trust_bundle_pem.count(b"BEGIN CERTIFICATE") == 2


async def test_ensure_backends_and_mesh_deletion(store: MemoryStore) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [builtin("a"), builtin("b")]))  # mTLS not enabled yet
    manager = CaManager(store)
    await manager.start()
    try:
        await manager.ensure_backends(mesh)
        assert len(await secret_names(store, "m")) == 4
        ca = await manager.get_ca(mesh_resource("m", [builtin("a"), builtin("b")], "b"))
        assert ca is not None and ca.backend == "b"
        await store.delete(MESH, "m")
        await asyncio.sleep(0)
        await add_mesh(store, mesh)
        again = await manager.get_ca(mesh_resource("m", [builtin("a"), builtin("b")], "b"))
        assert again is not None and again.fingerprint != ca.fingerprint  # a new mesh of that name: new CA
    finally:
        await manager.stop()


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, rtype: ResourceType, name: str, mesh: str = "") -> Resource:
        self.gets += 1
        return await super().get(rtype, name, mesh)


async def test_cache_reuses_parse_and_sees_secret_changes() -> None:
    store = CountingStore()
    first, first_key = make_cert(cn="first")
    await add_mesh(store, mesh_resource("m"))
    await put_secret(store, "m", "c", pem(first))
    await put_secret(store, "m", "k", key_pem(first_key))
    mesh = mesh_resource("m", [provided({"secret": "c"}, {"secret": "k"})], "ca-1")
    manager = CaManager(store)
    a = await manager.get_ca(mesh)
    assert await manager.get_ca(mesh) is a  # unchanged secrets: the same parsed CA
    second, second_key = make_cert(cn="second")
    for name, data in (("k", key_pem(second_key)), ("c", pem(second))):
        res = await store.get(SECRET, name, "m")
        await store.update(Resource(SECRET, res.meta, SecretSpec.of(data)))
    b = await manager.get_ca(mesh)
    assert a is not None and b is not None and b.cert_pem == pem(second)

    await manager.start()  # watching the store: repeat lookups stop reading it
    try:
        c = await manager.get_ca(mesh)
        gets = store.gets
        for _ in range(10):
            assert await manager.get_ca(mesh) is c
        assert store.gets == gets
        third, third_key = make_cert(cn="third")
        for name, data in (("k", key_pem(third_key)), ("c", pem(third))):
            res = await store.get(SECRET, name, "m")
            await store.update(Resource(SECRET, res.meta, SecretSpec.of(data)))
        await asyncio.sleep(0)  # let the watcher see the events
        d = await manager.get_ca(mesh)
        assert d is not None and d.cert_pem == pem(third)
        manager.invalidate("m")
        e = await manager.get_ca(mesh)
        assert e is not None and e.fingerprint == d.fingerprint
    finally:
        await manager.stop()


async def test_logs_are_structured(store: MemoryStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kuma.ca")
    mesh = await add_mesh(store, mesh_resource("m", [builtin()], "ca-1"))
    manager = CaManager(store)
    await IdentityCache(manager).identity_for(mesh, ("m", "dp-1"), ["web"])
    created = [r for r in caplog.records if r.getMessage() == "builtin CA created"]
    assert created and created[0].mesh == "m" and created[0].backend == "ca-1"  # type: ignore[attr-defined]
    issued = [r for r in caplog.records if r.getMessage() == "identity certificate issued"]
    assert issued and issued[0].dataplane == "dp-1"  # type: ignore[attr-defined]


# --- identities ----------------------------------------------------------------------------------------------------

@pytest.fixture
async def mesh_ca(store: MemoryStore) -> MeshCa:
    mesh = await add_mesh(store, mesh_resource("m", [builtin()], "ca-1"))
    ca = await CaManager(store).get_ca(mesh)
    assert ca is not None
    return ca


async def test_identity_certificate(mesh_ca: MeshCa) -> None:
    now = datetime.now(UTC).replace(microsecond=0)  # X.509 times have whole seconds
    ident = issue_identity(mesh_ca, "m", ["web", "api", "web"], timedelta(hours=10),
                           tags={SERVICE: {"web", "api"}, "version": {"v2", "v1"}, "zone": set()}, now=now)
    leaf = leaf_of(ident.cert_pem)
    ca_cert = x509.load_pem_x509_certificate(mesh_ca.cert_pem)
    leaf.verify_directly_issued_by(ca_cert)  # signature + issuer name
    assert ident.spiffe_ids == ("spiffe://m/api", "spiffe://m/web")
    assert uri_sans(leaf) == ["spiffe://m/api", "spiffe://m/web", "kuma://kuma.io/service/api",
                              "kuma://kuma.io/service/web", "kuma://version/v1", "kuma://version/v2"]
    assert list(ident.uris) == uri_sans(leaf)
    assert leaf.subject == x509.Name([])
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP256R1)
    key = serialization.load_pem_private_key(ident.key_pem, None)
    assert _spki(key.public_key()) == _spki(pub)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and ku.key_agreement and not ku.key_cert_sign  # as Kuma
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.not_valid_before_utc == ident.not_before == now - timedelta(minutes=1)
    assert leaf.not_valid_after_utc == ident.not_after == now + timedelta(hours=10)
    assert ident.renew_at == now + timedelta(hours=8)  # 4/5 of the lifetime
    assert ident.ca_fingerprint == mesh_ca.fingerprint

    # the chain verifies with cryptography's own path builder, as a TLS peer would
    from cryptography.x509.verification import PolicyBuilder, Store
    verifier = PolicyBuilder().store(Store([ca_cert])).time(now).build_client_verifier()
    verified = verifier.verify(leaf, [])
    assert verified.chain[-1] == ca_cert


async def test_identity_refuses_bad_input(mesh_ca: MeshCa) -> None:
    with pytest.raises(IdentityError, match="label to have an identity"):
        issue_identity(mesh_ca, "m", [], timedelta(hours=1))
    with pytest.raises(IdentityError, match="SPIFFE"):
        issue_identity(mesh_ca, "m", ["web/evil"], timedelta(hours=1))
    with pytest.raises(IdentityError, match="cannot issue identities in mesh"):
        issue_identity(mesh_ca, "other", ["web"], timedelta(hours=1))


async def test_identity_never_outlives_its_ca(mesh_ca: MeshCa) -> None:
    now = mesh_ca.not_after - timedelta(hours=1)
    ident = issue_identity(mesh_ca, "m", ["web"], timedelta(hours=24), now=now)
    assert ident.not_after == mesh_ca.not_after
    with pytest.raises(CaExpired):
        issue_identity(mesh_ca, "m", ["web"], timedelta(hours=24), now=mesh_ca.not_after)


def test_lifetime_for() -> None:
    assert lifetime_for(mesh_resource("m")) == timedelta(hours=24)
    assert lifetime_for(mesh_resource("m", [builtin()], "ca-1")) == timedelta(hours=24)
    b = {**builtin(), "dpCert": {"rotation": {"expiration": "90m"}}}
    assert lifetime_for(mesh_resource("m", [b], "ca-1")) == timedelta(minutes=90)


async def test_identity_cache_reuses_then_renews(store: MemoryStore) -> None:
    mesh = await add_mesh(store, mesh_resource("m", [{**builtin(), "dpCert": {"rotation": {"expiration": "10h"}}}],
                                               "ca-1"))
    cache = IdentityCache(CaManager(store))
    t0 = datetime.now(UTC)
    first = await cache.identity_for(mesh, ("m", "dp-1"), ["web"], {SERVICE: {"web"}}, now=t0)
    assert first is not None and first.renew_at == t0 + timedelta(hours=8)
    assert cache.next_renewal() == first.renew_at
    same = await cache.identity_for(mesh, ("m", "dp-1"), ["web"], {SERVICE: {"web"}}, now=t0 + timedelta(hours=7))
    assert same is first
    renewed = await cache.identity_for(mesh, ("m", "dp-1"), ["web"], {SERVICE: {"web"}},
                                       now=t0 + timedelta(hours=8))
    assert renewed is not None and renewed is not first and renewed.serial != first.serial
    assert cache.next_renewal() == t0 + timedelta(hours=16)

    other = await cache.identity_for(mesh, ("m", "dp-2"), ["api"], now=t0 + timedelta(hours=9))
    assert other is not None and cache.next_renewal() == renewed.renew_at
    cache.forget(("m", "dp-1"))
    assert cache.next_renewal() == other.renew_at and len(cache) == 1
    cache.forget(("m", "dp-2"))
    assert cache.next_renewal() is None


async def test_identity_cache_reissues_on_changed_services_tags_or_ca(store: MemoryStore) -> None:
    backends = [builtin("a"), builtin("b")]
    mesh = await add_mesh(store, mesh_resource("m", backends, "a"))
    cache = IdentityCache(CaManager(store))
    key = ("m", "dp")
    a = await cache.identity_for(mesh, key, ["web"])
    assert await cache.identity_for(mesh, key, ["web", "web"]) is a
    b = await cache.identity_for(mesh, key, ["web", "admin"])
    assert b is not None and b is not a and b.spiffe_ids == ("spiffe://m/admin", "spiffe://m/web")
    c = await cache.identity_for(mesh, key, ["web", "admin"], {"version": {"v2"}})
    assert c is not None and c is not b and "kuma://version/v2" in c.uris
    switched = mesh_resource("m", backends, "b")
    d = await cache.identity_for(switched, key, ["web", "admin"], {"version": {"v2"}})
    assert d is not None and d.ca_fingerprint != c.ca_fingerprint
    assert await cache.identity_for(mesh_resource("m"), key, ["web"]) is None  # mTLS off
    assert cache.get(key) is None


# --- a real handshake ----------------------------------------------------------------------------------------------

def _context(server: bool, ident: Any, bundle: bytes, tmp: Path, label: str) -> ssl.SSLContext:
    cert_file, key_file = tmp / f"{label}.crt", tmp / f"{label}.key"
    cert_file.write_bytes(ident.cert_pem)
    key_file.write_bytes(ident.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cadata=bundle.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        ctx.check_hostname = False  # mesh identities are SPIFFE URIs, not host names
    return ctx


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[bool, list[str]]:
    """Whether the client got the server's greeting, and the client URI SANs the server saw."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            seen.extend(uri_sans(x509.load_der_x509_certificate(peer)))
            writer.write(b"hello\n")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), 5)
        except (ssl.SSLError, ConnectionError):
            return False, seen
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
        except (ssl.SSLError, ConnectionError):
            line = b""
        finally:
            writer.close()
        return line == b"hello\n", seen
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_handshake_between_identities_of_one_mesh(store: MemoryStore, tmp_path: Path) -> None:
    manager = CaManager(store)
    mesh = await add_mesh(store, mesh_resource("m", [builtin()], "ca-1"))
    other = await add_mesh(store, mesh_resource("other", [builtin()], "ca-1"))
    ca, other_ca = await manager.get_ca(mesh), await manager.get_ca(other)
    assert ca is not None and other_ca is not None
    web = issue_identity(ca, "m", ["web"], timedelta(hours=1))
    backend = issue_identity(ca, "m", ["backend"], timedelta(hours=1))
    intruder = issue_identity(other_ca, "other", ["web"], timedelta(hours=1))

    server_ctx = _context(True, backend, ca.trust_bundle_pem, tmp_path, "backend")
    ok, seen = await _handshake(server_ctx, _context(False, web, ca.trust_bundle_pem, tmp_path, "web"))
    assert ok and seen == ["spiffe://m/web"]

    # a client from another mesh, even one that trusts our CA, is refused by the server
    ok, seen = await _handshake(server_ctx, _context(False, intruder, ca.trust_bundle_pem, tmp_path, "intruder"))
    assert not ok and seen == []
    # and a client of another mesh does not accept our server
    ok, _ = await _handshake(server_ctx, _context(False, intruder, other_ca.trust_bundle_pem, tmp_path, "intr2"))
    assert not ok


def test_used_secrets() -> None:
    mesh = mesh_resource("m", [builtin("a"), provided({"secret": "c"}, {"secret": "k"}, name="p"),
                               provided({"inlineString": "x"}, {"secret": "k"}, name="q")], "a")
    assert used_secrets(mesh) == ["m.ca-builtin-cert-a", "m.ca-builtin-key-a", "c", "k"]
    assert used_secrets(mesh_resource("plain")) == []
