"""The /gui routes: the assets are served with strict headers, on the token listener without a token, and the
shell holds no inline script (the Content-Security-Policy forbids it)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controlplane import gui
from controlplane.api.auth import AuthError, Identity
from controlplane.api.server import ApiContext, build_app
from controlplane.config import Config
from controlplane.resources import REGISTRY
from controlplane.store.memory import MemoryStore


async def refuse_every_token(token: str) -> Identity:
    raise AuthError("the token is not valid: sign in again with a fresh user token")


@pytest.fixture(params=[True, False], ids=["http-admin", "https-token"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[TestClient[Any, Any]]:
    store = MemoryStore()
    await store.start()
    ctx = ApiContext(config=Config(), store=store, registry=REGISTRY, instance_id="test",
                     authenticate=refuse_every_token, ssl_context=None, extra_routes=[])
    c: TestClient[Any, Any] = TestClient(TestServer(build_app(ctx, admin=request.param)))
    await c.start_server()
    yield c
    await c.close()
    await store.close()


@pytest.mark.parametrize("path", sorted(gui.ASSETS))
async def test_every_asset_is_served_with_strict_headers(client: TestClient[Any, Any], path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    body = await resp.read()
    assert body == (gui.STATIC_DIR / gui.ASSETS[path][0]).read_bytes()
    assert resp.headers["Content-Type"] == gui.ASSETS[path][1]
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_shell_is_public_but_data_needs_a_token_on_the_https_listener(
        client: TestClient[Any, Any], request: pytest.FixtureRequest) -> None:
    admin_listener = request.node.callspec.params["client"]
    assert (await client.get("/gui")).status == 200
    meshes = await client.get("/meshes")
    bad = await client.get("/meshes", headers={"Authorization": "Bearer nope"})
    if admin_listener:
        assert meshes.status == 200
    else:  # the GUI shows these as its 401 state and offers the token login
        assert meshes.status == 401 and bad.status == 401
        assert "fresh user token" in (await bad.json())["details"]


def test_shell_has_no_inline_script_or_style() -> None:
    html = (gui.STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "<style" not in html and " style=" not in html
    assert re.findall(r"<[^>]*\son[a-z]+=", html) == []  # no inline event handlers


def test_assets_ship_with_the_package() -> None:
    # The wheel packaging/build.py installs takes non-.py files only through pyproject's package-data.
    pyproject = tomllib.loads((Path(gui.__file__).parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["controlplane.gui"]
    for name, _ in gui.ASSETS.values():
        assert (gui.STATIC_DIR / name).is_file()
        assert any(fnmatch.fnmatch(f"static/{name}", g) for g in globs), f"static/{name} is not in package-data"
