"""Who is admin on the plain-HTTP API: loopback callers only (as Kuma's localhostIsAdmin), whatever the
listener is bound to; any other caller needs a user token, as on the HTTPS API; headers never count."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from controlplane.api.auth import (
    ADMIN_GROUP,
    AuthError,
    Identity,
    identity_of,
    is_loopback,
    local_admin_middleware,
)


def peer(address: str) -> Any:
    transport = mock.Mock()  # aiohttp's request reads the peer from its transport; this is that transport
    transport.get_extra_info.side_effect = lambda name, default=None: (address, 40000) if name == "peername" \
        else default
    return transport


async def authenticate(token: str) -> Identity:
    if token == "good":
        return Identity("alice", ("devs",))
    raise AuthError("the token is not valid")


async def whoami(request: web.Request) -> web.Response:
    ident = identity_of(request)
    return web.Response(text=f"{ident.name} admin={ident.is_admin}")


async def call(address: str, headers: dict[str, str] | None = None) -> web.Response:
    request = make_mocked_request("GET", "/meshes", headers=headers or {}, transport=peer(address))
    middleware = local_admin_middleware(authenticate)
    return await middleware(request, whoami)  # type: ignore[no-any-return,operator]


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
async def test_loopback_callers_are_admin(address: str) -> None:
    response = await call(address)
    assert response.status == 200 and response.text == f"{ADMIN_GROUP} admin=True"


@pytest.mark.parametrize("address", ["198.18.0.7", "10.0.0.5", "::ffff:10.0.0.5", "fd00::1", ""])
async def test_other_callers_need_a_token_and_headers_do_not_make_them_local(address: str) -> None:
    refused = await call(address, {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"})
    assert refused.status == 401 and "user token" in refused.text
    assert (await call(address, {"Authorization": "Bearer bad"})).status == 401
    ok = await call(address, {"Authorization": "Bearer good"})
    assert ok.status == 200 and ok.text == "alice admin=False"


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.1.2.3")
    assert not any(is_loopback(a) for a in ("0.0.0.0", "::", "10.0.0.1", "localhost", None, "", "::ffff:8.8.8.8"))
