"""`kumactl config control-planes add | list | switch | remove` (and `config view`)."""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

import click

from .client import ApiClient, ApiError
from .config import AUTH_TYPES, DEFAULT_URL, ControlPlane
from .context import global_options, state
from .errors import KumactlError
from .output import render_table, render_yaml


@click.group("config")
@global_options
def config_group() -> None:
    """Manage the kumactl config file (control planes and the current one)."""


@config_group.group("control-planes")
@global_options
def control_planes() -> None:
    """Manage known Control Planes."""


def _check_address(address: str) -> str:
    parts = urllib.parse.urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{address!r} must be an http:// or https:// URL, e.g. https://cp.example:5682",
                                 param_hint="'--address'")
    if parts.query or parts.fragment:
        raise click.BadParameter("must not have a query or fragment", param_hint="'--address'")
    return address.rstrip("/")


def _auth_conf(pairs: tuple[str, ...]) -> dict[str, str]:
    conf: dict[str, str] = {}
    for pair in pairs:
        for item in pair.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise click.BadParameter(f"{item!r} must be KEY=VALUE (e.g. token=...)", param_hint="'--auth-conf'")
            conf[key.strip()] = value.strip()
    return conf


def verify(client: ApiClient) -> dict[str, Any]:
    """The control plane answers `GET /` (and, with a token, accepts it); returns the index."""
    try:
        index = client.get("/")
        if not isinstance(index, dict) or "version" not in index:
            raise KumactlError(f"{client.url} answered, but not as a kuma control plane API (no version in GET /)",
                               "is this the API server port (5681 for HTTP, 5682 for HTTPS)?")
        if client.token:
            client.request("GET", "/meshes", query={"size": 1}, ok=(403,))
    except ApiError as e:
        if e.status == 401:
            raise KumactlError(f"the control plane at {client.url} rejected the token", *e.lines) from None
        raise
    return index


@control_planes.command("add")
@click.option("--name", required=True, help="reference name for the Control Plane")
@click.option("--address", required=True,
              help="URL of the Control Plane API server, e.g. http://localhost:5681 or https://cp:5682")
@click.option("--ca-cert-file", default=None, type=click.Path(exists=True, dir_okay=False, readable=True),
              help="CA certificate that verifies the Control Plane's certificate (kumactl stores only the path)")
@click.option("--auth-type", default=None, type=click.Choice(sorted(AUTH_TYPES)),
              help='authentication type ("tokens")')
@click.option("--auth-conf", multiple=True, metavar="KEY=VALUE",
              help="authentication configuration for --auth-type, e.g. token=<user token>")
@click.option("--overwrite", is_flag=True, help="replace a Control Plane with the same name")
@click.option("--skip-check", "skip_check", is_flag=True,
              help="do not check that the Control Plane answers before saving")
@click.option("--skip-verify", "skip_verify", is_flag=True,
              help="same as --skip-check (TLS certificates are always verified)")
@global_options
def cp_add(name: str, address: str, ca_cert_file: str | None, auth_type: str | None, auth_conf: tuple[str, ...],
           overwrite: bool, skip_check: bool, skip_verify: bool) -> None:
    """Add a Control Plane and make it the current one."""
    address = _check_address(address)
    conf = _auth_conf(auth_conf)
    if conf and not auth_type:
        raise click.UsageError("--auth-conf needs --auth-type (e.g. --auth-type tokens --auth-conf token=...)")
    if auth_type:
        missing = [k for k in AUTH_TYPES[auth_type] if not conf.get(k)]
        if missing:
            raise click.UsageError(f"--auth-type {auth_type} needs " +
                                   ", ".join(f"--auth-conf {k}=..." for k in missing))
    if ca_cert_file:
        ca_cert_file = os.path.abspath(ca_cert_file)
    st = state()
    if st.no_config:
        raise click.UsageError("--no-config: there is no config file to add a Control Plane to")
    cfg = st.config()
    if not overwrite and cfg.control_plane(name) is not None:
        raise KumactlError(f"Control Plane with name {name!r} already exists. "
                           "Use --overwrite to replace an existing one.")
    cp = ControlPlane(name=name, url=address, ca_cert_file=ca_cert_file, auth_type=auth_type, auth_conf=conf)
    if not (skip_check or skip_verify):
        verify(ApiClient.for_control_plane(cp, timeout=st.api_timeout))
    cfg.add(cp, overwrite=overwrite)
    cfg.save()
    click.echo(f'added Control Plane "{name}"')
    click.echo(f'switched active Control Plane to "{name}"')


@control_planes.command("list")
@global_options
def cp_list() -> None:
    """List Control Planes; the active one is marked with *."""
    cfg = state().config()
    current = cfg.current_control_plane_name()
    rows = [["*" if cp.name == current else "", cp.name, cp.url] for cp in cfg.control_planes()]
    click.echo(render_table(["ACTIVE", "NAME", "ADDRESS"], rows), nl=False)


@control_planes.command("switch")
@click.option("--name", required=True, help="name of the Control Plane to use")
@global_options
def cp_switch(name: str) -> None:
    """Make another Control Plane the current one."""
    cfg = state().config()
    cfg.switch(name)
    cfg.save()
    click.echo(f'switched active Control Plane to "{name}"')


@control_planes.command("remove")
@click.option("--name", required=True, help="name of the Control Plane to remove")
@global_options
def cp_remove(name: str) -> None:
    """Remove a Control Plane (and its context)."""
    cfg = state().config()
    was_current = cfg.remove(name)
    cfg.save()
    click.echo(f'removed Control Plane "{name}"')
    if was_current and cfg.control_planes():
        click.echo("warning: it was the active Control Plane: choose another with "
                   "kumactl config control-planes switch --name NAME", err=True)
    elif not cfg.control_planes():
        click.echo(f"warning: no Control Plane left: kumactl now talks to {DEFAULT_URL} (Kuma's default) "
                   "until you add one", err=True)


@config_group.command("view")
@global_options
def view() -> None:
    """Print the config file (tokens redacted)."""
    data = state().config().data
    redacted = render_yaml(_redact(data))
    click.echo(redacted, nl=False)


def _redact(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: ("***" if k == "authConf" and v else _redact(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_redact(v) for v in data]
    return data
