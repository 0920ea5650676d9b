"""Every way a token is refused, as one exception hierarchy.

Each message says what is wrong and how to fix it, because it ends up in front of an operator (kuma-dp's
log, kumactl's output). Store failures (`controlplane.store.base.StoreError`) are not token errors and pass
through unchanged: a database outage is not a reason to tell a dataplane its token is bad.
"""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.resources.errors import InvalidParameter


class TokenError(Exception):
    """Base of every token rejection; `str()` is a message for a person."""


class TokenRequestError(TokenError, ValueError):
    """A request to issue (or revoke) a token has bad parameters; `invalid` names each one with the API's
    field name (`validFor`, `mesh`, ...) so the API can answer 400 with Kuma's `invalid_parameters`."""

    def __init__(self, message: str, invalid: Sequence[InvalidParameter] = ()) -> None:
        super().__init__(message)
        self.invalid = list(invalid)


class MalformedToken(TokenError):
    """Not a JWT, or a JWT whose header or claims do not have the shape our tokens have."""


class UnsupportedAlgorithm(TokenError):
    """Signed with anything but RS256 (`none`, HS256 and the rest are refused before any key is read)."""


class MissingKeyId(TokenError):
    """No `kid` header, or one that is not a signing key serial number."""


class SigningKeyNotFound(TokenError):
    """The `kid` names a signing key that does not exist (never did, or was rotated away and deleted)."""


class InvalidSignature(TokenError):
    """The signature does not match the signing key the `kid` names."""


class TokenExpired(TokenError):
    pass


class TokenNotYetValid(TokenError):
    pass


class TokenRevoked(TokenError):
    pass


class IdentityMismatch(TokenError):
    """A valid token used for something it was not issued for (another mesh, name, tags, zone or scope)."""
