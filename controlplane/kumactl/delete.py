"""`kumactl delete <type> <name>`: the type by singular, plural or type name, as Kuma accepts it."""

from __future__ import annotations

import click

from .client import ApiError
from .context import global_options, mesh_option, state
from .errors import KumactlError
from .get import describe, item_path, resolve_type


@click.command("delete")
@click.argument("type_word", metavar="TYPE")
@click.argument("name")
@mesh_option
@global_options
def delete_cmd(type_word: str, name: str, mesh: str) -> None:
    """Delete one resource: `kumactl delete dataplane web-1 -m M`, `kumactl delete mesh demo`."""
    rtype = resolve_type(type_word)
    client = state().client()
    try:
        client.request("DELETE", item_path(rtype, mesh, name))
    except ApiError as e:
        if e.not_found:
            raise KumactlError(f"there is no {describe(rtype, name, mesh)}") from None
        raise
    click.echo(f'deleted {rtype.name} "{name}"')
