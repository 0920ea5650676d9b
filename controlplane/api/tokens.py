"""Token endpoints (Kuma's): POST /tokens/dataplane, /tokens/zone, /tokens/user -> the token as text.

Only admins may issue tokens. The HTTPS listener authenticates callers with user tokens through
`user_authenticator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from aiohttp import web

from controlplane.resources.errors import InvalidParameter
from controlplane.resources.fields import parse_duration
from controlplane.tokens.errors import TokenError, TokenRequestError
from controlplane.tokens.service import TokenService

from .auth import Authenticator, AuthError, Identity, require_admin
from .errors import ApiError
from .resources import read_document


def _fields(doc: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise ApiError(400, "Bad request", "the body must be a JSON object")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ApiError(400, "Bad request", f"unknown fields {', '.join(unknown)}",
                       [InvalidParameter(k, f"unknown field: this endpoint takes {', '.join(sorted(allowed))}")
                        for k in unknown])
    return doc


def _valid_for(doc: Mapping[str, Any], default: timedelta | None) -> timedelta | None:
    raw = doc.get("validFor")
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str):
        raise ApiError(400, "Bad request", "validFor must be a duration string",
                       [InvalidParameter("validFor", "must be a duration such as '24h' or '30d'")])
    try:
        return parse_duration(raw)
    except ValueError as e:
        raise ApiError(400, "Bad request", str(e), [InvalidParameter("validFor", str(e))]) from None


class TokenApi:
    def __init__(self, tokens: TokenService) -> None:
        self.issuer = tokens

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/tokens/dataplane", self.dataplane)
        app.router.add_post("/tokens/zone", self.zone)
        app.router.add_post("/tokens/user", self.user)

    async def _issue(self, request: web.Request, kind: str, make: Any) -> web.Response:
        require_admin(request, f"generate {kind} tokens")
        try:
            token = await make()
        except TokenRequestError as e:
            raise ApiError(400, f"Cannot issue a {kind} token", str(e), e.invalid) from None
        return web.Response(text=token, content_type="text/plain")

    async def dataplane(self, request: web.Request) -> web.Response:
        doc = _fields(await read_document(request), {"mesh", "name", "tags", "type", "validFor"})
        valid_for = _valid_for(doc, None)
        kwargs: dict[str, Any] = {"mesh": doc.get("mesh", ""), "name": doc.get("name"),
                                  "tags": doc.get("tags"), "type": doc.get("type") or "dataplane"}
        if valid_for is not None:
            kwargs["valid_for"] = valid_for
        return await self._issue(request, "dataplane", lambda: self.issuer.issue_dataplane_token(**kwargs))

    async def zone(self, request: web.Request) -> web.Response:
        doc = _fields(await read_document(request), {"zone", "scope", "validFor"})
        valid_for = _valid_for(doc, None)
        kwargs: dict[str, Any] = {"zone": doc.get("zone", ""), "scope": doc.get("scope")}
        if valid_for is not None:
            kwargs["valid_for"] = valid_for
        return await self._issue(request, "zone", lambda: self.issuer.issue_zone_token(**kwargs))

    async def user(self, request: web.Request) -> web.Response:
        doc = _fields(await read_document(request), {"name", "groups", "validFor"})
        valid_for = _valid_for(doc, None)
        return await self._issue(request, "user", lambda: self.issuer.issue_user_token(
            doc.get("name", ""), doc.get("groups") or [], valid_for))  # type: ignore[arg-type]


def user_authenticator(tokens: TokenService) -> Authenticator:
    async def authenticate(token: str) -> Identity:
        try:
            claims = await tokens.validate_user_token(token)
        except TokenError as e:
            raise AuthError(str(e)) from None
        return Identity(claims.name, tuple(claims.groups))

    return authenticate
