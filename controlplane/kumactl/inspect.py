"""`kumactl inspect meshes` (from /mesh-insights) and `kumactl inspect dataplanes` (the mesh's overview)."""

from __future__ import annotations

import urllib.parse
from typing import Any

import click

from .client import ApiClient
from .context import global_options, mesh_option, state
from .output import OUTPUT_OPTION, render
from .tables import dataplane_overview_table, mesh_insights_table


def _all(client: ApiClient, path: str) -> dict[str, Any]:
    items: list[Any] = []
    for page in client.list_all(path):
        items.extend(page["items"])
    return {"total": len(items), "items": items, "next": None}


@click.group("inspect")
@global_options
def inspect_group() -> None:
    """Show resources with their status (online dataplanes, policy counts)."""


@inspect_group.command("meshes")
@OUTPUT_OPTION
@global_options
def inspect_meshes(output: str) -> None:
    """Every mesh: dataplanes online/total, policies, mTLS backend."""
    result = _all(state().client(), "/mesh-insights")
    if output == "table":
        click.echo(mesh_insights_table(result["items"]), nl=False)
    else:
        click.echo(render(result, output), nl=False)


@inspect_group.command("dataplanes")
@mesh_option
@OUTPUT_OPTION
@global_options
def inspect_dataplanes(mesh: str, output: str) -> None:
    """The dataplanes of one mesh with their status (online/offline), services and address."""
    result = _all(state().client(), f"/meshes/{urllib.parse.quote(mesh, safe='')}/dataplanes/_overview")
    if output == "table":
        click.echo(dataplane_overview_table(result["items"]), nl=False)
    else:
        click.echo(render(result, output), nl=False)
