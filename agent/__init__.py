"""kuma-vm data plane agent (kuma-dp)."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def version() -> str:
    """The installed distribution's version (looked up once, on first use: it costs ~20 ms at start)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("kuma-vm")
    except PackageNotFoundError:  # run from a source tree without installing
        return "0.0.0+source"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return version()
    raise AttributeError(name)
