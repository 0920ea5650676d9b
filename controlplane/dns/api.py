"""`GET /meshes/{mesh}/vips`: one mesh's VIP map, for kuma-dp (its `.mesh` stub) and tools.

    {"mesh": "default", "version": "3f1c2a9b0d4e5f60",
     "vips": {"backend": "127.240.0.1"}, "tproxyVips": {"backend": "240.0.0.1"},
     "names": {"backend.mesh": "backend"}, "unallocated": {...only when a range is exhausted...}}

The ETag is the version. Keeping current by polling: `If-None-Match: "<version>"` answers 304 while nothing
changed; by long poll: `?version=<version>&wait=30s` holds the request until the map differs from that
version (or the wait ends, then the unchanged map), at most 60 s.
"""

from __future__ import annotations

from aiohttp import web

from controlplane.api.errors import ApiError
from controlplane.resources.errors import InvalidParameter
from controlplane.resources.fields import parse_duration
from controlplane.resources.mesh import MESH
from controlplane.store.base import NotFound, ResourceStore

from .vips import VipView

MAX_WAIT = 60.0


class VipApi:
    def __init__(self, store: ResourceStore, view: VipView) -> None:
        self.store, self.view = store, view

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/meshes/{mesh}/vips", self.mesh_vips)

    async def mesh_vips(self, request: web.Request) -> web.StreamResponse:
        mesh = request.match_info["mesh"]
        try:
            await self.store.get(MESH, mesh)
        except NotFound:
            raise ApiError(404, "Not found", f"mesh {mesh!r} does not exist") from None
        current = self.view.mesh(mesh)
        since = request.query.get("version")
        wait_text = request.query.get("wait")
        if since is not None and wait_text:
            try:
                wait = parse_duration(wait_text).total_seconds()
            except ValueError as e:
                raise ApiError(400, "Bad request", str(e), [InvalidParameter("wait", str(e))]) from None
            current = await self.view.wait_changed(mesh, since, min(max(wait, 0.0), MAX_WAIT))
        etag = f'"{current.version}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.json_response(current.to_json(), headers=headers)
