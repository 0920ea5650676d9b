"""Who is calling, and what they may do.

- The plain-HTTP listener (localhost by default) treats loopback callers as admin, as Kuma does
  (`localhostIsAdmin`): reaching it from there already needs a shell on the control plane's host. Any other
  caller (the listener bound to another interface) is treated as on the HTTPS listener: a user token or 401.
  Only the connection's peer address counts, never a header such as X-Forwarded-For.
- The HTTPS listener requires a user token (`Authorization: Bearer ...`). Members of `mesh-system:admin`
  may do everything; other authenticated users may read, but never see secret data.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from controlplane.gui import PUBLIC_PATHS as GUI_PATHS

from .errors import Handler, error_response

ADMIN_GROUP = "mesh-system:admin"


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return ADMIN_GROUP in self.groups


IDENTITY_KEY = web.RequestKey("identity", Identity)  # who the request comes from (set by the middlewares)
LOCAL_ADMIN = Identity("mesh-system:admin", (ADMIN_GROUP,))
ANONYMOUS = Identity("mesh-system:anonymous", ("mesh-system:unauthenticated",))


class AuthError(Exception):
    """The credentials were missing or not acceptable; the message says why and what to do."""


Authenticator = Callable[[str], Awaitable[Identity]]

# Readable without credentials on the HTTPS listener: what a client needs to find out what it talks to.
PUBLIC_PATHS = frozenset({"/", *GUI_PATHS})


def identity_of(request: web.Request) -> Identity:
    ident = request.get(IDENTITY_KEY)
    return ident if isinstance(ident, Identity) else ANONYMOUS


def is_loopback(address: str | None) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1); False for anything else."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def local_admin_middleware(authenticate: Authenticator) -> web.middleware:  # type: ignore[valid-type]
    by_token = token_middleware(authenticate)

    @web.middleware
    async def local_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_loopback(request.remote):
            request[IDENTITY_KEY] = LOCAL_ADMIN
            return await handler(request)
        return await by_token(request, handler)  # type: ignore[misc]  # aiohttp types a middleware loosely

    return local_admin


def token_middleware(authenticate: Authenticator) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def token_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if not header:
            if request.method == "GET" and request.path in PUBLIC_PATHS:
                request[IDENTITY_KEY] = ANONYMOUS
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
            request[IDENTITY_KEY] = await authenticate(token.strip())
        except AuthError as e:
            return error_response(401, "Unauthenticated", str(e), headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return token_auth


def require_admin(request: web.Request, action: str) -> None:
    ident = identity_of(request)
    if not ident.is_admin:
        raise web.HTTPForbidden(reason="Forbidden",
                                text=f"user {ident.name!r} may not {action}: it needs the {ADMIN_GROUP} group")
