"""`kuma-dp` entry point: `kuma-dp run ...`, `kuma-dp version` (the commands are in agent/commands.py).

For `kuma-dp run`, the slow start-up steps are started before anything else is imported, click included
(agent/prestart.py); `main` (the click group) is loaded on first use, and not at all for a `kuma-dp run` whose
flags are plain (agent/run_flags.py).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _prestart(argv: list[str]) -> None:
    """For `kuma-dp run` (not --help), start the slow start-up steps first (agent/prestart.py)."""
    if argv[:1] == ["run"] and not {"-h", "--help"} & set(argv):
        from agent import prestart
        from agent.notify_vars import NOTIFY_VARS  # not agent.notify: logging and socket can load later

        prestart.prestart(argv, {k: v for k, v in os.environ.items() if k not in NOTIFY_VARS})


def __getattr__(name: str) -> Any:
    if name == "main":
        from agent.commands import main

        return main
    raise AttributeError(name)


def run() -> None:
    """Console-script entry point."""
    _prestart(sys.argv[1:])
    if sys.argv[1:2] == ["run"]:  # plain flags: run without loading click (agent/run_flags.py)
        from agent.run_flags import run_without_click

        run_without_click(sys.argv[2:])
    from agent.commands import main

    main()


if __name__ == "__main__":
    run()
