"""`kumactl get <plural>` (list) and `kumactl get <singular> NAME` (one resource)."""

from __future__ import annotations

import urllib.parse
from typing import Any

import click

from controlplane.resources import load_all
from controlplane.resources.base import ResourceType, Scope

from .client import ApiClient, ApiError
from .context import global_options, mesh_option, state
from .errors import KumactlError
from .output import OUTPUT_OPTION, render
from .tables import resource_table, zones_table


def resolve_type(word: str) -> ResourceType:
    """A type by singular, plural or type name; an unknown word is a usage error listing the known ones."""
    registry = load_all()
    rtype = registry.lookup(word)
    if rtype is None:
        known = ", ".join(sorted(t.plural for t in registry.all()))
        raise click.UsageError(f"unknown resource type {word!r}; known types: {known}")
    return rtype


def collection_path(rtype: ResourceType, mesh: str) -> str:
    if rtype.scope is Scope.MESH:
        return f"/meshes/{urllib.parse.quote(mesh, safe='')}/{rtype.plural}"
    return f"/{rtype.plural}"


def item_path(rtype: ResourceType, mesh: str, name: str) -> str:
    return f"{collection_path(rtype, mesh)}/{urllib.parse.quote(name, safe='')}"


def describe(rtype: ResourceType, name: str, mesh: str) -> str:
    where = f' in mesh "{mesh}"' if rtype.scope is Scope.MESH else ""
    return f'{rtype.name} "{name}"{where}'


def fetch_one(client: ApiClient, rtype: ResourceType, mesh: str, name: str) -> Any:
    try:
        return client.get(item_path(rtype, mesh, name))
    except ApiError as e:
        if e.not_found:
            raise KumactlError(f"there is no {describe(rtype, name, mesh)}") from None
        raise


def fetch_list(client: ApiClient, rtype: ResourceType, mesh: str, size: int | None,
               offset: int | None) -> dict[str, Any]:
    """All items (following `next`), or one page when --size is given."""
    path = collection_path(rtype, mesh)
    query: dict[str, Any] = {"size": size, "offset": offset}
    if size is not None:
        page = client.get(path, query)
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise KumactlError(f"unexpected answer from {client.url}{path}: not a list")
        return {"total": page.get("total"), "items": page["items"], "next": page.get("next")}
    items: list[Any] = []
    total = None
    for page in client.list_all(path, query):
        items.extend(page["items"])
        total = page.get("total", total)
    return {"total": total if total is not None else len(items), "items": items, "next": None}


def _next_offset(next_url: Any) -> str | None:
    if not next_url:
        return None
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(str(next_url)).query).get("offset")
    return values[0] if values else None


@click.command("get")
@click.argument("type_word", metavar="TYPE")
@click.argument("name", required=False)
@mesh_option
@OUTPUT_OPTION
@click.option("--size", type=click.IntRange(1, 1000), default=None,
              help="return one page of at most this many items (default: all, page by page)")
@click.option("--offset", type=click.IntRange(0), default=None, help="start the page at this item")
@global_options
def get_cmd(type_word: str, name: str | None, mesh: str, output: str, size: int | None,
            offset: int | None) -> None:
    """Show resources: `get meshes`, `get dataplanes -m M`, `get mesh NAME -o yaml`.

    TYPE is a plural (list), or a singular followed by a NAME (one resource).
    """
    rtype = resolve_type(type_word)
    if name is None and type_word == rtype.singular and rtype.singular != rtype.plural:
        raise click.UsageError(f"`kumactl get {rtype.singular}` needs a NAME; to list them all use "
                               f"`kumactl get {rtype.plural}`")
    client = state().client()
    if name is not None:
        resource = fetch_one(client, rtype, mesh, name)
        if output == "table":
            click.echo(resource_table(rtype, [resource]), nl=False)
        else:
            click.echo(render(resource, output), nl=False)
        return
    result = fetch_list(client, rtype, mesh, size, offset)
    if output == "table" and rtype.name == "Zone" and result["items"]:
        # Zones are listed on global, which has their status in the overviews.
        overviews = {o.get("name"): o for page in client.list_all("/zones/_overview") for o in page["items"]}
        click.echo(zones_table(result["items"], overviews), nl=False)
    elif output == "table":
        click.echo(resource_table(rtype, result["items"]), nl=False)
    else:
        click.echo(render(result, output), nl=False)
    more = _next_offset(result.get("next"))
    if more is not None:
        click.echo(f"Rest of the resources are available using '--offset {more}'", err=True)
