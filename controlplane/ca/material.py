"""Parsed CA material of one backend, and the checks every CA certificate/key pair must pass.

Shared by the builtin and provided backends: a certificate list (the signing CA first, then whatever chain the
operator gave), the signing key, and the checks Kuma's provided-CA validator makes (X509-SVID: every
certificate is a CA with keyCertSign and without keyAgreement), plus the ones it leaves to Envoy's NACK: the key
belongs to the certificate, the certificate is within its validity, the key is one Envoy can verify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from .errors import (
    CaError,
    CaExpired,
    CaInvalidPem,
    CaKeyMismatch,
    CaNotACertificateAuthority,
    CaUnsupportedKey,
)

# The key types a mesh CA may have: Envoy (BoringSSL) verifies RSA and ECDSA certificate signatures.
CaKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

ErrorFactory = Callable[[type[CaError], str, str], CaError]  # (class, field, reason) -> error

# The latest notAfter X.509 can express (RFC 5280 4.1.2.5: GeneralizedTime 99991231235959Z, "no well-defined
# expiration date"); Python's datetime ends at the same year.
X509_MAX_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def not_after_for(now: datetime, validity: timedelta) -> datetime:
    """`now + validity`, clamped to X.509's last date: a validity of 100000y stored before the API bounded
    durations must give a certificate that never expires, not an OverflowError in the reconciler."""
    if validity >= X509_MAX_NOT_AFTER - now:
        return X509_MAX_NOT_AFTER
    return now + validity


@dataclass(frozen=True, slots=True)
class CaMaterial:
    """One backend's CA, parsed. `token` is what it was parsed from (secret versions, file stat, inline
    bytes): equal token, equal material, so the parse is reused."""

    backend: str
    type: str
    certs: tuple[x509.Certificate, ...]  # [0] signs identities; the rest is the chain as given
    key: CaKey = field(repr=False)
    token: Hashable = field(repr=False)

    @property
    def cert(self) -> x509.Certificate:
        return self.certs[0]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def chain_pem(self) -> bytes:
        """Intermediates an identity certificate should carry: every given certificate that is not
        self-issued (empty for a root CA, which is every builtin CA)."""
        return b"".join(cert_pem(c) for c in self.certs if c.issuer != c.subject)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """Unencrypted PEM; RSA keys as PKCS#1 (`RSA PRIVATE KEY`), as Kuma stores them, EC keys as SEC1."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def spki(key_or_cert: CertificateIssuerPrivateKeyTypes | x509.Certificate) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_certs(data: bytes, field_path: str, err: ErrorFactory) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        if b"-----BEGIN CERTIFICATE-----" in data:
            raise err(CaInvalidPem, field_path, f"holds a PEM certificate that does not parse ({e})") from None
        certs = []
    if not certs:
        raise err(CaInvalidPem, field_path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the CA "
                                            "certificate in PEM")
    return certs


def parse_key(data: bytes, field_path: str, err: ErrorFactory) -> CaKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise err(CaInvalidPem, field_path, "holds an encrypted private key: give it unencrypted (the control "
                                            "plane signs certificates unattended)") from None
    except ValueError:
        raise err(CaInvalidPem, field_path, "holds no PEM private key (-----BEGIN PRIVATE KEY----- or "
                                            "-----BEGIN RSA/EC PRIVATE KEY-----)") from None
    except Exception as e:  # unsupported algorithms surface as UnsupportedAlgorithm
        raise err(CaInvalidPem, field_path, f"holds a private key that cannot be used ({e})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise err(CaUnsupportedKey, field_path, f"holds a {type(key).__name__.removeprefix('_')} key: a mesh CA "
                                                "key must be RSA or ECDSA (what Envoy verifies)")
    return key


def check_ca_certs(certs: list[x509.Certificate], field_path: str, err: ErrorFactory) -> list[CaError]:
    """Kuma's provided-CA rules (X509-SVID 4.1, 4.3, appendix A) for every certificate given; one error per
    problem, with `[i]` on the field when there is more than one certificate."""
    problems: list[CaError] = []
    for i, cert in enumerate(certs):
        path = f"{field_path}[{i}]" if len(certs) > 1 else field_path
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = bc.ca
        except x509.ExtensionNotFound:
            is_ca = False
        except ValueError as e:
            problems.append(err(CaInvalidPem, path, f"has extensions that do not parse ({e})"))
            continue
        if not is_ca:
            problems.append(err(CaNotACertificateAuthority, path,
                                f"certificate {describe(cert)} is not a CA: basic constraint 'CA' must be set to "
                                "'true' (see X509-SVID: 4.1. Basic Constraints)"))
        try:
            ku: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        if ku is None or not ku.key_cert_sign:
            problems.append(err(CaNotACertificateAuthority, path,
                                f"certificate {describe(cert)}: key usage extension 'keyCertSign' must be set "
                                "(see X509-SVID: 4.3. Key Usage)"))
        elif ku.key_agreement:
            problems.append(err(CaNotACertificateAuthority, path,
                                f"certificate {describe(cert)}: key usage extension 'keyAgreement' must NOT be "
                                "set (see X509-SVID: Appendix A. X.509 Field Reference)"))
    return problems


def check_pair(cert: x509.Certificate, key: CaKey, cert_path: str, key_path: str, now: datetime,
               err: ErrorFactory) -> list[CaError]:
    problems: list[CaError] = []
    if spki(key) != spki(cert):
        problems.append(err(CaKeyMismatch, key_path,
                            f"private key does not belong to the CA certificate in {cert_path} (their public keys "
                            "differ): give the key the certificate was issued for"))
    if cert.not_valid_after_utc <= now:
        problems.append(err(CaExpired, cert_path,
                            f"CA certificate {describe(cert)} expired at {cert.not_valid_after_utc.isoformat()}: "
                            "add a new CA backend and switch mtls.enabledBackend to it"))
    elif cert.not_valid_before_utc > now:
        problems.append(err(CaExpired, cert_path,
                            f"CA certificate {describe(cert)} is not valid before "
                            f"{cert.not_valid_before_utc.isoformat()} (check this host's clock)"))
    return problems


def describe(cert: x509.Certificate) -> str:
    try:
        subject = cert.subject.rfc4514_string()
    except ValueError:
        subject = "?"
    return repr(subject or f"serial {cert.serial_number:x}")
