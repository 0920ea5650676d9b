"""Every way a mesh CA (or an identity certificate) cannot be had, as one exception hierarchy.

Each error names the mesh, the CA backend and the field of the Mesh resource it is about, in the Mesh YAML's
own spelling (`mtls.backends[0].conf.cert.secret`), so the API can answer with Kuma's `invalid_parameters` and
an operator reading a log line knows what to edit. Store failures (`controlplane.store.base.StoreError`, a
database outage) are not CA errors and pass through unchanged.
"""

from __future__ import annotations

from controlplane.resources.errors import InvalidParameter


class CaError(Exception):
    """Base of every CA problem; `str()` is `<field>: <reason>` plus the mesh and backend it is about."""

    def __init__(self, reason: str, *, field: str = "", mesh: str = "", backend: str = "") -> None:
        self.reason = reason
        self.field = field
        self.mesh = mesh
        self.backend = backend
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.field}: {self.reason}" if self.field else self.reason
        where = ", ".join(p for p in (f"mesh {self.mesh!r}" if self.mesh else "",
                                      f"CA backend {self.backend!r}" if self.backend else "") if p)
        return f"{text} ({where})" if where else text

    def as_invalid_parameter(self) -> InvalidParameter:
        return InvalidParameter(self.field, self.reason)


class CaNotSynced(CaError):
    """A zone under global: the mesh is global's, and its builtin CA (made on global) has not arrived over KDS."""


class CaSourceNotFound(CaError):
    """A provided CA names a secret or file that does not exist."""


class CaInvalidPem(CaError):
    """The bytes are not a PEM certificate / unencrypted PEM private key (or not base64, or unreadable)."""


class CaNotACertificateAuthority(CaError):
    """The certificate cannot sign others: no basicConstraints CA:true, or no keyCertSign key usage."""


class CaKeyMismatch(CaError):
    """The private key does not belong to the CA certificate."""


class CaExpired(CaError):
    """The CA certificate is past its notAfter (or not valid yet): nothing it signs would be accepted."""


class CaUnsupportedKey(CaError):
    """A key type Envoy cannot verify signatures of (only RSA and ECDSA are accepted)."""


class CaCorrupted(CaError):
    """A builtin CA's stored material cannot be used and cannot be repaired safely without an operator."""


class IdentityError(CaError):
    """An identity certificate cannot be issued for these services/tags (e.g. not a valid SPIFFE path)."""
