"""API users and groups (Kuma's model).

A user token names a user (`Name`) and the groups it belongs to (`Groups`). On top of those, every caller
of the API is in exactly one of two implicit groups:
- `mesh-system:authenticated`: presented a valid user token;
- `mesh-system:unauthenticated`: presented none (the user is then `mesh-system:anonymous`).

`mesh-system:admin` is the administrators' group: its members may read secrets, write every resource and
generate every kind of token (user, dataplane, zone). On first start the control plane issues a 10-year token
for the user `mesh-system:admin` in that group and stores it in the GlobalSecret `admin-user-token`
(`ensure_admin_user_token`); an operator on the control plane's host reads it from there
(`curl localhost:5681/global-secrets/admin-user-token`) to configure kumactl. Requests the control plane
makes itself run as `mesh-system:control-plane`.

Which other groups may do what is the API layer's policy; this module only names the groups.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from controlplane.resources.base import Meta, Resource
from controlplane.resources.secret import GLOBAL_SECRET, SecretSpec
from controlplane.store.base import AlreadyExists, NotFound, ResourceStore

from .claims import UserClaims
from .issuer import TokenIssuer

log = logging.getLogger("kuma.tokens")

ADMIN_GROUP = "mesh-system:admin"
AUTHENTICATED_GROUP = "mesh-system:authenticated"
UNAUTHENTICATED_GROUP = "mesh-system:unauthenticated"
ADMIN_USER = "mesh-system:admin"
ANONYMOUS_USER = "mesh-system:anonymous"
CONTROL_PLANE_USER = "mesh-system:control-plane"

ADMIN_TOKEN_SECRET = "admin-user-token"
ADMIN_TOKEN_VALID_FOR = timedelta(days=3650)


def is_admin(claims: UserClaims | None) -> bool:
    return claims is not None and ADMIN_GROUP in claims.groups


def effective_groups(claims: UserClaims | None) -> list[str]:
    """The token's groups plus the implicit authenticated/unauthenticated group."""
    if claims is None:
        return [UNAUTHENTICATED_GROUP]
    return [*claims.groups, AUTHENTICATED_GROUP]


async def ensure_admin_user_token(store: ResourceStore, issuer: TokenIssuer) -> tuple[str, bool]:
    """The admin user token from GlobalSecret `admin-user-token`, issued and stored on first call.

    Returns (token, created). Two control planes racing both issue one; the store keeps the first and the
    other returns it.
    """
    try:
        existing = await store.get(GLOBAL_SECRET, ADMIN_TOKEN_SECRET)
    except NotFound:
        pass
    else:
        assert isinstance(existing.spec, SecretSpec)
        return existing.spec.value().decode(), False
    token = await issuer.issue_user_token(ADMIN_USER, [ADMIN_GROUP], ADMIN_TOKEN_VALID_FOR)
    try:
        await store.create(Resource(GLOBAL_SECRET, Meta(name=ADMIN_TOKEN_SECRET), SecretSpec.of(token.encode())))
    except AlreadyExists:
        return await ensure_admin_user_token(store, issuer)
    log.info("admin user token created", extra={"kind": "user", "secret": ADMIN_TOKEN_SECRET,
                                                 "user": ADMIN_USER})
    return token, True
