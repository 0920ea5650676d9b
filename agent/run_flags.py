"""`kuma-dp run`'s flags without click when they are plain (issue 14: click costs ~12 ms of kuma-dp's start,
before the bootstrap call), and the body of the `run` command shared with click's (agent/commands.py).

The fast path takes only the common, well-formed spellings: `--flag VALUE`, `--flag=VALUE`, `-d/-v/-c VALUE`,
`--dns-enabled`/`--no-dns-enabled`, with no value that starts with `-`. Anything else (help, an unknown or
misspelt flag, a missing value, a stray argument, `--`) returns None and click parses the command line as
before, so every error message and `--help` stays click's. tests/unit/test_agent_run_flags.py checks that the
fast path gives the very keyword arguments click gives.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from agent.config import SETTINGS, Setting

_SHORT = {"dataplane_file": "-d", "dataplane_var": "-v"}
MULTIPLE = ("dataplane_vars", "dns_upstreams")
DNS_FLAG = "dns_enabled"  # a boolean pair, as Kuma's (--no-dns-enabled turns off what env/file enabled)
CONFIG_FILE_NAMES = ("-c", "--config-file")


def option_names(s: Setting) -> list[str]:
    """The names click declares for `s` (agent/commands.py) and the fast path accepts."""
    assert s.flag is not None
    if s.attr == DNS_FLAG:
        return ["--dns-enabled/--no-dns-enabled"]
    names = [f"--{s.flag}"]
    if s.attr == "runtime_dir":
        names.append("--runtime-dir")
    short = _SHORT.get(s.flag.replace("-", "_"))
    if short:
        names.append(short)
    return names


def _value_options() -> dict[str, str]:
    """Option name -> keyword argument, for the options that take a value."""
    options = {name: "config_file" for name in CONFIG_FILE_NAMES}
    for s in SETTINGS:
        if s.flag and s.attr != DNS_FLAG:
            options.update((name, s.attr) for name in option_names(s))
    return options


def parse_fast(args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments click would pass to `run` for `args` (what follows `run`), or None: let click
    parse them (anything unusual, and every error)."""
    options = _value_options()
    flags: dict[str, Any] = {"config_file": None}
    for s in SETTINGS:
        if s.flag:
            flags[s.attr] = () if s.attr in MULTIPLE else None
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("--dns-enabled", "--no-dns-enabled"):
            flags[DNS_FLAG] = arg == "--dns-enabled"
            continue
        name, eq, value = arg.partition("=")
        if not arg.startswith("-") or name not in options or (eq and not name.startswith("--")):
            return None
        if not eq:
            if i >= len(args) or args[i].startswith("-"):
                return None
            value = args[i]
            i += 1
        attr = options[name]
        flags[attr] = (*flags[attr], value) if attr in MULTIPLE else value
    return flags


def run_command(config_file: str | None, flags: dict[str, Any]) -> None:
    """`kuma-dp run`: settings from flags, environment and file, then the agent until it exits (sys.exit)."""
    from agent.config import CONFIG_FILE_ENV, EXIT_USAGE, ConfigError, load_file, resolve
    from kuma_shared import logs

    env = dict(os.environ)
    path = config_file or env.get(CONFIG_FILE_ENV) or None
    try:
        doc = load_file(path) if path else None
        cfg = resolve(flags, env, doc, file_name=path or "config file")
    except ConfigError as e:
        sys.stderr.write(f"kuma-dp: {e}\n")
        sys.stderr.flush()
        sys.exit(EXIT_USAGE)
    logs.setup(cfg.log_level, cfg.log_format)
    from agent import head_start
    from agent.notify import Notifier

    head = head_start.begin(cfg, env, Notifier(env))  # up to Envoy's spawn, before asyncio is loaded
    import asyncio

    from agent.run import run

    sys.exit(asyncio.run(run(head)))


def run_without_click(args: list[str]) -> None:
    """Run `kuma-dp run` when its flags are plain (never returns then); return to let click handle the rest.
    Ends as click's standalone mode would: Ctrl-C before kuma-dp's own handlers -> "Aborted!", exit 1."""
    flags = parse_fast(args)
    if flags is None:
        return
    config_file = flags.pop("config_file")
    try:
        run_command(config_file, flags)
    except (EOFError, KeyboardInterrupt):
        sys.stderr.write("\nAborted!\n")
        sys.exit(1)
    except OSError as e:
        if e.errno == errno.EPIPE:
            sys.exit(1)
        raise
