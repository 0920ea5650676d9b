"""The builtin CA: a self-signed root per mesh and backend, made on first use and kept in two mesh Secrets.

Names, subject and extensions follow Kuma (`pkg/plugins/ca/builtin`): secrets `<mesh>.ca-builtin-cert-<backend>`
and `<mesh>.ca-builtin-key-<backend>` (the mesh prefix keeps names unique when secrets are Kubernetes objects);
RSA of `caCert.RSAbits` bits (default 2048), valid `caCert.expiration` (default 10 years); subject
O=Kuma, OU=Mesh, CN=<mesh>; URI SAN `spiffe://<mesh>` (the trust domain); basicConstraints CA:true, here with
pathlen 0 (it signs only identities); keyUsage keyCertSign + cRLSign.

Race safety (several control planes on one store, a crash half-way). Kuma writes the certificate first and the
key second, so a reader can see a certificate without its key. Here the **key secret is the source of truth and
the certificate is derived from it**:

1. the key is written first (create; AlreadyExists means another control plane won: its key is used, never a
   second one);
2. the certificate is then made from the *stored* key and created; AlreadyExists means another control plane
   made one from the same key: it is used.

So a certificate is visible only once its key is, and both control planes in a race end with the same pair.
A reader that finds a half-written pair repairs it from the key: a key without certificate (crash between the
writes, or a creator still signing) gets a certificate made from that key; a certificate whose key is missing
(deleted) gets a new key, and a certificate that does not match the stored key (or does not parse) is replaced
by an update conditioned on the version that was read, so two repairing control planes cannot overwrite each
other (Conflict -> read again). A key secret that does not hold a usable key is never replaced automatically
(it may be an operator's mistake that is better fixed than papered over): that is a `CaCorrupted` error.

`caCert.RSAbits`/`caCert.expiration` apply when the CA is created; changing them later does not re-create it
(as in Kuma): to rotate, add a backend and switch `mtls.enabledBackend` to it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from controlplane.resources.base import Meta, Resource
from controlplane.resources.fields import parse_duration
from controlplane.resources.mesh import MtlsBackend
from controlplane.resources.secret import SECRET, SecretSpec
from controlplane.store.base import AlreadyExists, Conflict, MeshNotFound, NotFound, ResourceStore

from .errors import CaCorrupted, CaError, CaExpired
from .material import CaKey, CaMaterial, cert_pem, check_pair, key_pem, not_after_for, parse_certs, parse_key, spki

log = logging.getLogger("kuma.ca")

DEFAULT_RSA_BITS = 2048
DEFAULT_CA_VALIDITY = timedelta(days=3650)  # Kuma: 10 * 365 * 24h
CLOCK_SKEW = timedelta(minutes=1)           # Kuma backdates by 10 s; a minute tolerates worse clocks
MAX_REPAIR_STEPS = 6


def cert_secret_name(mesh: str, backend: str) -> str:
    return f"{mesh}.ca-builtin-cert-{backend}"


def key_secret_name(mesh: str, backend: str) -> str:
    return f"{mesh}.ca-builtin-key-{backend}"


def generate_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_ca_cert(mesh: str, key: CaKey, validity: timedelta, now: datetime | None = None) -> x509.Certificate:
    """A self-signed root for `mesh`, shaped like Kuma's builtin CA certificate."""
    now = now or datetime.now(UTC)
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kuma"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Mesh"),
        x509.NameAttribute(NameOID.COMMON_NAME, mesh),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after_for(now, validity))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{mesh}")]),
                       critical=False)
        # Go's x509 adds the SKI to CA certificates by itself, so Kuma's carry one too.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def builtin_settings(mesh: str, backend: MtlsBackend, path: str) -> tuple[int, timedelta]:
    try:
        ca_cert = backend.builtin_conf().ca_cert
        bits = (ca_cert.rsa_bits if ca_cert else None) or DEFAULT_RSA_BITS
        expiration = ca_cert.expiration if ca_cert else None
        validity = parse_duration(expiration, clamp=True) if expiration else DEFAULT_CA_VALIDITY
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise CaError(f"is not a builtin CA configuration: {e}", field=f"{path}.conf", mesh=mesh,
                      backend=backend.name) from None
    return bits, validity


class BuiltinCa:
    """Reads (creating or repairing when needed) the builtin CA of one backend; the manager holds the lock
    that keeps one control plane from generating the same key twice."""

    def __init__(self, store: ResourceStore) -> None:
        self._store = store

    async def _get(self, name: str, mesh: str) -> Resource | None:
        try:
            return await self._store.get(SECRET, name, mesh)
        except NotFound:
            return None

    async def read(self, mesh: str, backend: MtlsBackend, path: str, cached: CaMaterial | None,
                   ) -> tuple[CaMaterial | None, tuple[Resource | None, Resource | None]]:
        """The stored CA if the pair is complete and consistent (else None and what was read)."""
        key_res = await self._get(key_secret_name(mesh, backend.name), mesh)
        cert_res = await self._get(cert_secret_name(mesh, backend.name), mesh)
        if key_res is None or cert_res is None:
            return None, (key_res, cert_res)
        token = _token(key_res, cert_res)
        if cached is not None and cached.token == token:
            return cached, (key_res, cert_res)
        key = self._key(mesh, backend, path, key_res)
        try:
            certs = parse_certs(_value(cert_res), "", _plain)
        except CaError:
            return None, (key_res, cert_res)
        if spki(certs[0]) != spki(key):
            return None, (key_res, cert_res)
        now = datetime.now(UTC)
        expired = [p for p in check_pair(certs[0], key, "", "", now, _plain) if isinstance(p, CaExpired)]
        if expired:
            raise CaExpired(
                f"the builtin CA in secret {cert_res.meta.name!r} is not valid now ({expired[0].reason}); "
                "nothing it signs would be accepted",
                field=f"{path}.conf.caCert.expiration", mesh=mesh, backend=backend.name)
        return CaMaterial(backend.name, "builtin", (certs[0],), key, token), (key_res, cert_res)

    def _key(self, mesh: str, backend: MtlsBackend, path: str, key_res: Resource) -> CaKey:
        try:
            return parse_key(_value(key_res), "", _plain)
        except CaError as e:
            raise CaCorrupted(
                f"secret {key_res.meta.name!r} {e.reason}: it is the builtin CA's private key and cannot be "
                f"recovered; delete it and secret {cert_secret_name(mesh, backend.name)!r} to make a new CA (every "
                "dataplane of the mesh then gets new certificates)",
                field=path, mesh=mesh, backend=backend.name) from None

    async def ensure(self, mesh: str, backend: MtlsBackend, path: str, cached: CaMaterial | None) -> CaMaterial:
        """The CA, created or repaired as the module doc says. Call under the manager's per-backend lock."""
        bits, validity = builtin_settings(mesh, backend, path)
        extra = {"mesh": mesh, "backend": backend.name}
        for _ in range(MAX_REPAIR_STEPS):
            material, (key_res, cert_res) = await self.read(mesh, backend, path, cached)
            if material is not None:
                return material
            try:
                if key_res is None:
                    if cert_res is not None:
                        log.warning("builtin CA certificate has no key secret: making a new CA", extra=extra)
                    new_key = await asyncio.to_thread(generate_key, bits)
                    await self._create(key_secret_name(mesh, backend.name), mesh, key_pem(new_key))
                    continue
                key = self._key(mesh, backend, path, key_res)
                data = cert_pem(make_ca_cert(mesh, key, validity))
                if cert_res is None:
                    await self._create(cert_secret_name(mesh, backend.name), mesh, data)
                    log.info("builtin CA created", extra={**extra, "bits": key.key_size,
                                                          "secret": cert_secret_name(mesh, backend.name)})
                else:
                    log.warning("builtin CA certificate does not match its key secret (or does not parse): "
                                "replacing it with one made from the stored key", extra=extra)
                    await self._store.update(Resource(SECRET, cert_res.meta, SecretSpec.of(data)))
            except (AlreadyExists, Conflict, NotFound):
                # Another control plane wrote (or removed) this secret first: read again and use what is there.
                log.info("builtin CA secret was written concurrently, reading it again", extra=extra)
            except MeshNotFound:
                raise CaError("the mesh was deleted while its CA was being created", mesh=mesh,
                              backend=backend.name) from None
        raise CaCorrupted(f"the builtin CA secrets kept changing while being read ({MAX_REPAIR_STEPS} attempts); "
                          "another writer may be replacing them", field=path, mesh=mesh, backend=backend.name)

    async def _create(self, name: str, mesh: str, data: bytes) -> None:
        await self._store.create(Resource(SECRET, Meta(name=name, mesh=mesh), SecretSpec.of(data)))


def _value(res: Resource) -> bytes:
    assert isinstance(res.spec, SecretSpec)
    return res.spec.value()


def _token(key_res: Resource, cert_res: Resource) -> tuple[object, ...]:
    return ("builtin", key_res.meta.version, cert_res.meta.version,
            getattr(key_res.spec, "data", None), getattr(cert_res.spec, "data", None))


def _plain(cls: type[CaError], field: str, reason: str) -> CaError:
    return cls(reason, field=field)
