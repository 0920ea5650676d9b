"""Dataplane identity certificates (X.509-SVIDs) and the per-control-plane cache that keeps them until renewal.

The certificate follows Kuma's workload certificate (`pkg/core/ca/issuer`): empty subject; URI SANs
`spiffe://<mesh>/<service>` for every `kuma.io/service` (sorted, deduplicated), then `kuma://<tag>/<value>` for
every tag and value of the dataplane (tags sorted, values sorted and deduplicated; `kuma.io/service` included);
keyUsage digitalSignature + keyEncipherment + keyAgreement and extKeyUsage serverAuth + clientAuth (the same
certificate serves inbound and outbound mTLS). An outbound-only dataplane (no inbounds, no gateway) has no
`kuma.io/service`; as in Kuma 2.14 (`identityTags`) its identity is its `kuma.io/workload` label, as if it were
the service: `spiffe://<mesh>/<workload>` and `kuma://kuma.io/service/<workload>` (callers pass those tags, see
`controlplane.resources.dataplane.identity_tags`); without the label it has none. Default lifetime 24h
(`dpCert.rotation.expiration`); renewed when 4/5 of its lifetime, counted from issuance, has passed (Kuma's
`ExpiringSoon`: generation + 4/5 * (expiration - generation)). Where we differ: notBefore is backdated one
minute (Kuma: 10 s) and notAfter never passes the CA's own notAfter (a leaf cannot be verified past its CA
anyway, and renewal then comes early).

Keys are EC P-256, where Kuma uses RSA 2048: every dataplane gets a fresh key at every renewal, and an RSA-2048
key costs tens of milliseconds of CPU to generate against about 0.1 ms for P-256; thousands of dataplanes
renewing (or a control plane restart) would otherwise stall the control plane. P-256 handshakes are also
cheaper for Envoy and its signatures are smaller, and every TLS stack Envoy talks to supports it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane.resources.base import Resource
from controlplane.resources.fields import parse_duration

from .errors import CaExpired, IdentityError
from .manager import CaManager, MeshCa, enabled_backend
from .material import not_after_for

log = logging.getLogger("kuma.ca")

DEFAULT_LIFETIME = timedelta(hours=24)
CLOCK_SKEW = timedelta(minutes=1)
SERVICE_TAG = "kuma.io/service"
WORKLOAD_LABEL = "kuma.io/workload"
# A SPIFFE ID path segment: letters, digits, '.', '-', '_' (what go-spiffe, and so Kuma, accepts).
_SPIFFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
# RFC 3986 characters a URI path keeps as they are; anything else in a tag value is percent-encoded.
_URI_SAFE = "-._~!$&'()*+,;=:@/"

Tags = Mapping[str, Iterable[str]]


def lifetime_for(mesh: Resource) -> timedelta:
    """How long identities in this mesh live: the enabled backend's `dpCert.rotation.expiration` (24h)."""
    found = enabled_backend(mesh)
    if found is None:
        return DEFAULT_LIFETIME
    dp_cert = found[1].dp_cert
    text = dp_cert.rotation.expiration if dp_cert and dp_cert.rotation else None
    if not text:
        return DEFAULT_LIFETIME
    try:
        lifetime = parse_duration(text, clamp=True)
    except ValueError:
        return DEFAULT_LIFETIME  # validation refuses this at the API; never fail a dataplane over it
    return lifetime if lifetime > timedelta(0) else DEFAULT_LIFETIME


def spiffe_id(mesh: str, service: str) -> str:
    return f"spiffe://{mesh}/{service}"


def kuma_uri(tag: str, value: str) -> str:
    return f"kuma://{tag}/{quote(value, safe=_URI_SAFE)}"


@dataclass(frozen=True, slots=True)
class IdentityCert:
    mesh: str
    cert_pem: bytes             # the identity certificate, then the CA's intermediates if it has any
    key_pem: bytes              # PKCS#8, unencrypted
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    renew_at: datetime          # issued_at + 4/5 of (not_after - issued_at)
    spiffe_ids: tuple[str, ...]
    uris: tuple[str, ...]       # every URI SAN: the SPIFFE IDs, then kuma://<tag>/<value>
    ca_fingerprint: str
    serial: int


def _normalise_services(mesh: str, services: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted(set(services)))
    if not out:
        # Kuma 2.14 (identityTags): an outbound-only dataplane takes its identity from its kuma.io/workload
        # label; one with neither that label nor a service has none, and mTLS cannot work for it.
        raise IdentityError(f"a dataplane needs a '{SERVICE_TAG}' (an inbound or a gateway) or, outbound-only, a "
                            f"'{WORKLOAD_LABEL}' label to have an identity: add the label", mesh=mesh)
    bad = [s for s in out if not _SPIFFE_SEGMENT.match(s)]
    if bad:
        raise IdentityError(f"service name(s) {', '.join(map(repr, bad))} cannot go into a SPIFFE ID: use letters, "
                            "digits, '.', '-' and '_'", field=f'tags["{SERVICE_TAG}"]', mesh=mesh)
    return out


def _normalise_tags(tags: Tags | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not tags:
        return ()
    return tuple((k, tuple(sorted(set(tags[k])))) for k in sorted(tags) if tags[k])


def _identity_uris(mesh: str, services: tuple[str, ...], tags: tuple[tuple[str, tuple[str, ...]], ...],
                   ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ids = tuple(spiffe_id(mesh, s) for s in services)
    return ids, ids + tuple(kuma_uri(k, v) for k, values in tags for v in values)


def issue_identity(ca: MeshCa, mesh: str, services: Iterable[str], lifetime: timedelta = DEFAULT_LIFETIME, *,
                   tags: Tags | None = None, now: datetime | None = None) -> IdentityCert:
    """A new key and an identity certificate for `services` in `mesh`, signed by `ca` (see module doc)."""
    if mesh != ca.mesh:
        raise IdentityError(f"the CA of mesh {ca.mesh!r} cannot issue identities in mesh {mesh!r}", mesh=mesh,
                            backend=ca.backend)
    if lifetime <= timedelta(0):
        raise IdentityError(f"identity lifetime must be positive, got {lifetime}", mesh=mesh, backend=ca.backend)
    now = now or datetime.now(UTC)
    if ca.not_after <= now:
        raise CaExpired(f"the CA expired at {ca.not_after.isoformat()}: add a new CA backend and switch "
                        "mtls.enabledBackend to it", field="mtls.enabledBackend", mesh=mesh, backend=ca.backend)
    spiffe_ids, uris = _identity_uris(mesh, _normalise_services(mesh, services), _normalise_tags(tags))

    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = now - CLOCK_SKEW, min(not_after_for(now, lifetime), ca.not_after)
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))  # deliberately empty, as Kuma's: the identity is in the URI SANs
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        # RFC 5280 4.2.1.6: with an empty subject the SAN extension is critical (Go marks it so too).
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                       critical=True)
        .add_extension(aki, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    renew_at = now + (not_after - now) * 4 / 5
    return IdentityCert(
        mesh=mesh,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM) + ca.chain_pem,
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        not_before=not_before, not_after=not_after, issued_at=now, renew_at=renew_at,
        spiffe_ids=spiffe_ids, uris=uris, ca_fingerprint=ca.fingerprint, serial=serial,
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    ca_fingerprint: str
    services: tuple[str, ...]
    tags: tuple[tuple[str, tuple[str, ...]], ...]
    lifetime: timedelta
    cert: IdentityCert


class IdentityCache:
    """Identity certificates of the dataplanes connected to this control plane, keyed by (mesh, name).

    A certificate is reused until its `renew_at`, or until the mesh's CA, the dataplane's services or tags, or
    the mesh's certificate lifetime change, so a config rebuild for thousands of dataplanes issues only the
    certificates that are due. `next_renewal()` tells the xDS layer when to rebuild next."""

    def __init__(self, ca_manager: CaManager) -> None:
        self._cas = ca_manager
        self._entries: dict[tuple[str, str], _Entry] = {}

    async def identity_for(self, mesh: Resource, dataplane_key: tuple[str, str], services: Iterable[str],
                           tags: Tags | None = None, *, now: datetime | None = None) -> IdentityCert | None:
        """The dataplane's current identity (issued when due); None when the mesh has mTLS off."""
        ca = await self._cas.get_ca(mesh)
        if ca is None:
            self._entries.pop(dataplane_key, None)
            return None
        now = now or datetime.now(UTC)
        mesh_name = mesh.meta.name
        wanted_services = _normalise_services(mesh_name, services)
        wanted_tags = _normalise_tags(tags)
        lifetime = lifetime_for(mesh)
        entry = self._entries.get(dataplane_key)
        reason = _why_reissue(entry, ca, wanted_services, wanted_tags, lifetime, now)
        if entry is not None and reason is None:
            return entry.cert
        # No await between the check above and the store below: concurrent calls for one dataplane cannot
        # both issue.
        cert = issue_identity(ca, mesh_name, wanted_services, lifetime, tags=tags, now=now)
        self._entries[dataplane_key] = _Entry(ca.fingerprint, wanted_services, wanted_tags, lifetime, cert)
        log.info("identity certificate issued", extra={
            "mesh": mesh_name, "backend": ca.backend, "dataplane": dataplane_key[1], "reason": reason,
            "spiffe_ids": ",".join(cert.spiffe_ids), "not_after": cert.not_after.isoformat(),
            "renew_at": cert.renew_at.isoformat()})
        return cert

    def get(self, dataplane_key: tuple[str, str]) -> IdentityCert | None:
        entry = self._entries.get(dataplane_key)
        return entry.cert if entry else None

    def next_renewal(self) -> datetime | None:
        """The earliest `renew_at` of any cached identity (None when there is none)."""
        return min((e.cert.renew_at for e in self._entries.values()), default=None)

    def forget(self, dataplane_key: tuple[str, str]) -> None:
        """Drop a dataplane's identity (it disconnected or was deleted)."""
        self._entries.pop(dataplane_key, None)

    def __len__(self) -> int:
        return len(self._entries)


def _why_reissue(entry: _Entry | None, ca: MeshCa, services: tuple[str, ...],
                 tags: tuple[tuple[str, tuple[str, ...]], ...], lifetime: timedelta, now: datetime) -> str | None:
    if entry is None:
        return "the dataplane has no certificate yet"
    if entry.ca_fingerprint != ca.fingerprint:
        return "the mesh CA changed"
    if entry.services != services:
        return "the dataplane's services changed"
    if entry.tags != tags:
        return "the dataplane's tags changed"
    if entry.lifetime != lifetime:
        return "the mesh's certificate lifetime changed"
    if now >= entry.cert.renew_at:
        return "4/5 of the certificate's lifetime has passed"
    if now < entry.cert.not_before:
        return "the clock went back before the certificate's notBefore"
    return None
