"""The read-only web GUI at /gui: static files served from the kuma-cp package, data from the public API.

The browser loads one HTML shell, a few vanilla JS modules and one CSS file from ``static/`` (no build step, no
CDN: nothing leaves the control plane's host) and then reads the same HTTP endpoints kumactl uses.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
# URL path -> (file, content type). A fixed map: no path from the request ever reaches the filesystem.
ASSETS: dict[str, tuple[str, str]] = {
    "/gui": ("index.html", "text/html; charset=utf-8"),
    "/gui/": ("index.html", "text/html; charset=utf-8"),
    "/gui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/gui/ui.js": ("ui.js", "text/javascript; charset=utf-8"),
    "/gui/zones.js": ("zones.js", "text/javascript; charset=utf-8"),
    "/gui/app.css": ("app.css", "text/css; charset=utf-8"),
    "/gui/favicon.svg": ("favicon.svg", "image/svg+xml"),  # else the browser asks for /favicon.ico: a 404
}
# The shell and its assets hold no data, so the HTTPS listener serves them without a token; the data calls
# the page makes carry the user's Bearer token like any other API client.
PUBLIC_PATHS = frozenset(ASSETS)
SECURITY_HEADERS = {
    # No inline script or style, nothing from another origin, and the API itself is same-origin.
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def _asset(request: web.Request) -> web.Response:
    name, content_type = ASSETS[request.path]
    body = (STATIC_DIR / name).read_bytes()
    return web.Response(body=body, headers={"Content-Type": content_type, **SECURITY_HEADERS})


def add_routes(app: web.Application) -> None:
    """Register before the generic /{plural} routes, which would otherwise take /gui."""
    for path in ASSETS:
        app.router.add_get(path, _asset)
