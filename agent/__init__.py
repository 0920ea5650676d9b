"""kuma-vm data plane agent (kuma-dp)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

# kuma-dp forks its children (Envoy, the bootstrap worker) with a preexec_fn (PR_SET_PDEATHSIG) while gRPC's
# threads are busy with its own streams (VIP watch, status reports). gRPC's fork handlers then run in the
# child and crash it now and then (SIGSEGV between fork and exec: ~1 in 10 spawns under load). kuma-dp never
# uses gRPC across a fork, so they are switched off before anything imports grpc; an operator's own setting wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


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
