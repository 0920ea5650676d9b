"""What every command shares: the global flags, the config file and the API client built from them.

Kuma's global flags are cobra "persistent" flags, accepted before or after the subcommand
(`kumactl --config-file F get meshes` and `kumactl get meshes --config-file F`). `global_options` adds them
to the group and to every command, all writing into one `State`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from controlplane.resources.fields import parse_duration

from .client import DEFAULT_TIMEOUT, ApiClient
from .config import DEFAULT_CONTROL_PLANE, KumactlConfig, resolve_path

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = ("off", "info", "debug")


class State:
    def __init__(self) -> None:
        self.config_file: str | None = None
        self.no_config = False
        self.log_level = "off"
        self.api_timeout = DEFAULT_TIMEOUT
        self._config: KumactlConfig | None = None

    def config(self) -> KumactlConfig:
        if self._config is None:
            if self.no_config:
                self._config = KumactlConfig(None)
            else:
                self._config = KumactlConfig.load(resolve_path(self.config_file))
        return self._config

    def client(self) -> ApiClient:
        cp = DEFAULT_CONTROL_PLANE if self.no_config else self.config().current()
        return ApiClient.for_control_plane(cp, timeout=self.api_timeout)


def state(ctx: click.Context | None = None) -> State:
    """The shared State, kept on the root context."""
    root = (ctx or click.get_current_context()).find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


def _set_config_file(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None:
        state(ctx).config_file = value


def _set_no_config(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value:
        state(ctx).no_config = True


def _set_log_level(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None:
        state(ctx).log_level = value
        level = {"off": logging.CRITICAL + 10, "info": logging.INFO, "debug": logging.DEBUG}[value]
        logger = logging.getLogger("kumactl")
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s\t%(name)s\t%(message)s"))
            logger.addHandler(handler)
        logger.setLevel(level)


def _set_api_timeout(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is None:
        return
    try:
        seconds = parse_duration(value).total_seconds()
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if seconds <= 0:
        raise click.BadParameter("must be greater than zero")
    state(ctx).api_timeout = seconds


def global_options(f: F) -> F:
    """Kuma's persistent flags, on the group and on every command."""
    options = [
        click.option("--config-file", default=None, metavar="PATH", expose_value=False, is_eager=True,
                     callback=_set_config_file,
                     help="path to the configuration file to use (default: $KUMACTL_CONFIG, else "
                          "~/.kumactl/config)"),
        click.option("--no-config", is_flag=True, default=False, expose_value=False, is_eager=True,
                     callback=_set_no_config,
                     help="use no config file: talk to http://127.0.0.1:5681 and create nothing"),
        click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None, expose_value=False,
                     is_eager=True, callback=_set_log_level, help="log level (default: off)"),
        click.option("--api-timeout", default=None, metavar="DURATION", expose_value=False,
                     callback=_set_api_timeout,
                     help="how long to wait for the control plane's API (default: 1m)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def mesh_option(f: F) -> F:
    return click.option("-m", "--mesh", default="default", show_default=True, help="mesh to use")(f)
