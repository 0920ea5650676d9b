"""`kumactl generate dataplane-token | zone-token | user-token`: ask the control plane for a token, print it.

Flags are Kuma's. The token is printed without a trailing newline when the output is not a terminal (so
`kumactl generate ... > token-file` holds exactly the token), with one when it is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from controlplane.resources.fields import parse_duration

from .context import global_options, mesh_option, state
from .errors import KumactlError

PROXY_TYPES = ("dataplane", "ingress", "egress")


def _valid_for(ctx: click.Context, param: click.Parameter, value: Any) -> str | None:
    if value is None:
        return None
    try:
        if parse_duration(value).total_seconds() <= 0:
            raise click.BadParameter("must be greater than zero")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return str(value)


def valid_for_option(required: bool) -> Any:
    extra: dict[str, Any] = {"required": True} if required else {"default": None}
    return click.option("--valid-for", callback=_valid_for, metavar="DURATION",
                        help='how long the token will be valid (for example "24h")'
                             + ("" if required else "; default: the control plane's (10 years)"), **extra)


def parse_tags(pairs: Sequence[str]) -> dict[str, list[str]]:
    """`--tag k=v1,v2 --tag k=v3` -> {"k": ["v1", "v2", "v3"]} (values of one key accumulate)."""
    tags: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise click.BadParameter(f"{pair!r} must be KEY=VALUE[,VALUE...]", param_hint="'--tag'")
        for value in values.split(","):
            value = value.strip()
            if value and value not in tags.setdefault(key, []):
                tags[key].append(value)
    return tags


def split_list(values: Sequence[str]) -> list[str]:
    """Repeated and comma-separated values (cobra's StringSlice): `--group a,b --group c`."""
    out: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    return out


def _issue(path: str, body: dict[str, Any], what: str) -> None:
    resp = state().client().request("POST", path, body=body)
    token = resp.body if isinstance(resp.body, str) else None
    if not token or not token.strip():
        raise KumactlError(f"the control plane returned no {what} token (HTTP {resp.status})")
    token = token.strip()
    if sys.stdout.isatty():
        click.echo(token)
    else:
        click.echo(token, nl=False)


@click.group("generate")
@global_options
def generate_group() -> None:
    """Generate tokens (dataplane, zone, user)."""


@generate_group.command("dataplane-token")
@mesh_option
@click.option("--name", default=None, help="name of the Dataplane (default: any dataplane of the mesh)")
@click.option("--proxy-type", "proxy_type", type=click.Choice(PROXY_TYPES), default=None,
              help="type of the proxy (default: dataplane)")
@click.option("--type", "legacy_type", type=click.Choice(PROXY_TYPES), default=None, hidden=True,
              help="deprecated: use --proxy-type")
@click.option("--tag", "tag", multiple=True, metavar="KEY=VALUE[,VALUE]",
              help="tag values the dataplane must have (repeatable; values of one key accumulate)")
@valid_for_option(required=False)
@global_options
def dataplane_token(mesh: str, name: str | None, proxy_type: str | None, legacy_type: str | None,
                    tag: tuple[str, ...], valid_for: str | None) -> None:
    """Generate a Dataplane Token, which proves a dataplane's identity.

    \b
    kumactl generate dataplane-token --mesh demo --name demo-01 --valid-for 24h
    kumactl generate dataplane-token --mesh demo --tag kuma.io/service=web,web-api --valid-for 24h
    """
    if legacy_type and proxy_type and legacy_type != proxy_type:
        raise click.UsageError("--type (deprecated) and --proxy-type disagree: use --proxy-type only")
    kind = proxy_type or legacy_type or "dataplane"
    body: dict[str, Any] = {"mesh": mesh, "type": kind}
    if name:
        body["name"] = name
    tags = parse_tags(tag)
    if tags:
        body["tags"] = tags
    if valid_for:
        body["validFor"] = valid_for
    _issue("/tokens/dataplane", body, "dataplane")


@generate_group.command("zone-token")
@click.option("--zone", required=True, help="name of the zone")
@click.option("--scope", "scope", multiple=True, metavar="SCOPE",
              help="what the token may identify: cp, ingress, egress (repeatable or comma-separated; "
                   "default: all)")
@valid_for_option(required=False)
@global_options
def zone_token(zone: str, scope: tuple[str, ...], valid_for: str | None) -> None:
    """Generate a Zone Token, which proves a zone's identity to the global control plane."""
    body: dict[str, Any] = {"zone": zone}
    scopes = split_list(scope)
    if scopes:
        body["scope"] = scopes
    if valid_for:
        body["validFor"] = valid_for
    _issue("/tokens/zone", body, "zone")


@generate_group.command("zone-ingress-token")
@click.option("--zone", required=True, help="name of the zone the ingress runs in")
@valid_for_option(required=False)
@global_options
def zone_ingress_token(zone: str, valid_for: str | None) -> None:
    """Generate a token for a zone ingress (Kuma's older command: the same as zone-token --scope ingress). Run it
    against the zone's control plane, which checks the ingress's token."""
    body: dict[str, Any] = {"zone": zone, "scope": ["ingress"]}
    if valid_for:
        body["validFor"] = valid_for
    _issue("/tokens/zone", body, "zone ingress")


@generate_group.command("user-token")
@click.option("--name", required=True, help="name of the user")
@click.option("--group", "group", multiple=True, metavar="GROUP",
              help="group of the user (repeatable; mesh-system:admin may do everything)")
@valid_for_option(required=True)
@global_options
def user_token(name: str, group: tuple[str, ...], valid_for: str) -> None:
    """Generate a User Token, which authenticates a user to the HTTPS API."""
    _issue("/tokens/user", {"name": name, "groups": split_list(group), "validFor": valid_for}, "user")
