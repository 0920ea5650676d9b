"""Who is calling, and what they may do.

- The plain-HTTP listener (localhost by default) treats every caller as admin, as Kuma does: reaching it
  already needs a shell on the control plane's host.
- The HTTPS listener requires a user token (`Authorization: Bearer ...`). Members of `mesh-system:admin`
  may do everything; other authenticated users may read, but never see secret data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .errors import Handler, error_response

ADMIN_GROUP = "mesh-system:admin"
IDENTITY_KEY = web.AppKey("identity", object)


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return ADMIN_GROUP in self.groups


LOCAL_ADMIN = Identity("mesh-system:admin", (ADMIN_GROUP,))
ANONYMOUS = Identity("mesh-system:anonymous", ("mesh-system:unauthenticated",))


class AuthError(Exception):
    """The credentials were missing or not acceptable; the message says why and what to do."""


Authenticator = Callable[[str], Awaitable[Identity]]

# Readable without credentials on the HTTPS listener: what a client needs to find out what it talks to.
PUBLIC_PATHS = frozenset({"/"})


def identity_of(request: web.Request) -> Identity:
    ident = request.get("identity")
    return ident if isinstance(ident, Identity) else ANONYMOUS


def local_admin_middleware() -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def local_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
        request["identity"] = LOCAL_ADMIN
        return await handler(request)

    return local_admin


def token_middleware(authenticate: Authenticator) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def token_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if not header:
            if request.method == "GET" and request.path in PUBLIC_PATHS:
                request["identity"] = ANONYMOUS
                return await handler(request)
            return error_response(401, "Unauthenticated",
                                  "this endpoint needs a user token: kumactl config control-planes add ... "
                                  "--auth-type tokens --auth-conf token=$(kumactl generate user-token ...)",
                                  headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error_response(401, "Unauthenticated", "the Authorization header must be 'Bearer <user token>'",
                                  headers={"WWW-Authenticate": "Bearer"})
        try:
            request["identity"] = await authenticate(token.strip())
        except AuthError as e:
            return error_response(401, "Unauthenticated", str(e), headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return token_auth


def require_admin(request: web.Request, action: str) -> None:
    ident = identity_of(request)
    if not ident.is_admin:
        raise web.HTTPForbidden(reason="Forbidden",
                                text=f"user {ident.name!r} may not {action}: it needs the {ADMIN_GROUP} group")
