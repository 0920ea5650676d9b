"""`kumactl`: the CLI of the control plane's API, with Kuma's verbs and flags."""

from __future__ import annotations

import click

from controlplane import __version__

from .apply import apply_cmd
from .client import KumactlError
from .config_commands import config_group
from .context import global_options, state
from .delete import delete_cmd
from .generate import generate_group
from .get import get_cmd
from .inspect import inspect_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@global_options
def main() -> None:
    """Management tool for kuma-vm (Kuma's kumactl)."""


@main.command("version")
@global_options
def version() -> None:
    """Print the version of kumactl and, when it answers, of the control plane."""
    click.echo(f"Client: kumactl {__version__}")
    try:
        index = state().client().get("/")
    except KumactlError as e:
        click.echo(f"Server: unknown ({e.lines[0]})", err=True)
        return
    if isinstance(index, dict):
        server = index.get("version", "unknown")
        click.echo(f"Server: {index.get('tagline', 'kuma-cp')} {server}")
        if server != __version__:
            click.echo(f"WARNING: kumactl {__version__} talks to a control plane of version {server}", err=True)


main.add_command(apply_cmd)
main.add_command(get_cmd)
main.add_command(delete_cmd)
main.add_command(inspect_group)
main.add_command(generate_group)
main.add_command(config_group)

if __name__ == "__main__":
    main()
