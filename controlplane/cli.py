"""`kuma-cp`: run the control plane, validate a config, migrate the database schema."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from controlplane import __version__
from controlplane.config import Config, ConfigError, load

CONFIG_OPTION = click.option("-c", "--config-file", "config_file", type=click.Path(path_type=Path),
                             envvar="KUMA_CONFIG_FILE", help="kuma-cp YAML config (settings as in Kuma's)")


def _load(config_file: Path | None) -> Config:
    try:
        return load(config_file)
    except ConfigError as e:
        click.echo(f"kuma-cp: {e}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """kuma-vm control plane."""


@main.command()
@CONFIG_OPTION
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
def run(config_file: Path | None, log_level: str | None) -> None:
    """Run the control plane until SIGTERM/SIGINT."""
    from controlplane.netguard import raise_nofile_limit, warn_if_caps_overcommit
    from kuma_shared import logs

    cfg = _load(config_file)
    logs.setup(log_level or cfg.logging.level, cfg.logging.format)
    # Before any listener exists: every connection costs a descriptor, and the caps are sized from this limit.
    warn_if_caps_overcommit(raise_nofile_limit(), cfg.dp_server.max_connections,
                            cfg.api_server.https.max_connections, cfg.dns_server.tcp_max_connections)
    try:
        asyncio.run(_serve(cfg))
    except StartupError as e:
        click.echo(f"kuma-cp: cannot start: {e}", err=True)
        sys.exit(1)


class StartupError(Exception):
    pass


async def _serve(cfg: Config) -> None:
    from controlplane.bootstrap import build_runtime
    from controlplane.netguard import install_accept_error_log
    from controlplane.runtime import run_until_signalled
    from controlplane.store.base import StoreError

    install_accept_error_log(asyncio.get_running_loop())
    try:
        await run_until_signalled(await build_runtime(cfg))
    except (RuntimeError, OSError, StoreError) as e:
        raise StartupError(str(e)) from e


@main.command()
@CONFIG_OPTION
def validate(config_file: Path | None) -> None:
    """Check a config (file + KUMA_* env) without starting anything; exit 0 when it is valid."""
    cfg = _load(config_file)
    click.echo(f"configuration is valid (mode={cfg.mode}, store={cfg.store.type})")


@main.group()
def migrate() -> None:
    """Database schema migrations (PostgreSQL)."""


@migrate.command("up")
@CONFIG_OPTION
def migrate_up(config_file: Path | None) -> None:
    """Apply every pending schema migration to the configured PostgreSQL database."""
    cfg = _load(config_file)
    if cfg.store.type != "postgres":
        click.echo(f"store type is {cfg.store.type!r}: it migrates itself on start; nothing to do")
        return
    from controlplane.store.postgres import migrate_up as do_migrate

    try:
        applied = do_migrate(cfg.store.postgres.to_store_config())
    except Exception as e:  # the database's own message is the useful part
        click.echo(f"kuma-cp: migration failed: {e}", err=True)
        sys.exit(1)
    if applied:
        click.echo("applied migrations: " + ", ".join(str(a) for a in applied))
    else:
        click.echo("schema is up to date")


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"kuma-cp {__version__}")


if __name__ == "__main__":
    main()
