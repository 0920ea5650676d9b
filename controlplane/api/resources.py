"""CRUD for every registered resource type, on Kuma's paths. The registry drives it: a new type needs no
edit here.

  GET    /{plural}                         list (global types; mesh types across all meshes)
  GET    /{plural}/{name}                  one global resource (meshes, zones, global-secrets ...)
  PUT    /{plural}/{name}                  create (201) or update (200)
  DELETE /{plural}/{name}
  GET    /meshes/{mesh}/{plural}[/{name}]  mesh-scoped, same verbs

Updates are optimistic: `If-Match: "<version>-<created>"` (the ETag of a GET: the version and the creation
time in microseconds, since versions start at 1 again when a resource is deleted and created anew) makes a
stale write fail with 409, or 412 when the resource it read has been deleted (and maybe re-created) since.
A bare `"<version>"` is accepted too.
Without it, PUT replaces what is stored (as kumactl apply does), still never merging two writers' halves.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from aiohttp import web

from controlplane.resources.base import Registry, Resource, ResourceType, Scope
from controlplane.resources.codec import from_wire, to_wire
from controlplane.resources.documents import DocumentError, load_json, load_yaml
from controlplane.resources.errors import InvalidParameter, ResourceValidationError
from controlplane.store.base import AlreadyExists, Conflict, ListQuery, NotFound, ResourceStore

from .auth import identity_of, require_admin
from .checks import WriteChecks
from .errors import ApiError

log = logging.getLogger("kuma.api")

MAX_PAGE = 1000
DEFAULT_PAGE = 100
UNCONDITIONAL_RETRIES = 5


class ResourceApi:
    def __init__(self, store: ResourceStore, registry: Registry, *, read_only: bool = False,
                 checks: WriteChecks | None = None) -> None:
        self.store, self.registry, self.read_only, self.checks = store, registry, read_only, checks

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/meshes/{mesh}/{plural}", self.list_in_mesh)
        app.router.add_get("/meshes/{mesh}/{plural}/{name}", self.get_in_mesh)
        app.router.add_put("/meshes/{mesh}/{plural}/{name}", self.put_in_mesh)
        app.router.add_delete("/meshes/{mesh}/{plural}/{name}", self.delete_in_mesh)
        app.router.add_get("/{plural}", self.list_top)
        app.router.add_get("/{plural}/{name}", self.get_top)
        app.router.add_put("/{plural}/{name}", self.put_top)
        app.router.add_delete("/{plural}/{name}", self.delete_top)

    # --- lookups ---------------------------------------------------------------------------------------------

    def _type(self, request: web.Request, scope: Scope | None) -> ResourceType:
        plural = request.match_info["plural"]
        rtype = self.registry.by_plural(plural)
        if rtype is None or (scope is not None and rtype.scope is not scope):
            where = "inside a mesh" if scope is Scope.MESH else "at the top level"
            choices = sorted(t.plural for t in self.registry.all() if scope is None or t.scope is scope)
            raise ApiError(404, "Unknown resource type",
                           f"there is no resource type {plural!r} {where}; known: {', '.join(choices)}")
        return rtype

    async def _mesh_must_exist(self, mesh: str) -> None:
        mesh_type = self.registry.by_name("Mesh")
        assert mesh_type is not None
        try:
            await self.store.get(mesh_type, mesh)
        except NotFound:
            raise ApiError(404, "Not found", f"mesh {mesh!r} does not exist") from None

    # --- list --------------------------------------------------------------------------------------------------

    async def list_in_mesh(self, request: web.Request) -> web.Response:
        rtype = self._type(request, Scope.MESH)
        mesh = request.match_info["mesh"]
        await self._mesh_must_exist(mesh)
        return await self._list(request, rtype, mesh)

    async def list_top(self, request: web.Request) -> web.Response:
        rtype = self._type(request, None)
        return await self._list(request, rtype, None)

    async def _list(self, request: web.Request, rtype: ResourceType, mesh: str | None) -> web.Response:
        q = request.query
        size = int_param(q, "size", DEFAULT_PAGE, 1, MAX_PAGE)
        offset = int_param(q, "offset", 0, 0, None)
        labels = {k.removeprefix("labels."): v for k, v in q.items() if k.startswith("labels.")}
        result = await self.store.list(rtype, ListQuery(mesh=mesh, labels=labels, name_prefix=q.get("name"),
                                                        offset=offset, size=size))
        return web.json_response({
            "total": result.total,
            "items": [to_wire(r, redact=rtype.is_secret) for r in result.items],
            "next": next_page_url(request, result.next_offset, size),
        })

    # --- get -----------------------------------------------------------------------------------------------------

    async def get_in_mesh(self, request: web.Request) -> web.Response:
        rtype = self._type(request, Scope.MESH)
        return await self._get(request, rtype, request.match_info["name"], request.match_info["mesh"])

    async def get_top(self, request: web.Request) -> web.Response:
        rtype = self._type(request, Scope.GLOBAL)
        return await self._get(request, rtype, request.match_info["name"], "")

    async def _get(self, request: web.Request, rtype: ResourceType, name: str, mesh: str) -> web.Response:
        if rtype.is_secret:
            require_admin(request, "read secret data")
        resource = await self.store.get(rtype, name, mesh)
        return web.json_response(to_wire(resource), headers={"ETag": etag(resource)})

    # --- put -----------------------------------------------------------------------------------------------------

    async def put_in_mesh(self, request: web.Request) -> web.Response:
        rtype = self._type(request, Scope.MESH)
        return await self._put(request, rtype, request.match_info["name"], request.match_info["mesh"])

    async def put_top(self, request: web.Request) -> web.Response:
        rtype = self._type(request, Scope.GLOBAL)
        return await self._put(request, rtype, request.match_info["name"], "")

    async def _put(self, request: web.Request, rtype: ResourceType, name: str, mesh: str) -> web.Response:
        self._writable(request, rtype)
        doc = await read_document(request)
        resource = from_wire(doc, self.registry, rtype=rtype, name=name, mesh=mesh or None)
        if self.checks is not None:
            resource = self.checks.prepare(resource)
            refusal = await self.checks.not_ours(rtype, name, mesh, dict(resource.meta.labels))
            if refusal:
                raise ApiError(400, "Bad Request", refusal)
            problems = await self.checks.before_write(resource)
            if problems:
                raise ResourceValidationError(problems)
        expected = _if_match(request)
        stored, created = await self.upsert(resource, expected[0] if expected else None,
                                            created_at=expected[1] if expected else None)
        if self.checks is not None:
            try:
                await self.checks.after_write(stored)
            except Exception:
                # The write is committed: answering 500 now would tell the caller it failed. What after_write
                # prepares (a builtin CA) is made again on first use, and failures there are retried and logged.
                log.exception("resource stored, but preparing what it needs failed; it is retried on first use",
                              extra={"type": rtype.name, "mesh": mesh or None, "resource": name})
        log.info("resource created" if created else "resource updated",
                 extra={"type": rtype.name, "mesh": mesh or None, "resource": name, "version": stored.meta.version,
                        "user": identity_of(request).name})
        return web.json_response({}, status=201 if created else 200,
                                 headers={"ETag": etag(stored)})

    async def upsert(self, resource: Resource, expected: int | None, *,
                     created_at: int | None = None) -> tuple[Resource, bool]:
        """Create, or update the stored version (`expected` pins the version the caller read, `created_at` the
        incarnation: the creation time, in microseconds, of what it read)."""
        rtype, name, mesh = resource.type, resource.meta.name, resource.meta.mesh
        for _ in range(UNCONDITIONAL_RETRIES):
            try:
                current = await self.store.get(rtype, name, mesh)
            except NotFound:
                if expected is not None:
                    raise ApiError(412, "Precondition failed", f"If-Match names version {expected} but "
                                   f"{rtype.name} {name!r} does not exist") from None
                try:
                    companions = self.checks.created_with(resource) if self.checks is not None else []
                    return (await self.store.create_all([resource, *companions]))[0], True
                except AlreadyExists:
                    continue  # created concurrently: go round and update it
            _same_incarnation(current, created_at)
            version = current.meta.version if expected is None else expected
            try:
                return await self.store.update(resource.with_meta(version=version)), False
            except (Conflict, NotFound):
                if expected is not None:
                    raise
                continue  # unconditional write raced another writer: re-read and write again
        raise Conflict(f"{rtype.name} {name!r} kept changing while this write was retried; try again")

    # --- delete --------------------------------------------------------------------------------------------------

    async def delete_in_mesh(self, request: web.Request) -> web.Response:
        rtype = self._type(request, Scope.MESH)
        return await self._delete(request, rtype, request.match_info["name"], request.match_info["mesh"])

    async def delete_top(self, request: web.Request) -> web.Response:
        rtype = self._type(request, Scope.GLOBAL)
        return await self._delete(request, rtype, request.match_info["name"], "")

    async def _delete(self, request: web.Request, rtype: ResourceType, name: str, mesh: str) -> web.Response:
        self._writable(request, rtype)
        if self.checks is not None:
            not_ours = await self.checks.not_ours(rtype, name, mesh)
            if not_ours:
                raise ApiError(400, "Bad Request", not_ours)
            refusal = await self.checks.before_delete(rtype, name, mesh)
            if refusal:
                raise ApiError(409, "Resource in use", refusal)
        expected = _if_match(request)
        if expected is not None and expected[1] is not None:
            with contextlib.suppress(NotFound):  # gone: the delete below says so
                _same_incarnation(await self.store.get(rtype, name, mesh), expected[1])
        await self.store.delete(rtype, name, mesh, version=expected[0] if expected else None)
        log.info("resource deleted", extra={"type": rtype.name, "mesh": mesh or None, "resource": name,
                                            "user": identity_of(request).name})
        return web.json_response({})

    def _writable(self, request: web.Request, rtype: ResourceType) -> None:
        if self.read_only:
            raise ApiError(405, "Read-only API", "this control plane's API is read-only (apiServer.readOnly)")
        if rtype.readonly:
            raise ApiError(405, "Read-only resource type",
                           f"{rtype.name} is maintained by the control plane and cannot be written")
        require_admin(request, f"write {rtype.name}")


async def read_document(request: web.Request) -> Any:
    """The request body as JSON (or YAML when the client says so), with a field-free error when it isn't."""
    raw = await request.read()  # bounded by the app's client_max_size
    if not raw.strip():
        raise ApiError(400, "Empty body", "the request needs a resource in its body (JSON)")
    ctype = request.content_type
    try:
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
            return load_yaml(raw)
        return load_json(raw)
    except DocumentError as e:
        raise ApiError(400, "Malformed body", f"the body is {e}", [InvalidParameter("", f"the body is {e}")]) from None


def next_page_url(request: web.Request, next_offset: int | None, size: int) -> str | None:
    if next_offset is None:
        return None
    return str(request.url.update_query({"offset": str(next_offset), "size": str(size)}))


def etag(resource: Resource) -> str:
    return f'"{resource.meta.version}-{_micros(resource)}"'


def _micros(resource: Resource) -> int:
    created = resource.meta.creation_time
    return int(created.timestamp() * 1_000_000) if created is not None else 0


def _same_incarnation(current: Resource, created_at: int | None) -> None:
    if created_at is not None and _micros(current) != created_at:
        raise ApiError(412, "Precondition failed",
                       f"{current.type.name} {current.meta.name!r} was deleted and created again since the If-Match "
                       "ETag was read: GET it again and apply your change to what is there now")


def _if_match(request: web.Request) -> tuple[int, int | None] | None:
    """(version, creation time in microseconds or None) from If-Match; None without the header."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    version, _, created = text.partition("-")
    if not (version.isascii() and version.isdigit()) or (created and not (created.isascii() and created.isdigit())):
        raise ApiError(400, "Bad If-Match header",
                       f"If-Match must be the ETag of a GET (\"<version>-<created>\"), got {raw!r}")
    return int(version), int(created) if created else None


def int_param(q: Any, name: str, default: int, low: int, high: int | None) -> int:
    raw = q.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, "Bad query parameter", f"{name} must be a whole number {bound}",
                       [InvalidParameter(name, f"must be a whole number {bound}, got {raw!r}")])
    return value
