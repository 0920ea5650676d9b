"""kuma-vm data plane agent (kuma-dp)."""

from __future__ import annotations

import os
import sys
from functools import cache
from typing import Any

# kuma-dp forks its children (Envoy, the bootstrap worker) with a preexec_fn (PR_SET_PDEATHSIG) while gRPC's
# threads are busy with its own streams (VIP watch, status reports). gRPC's fork handlers then run in the
# child and crash it now and then (SIGSEGV between fork and exec: ~1 in 10 spawns under load). kuma-dp never
# uses gRPC across a fork, so they are switched off before anything imports grpc; an operator's own setting wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


@cache
def version() -> str:
    """The installed distribution's version, looked up once, on first use. Read from its metadata file
    directly: importlib.metadata costs ~20 ms of imports (email, zipfile, csv) on kuma-dp's start-up path,
    before the bootstrap call (issue 14); it stays the fallback for whatever this lookup does not find."""
    found = _version_on_sys_path()
    if found is not None:
        return found
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("kuma-vm")
    except PackageNotFoundError:  # run from a source tree without installing
        return "0.0.0+source"


_DIST = "kuma_vm"  # "kuma-vm" normalised as in metadata directory names


def _version_on_sys_path() -> str | None:
    """`Version:` of the first kuma-vm metadata directory on sys.path, in importlib.metadata's search order
    (each sys.path entry in turn): `kuma_vm-X.dist-info/METADATA` or `kuma_vm*.egg-info/PKG-INFO`."""
    import re

    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # not a directory (a zip: nothing of ours is installed as one), or gone
            continue
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if not dot or suffix not in ("dist-info", "egg-info") \
                    or re.sub(r"[-_.]+", "_", stem.split("-")[0]).lower() != _DIST:
                continue
            path = os.path.join(entry or ".", name)
            meta = os.path.join(path, "METADATA" if suffix == "dist-info" else "PKG-INFO") \
                if os.path.isdir(path) else path
            try:
                with open(meta, encoding="utf-8") as f:
                    for line in f:
                        if not line.strip():
                            break  # the headers end at the first blank line
                        if line.startswith("Version:"):
                            return line.split(":", 1)[1].strip()
            except (OSError, UnicodeDecodeError):
                continue
    return None


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return version()
    raise AttributeError(name)
