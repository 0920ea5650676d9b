"""`kuma-dp`'s commands (click); the entry point is agent/cli.py.

    kuma-dp run --cp-address https://CP:5678 --ca-cert-file ca.crt \\
        --dataplane-file web.yaml --dataplane-var address=10.0.0.5 --dataplane-token-file web.token
    kuma-dp validate --dataplane-file web.yaml      # exit 2 with every bad field, without the control plane
    kuma-dp version [--detailed]

Flags, `KUMA_*` variables and YAML keys are Kuma's (agent/config.py lists them); `kuma-dp run --help`
shows each flag with its variable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from agent import run_flags
from agent.config import EXIT_USAGE, SETTINGS, ConfigError, Setting
from agent.run_flags import CONFIG_FILE_NAMES, MULTIPLE, option_names


def _option(s: Setting) -> Callable[[Any], Any]:
    env = f" [env {s.env}]" if s.env else ""
    return click.option(*option_names(s), s.attr, default=None, multiple=s.attr in MULTIPLE, help=f"{s.help}{env}",
                        show_default=False)


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for s in reversed(SETTINGS):
        if s.flag:
            f = _option(s)(f)
    return click.option(*CONFIG_FILE_NAMES, "config_file", default=None,
                        help="kuma-dp YAML config (Kuma's keys: controlPlane.url, dataplane.name, ...) "
                             "[env KUMA_CONFIG_FILE]")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """kuma-vm data-plane agent: registers a dataplane, runs and supervises its Envoy."""


@main.command("run", epilog="Without a flag, the KUMA_* variable shown in brackets applies, then the config "
                            "file, then the default. Environment-only settings: KUMA_CONTROL_PLANE_CA_CERT, "
                            "KUMA_CONTROL_PLANE_RETRY_BACKOFF, KUMA_CONTROL_PLANE_RETRY_MAX_DURATION, "
                            "KUMA_DATAPLANE_RUNTIME_ENVOY_MAX_RESTARTS, KUMA_DATAPLANE_RUNTIME_ENVOY_RESTART_BACKOFF.")
@_run_options
def run_command(config_file: str | None, **flags: Any) -> None:
    """Register the dataplane, fetch its Envoy bootstrap, run Envoy until SIGTERM/SIGINT."""
    run_flags.run_command(config_file, flags)  # plain flags skip click altogether (agent/cli.py)


@main.command("dns", add_help_option=False, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dns_command(args: tuple[str, ...]) -> None:
    """The host's .mesh DNS: restore (put the host's resolver back), status, serve (see kuma-dp dns -h)."""
    from agent.dns.cli import main as dns_main

    sys.exit(dns_main(list(args)))


@main.command("validate")
@click.option("--dataplane-file", "-d", "dataplane_file", required=True, metavar="FILE",
              help="the Dataplane (or ZoneIngress) definition to check")
@click.option("--dataplane-var", "-v", "dataplane_vars", multiple=True, metavar="KEY=VALUE",
              help="KEY=VALUE for {{ KEY }} in the definition (repeat)")
@click.option("--proxy-type", "proxy_type", type=click.Choice(["dataplane", "ingress"]), default=None,
              help="what the definition is for (default: what its `type` says, else dataplane)")
def validate_command(dataplane_file: str, dataplane_vars: tuple[str, ...], proxy_type: str | None) -> None:
    """Check a dataplane definition as `kuma-dp run` would, without the control plane: exit 0 when it is
    valid, 2 with every bad field by its path (for Ansible's `validate:` and CI)."""
    from dataclasses import replace

    from agent import dataplane
    from agent.config import DpConfig, parse_vars

    try:
        variables = parse_vars(list(dataplane_vars)) if dataplane_vars else {}
        cfg = replace(DpConfig(), dataplane_file=dataplane_file, dataplane_vars=variables,
                      proxy_type=proxy_type or "dataplane", proxy_type_given=proxy_type is not None)
        definition = dataplane.load(cfg)
        dataplane.validate(definition, definition.proxy_type)
    except (ConfigError, dataplane.DefinitionError) as e:
        click.echo(f"kuma-dp validate: {e}", err=True)
        sys.exit(EXIT_USAGE)
    for warning in definition.warnings:
        click.echo(f"kuma-dp validate: warning: {warning}", err=True)
    click.echo(f"kuma-dp validate: {dataplane_file}: a valid {dataplane.TYPE_FOR_PROXY[definition.proxy_type]} "
               f"{definition.mesh}/{definition.name}")


@main.command("version")
@click.option("--detailed", is_flag=True, help="also the Envoy binary and its version")
@click.option("--binary-path", default=None, envvar="KUMA_DATAPLANE_RUNTIME_BINARY_PATH",
              help="the Envoy binary to describe (as for run)")
def version_command(detailed: bool, binary_path: str | None) -> None:
    """Print kuma-dp's version."""
    from agent import version

    click.echo(f"kuma-dp {version()}")
    if detailed:
        from agent.envoy.binary import EnvoyBinaryError, envoy_version, find_envoy

        try:
            binary = find_envoy(binary_path)
            click.echo(f"envoy {envoy_version(binary)} ({binary})")
        except EnvoyBinaryError as e:
            click.echo(f"envoy: {e}")
        click.echo(f"python {sys.version.split()[0]} ({sys.executable})")
