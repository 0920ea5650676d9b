"""The Envoy binary's version, remembered per binary file, so kuma-dp does not run `envoy --version` on every start.

The bootstrap request carries Envoy's version, and a 100 MB binary takes 30-40 ms to load just to print it
(more while kuma-dp's own start competes for the CPU): on the way to Envoy's spawn, every time kuma-dp starts,
for an answer that changes only when the binary does. So the answer is kept per binary in a small JSON file,
keyed by the binary's real path and identity (device, inode, size, modification time in ns): an upgrade or a
replaced or rebuilt binary is another identity and is asked again. Nothing here may fail kuma-dp: an unreadable,
corrupt or foreign cache is ignored (and rewritten when possible).

Where: systemd's `$CACHE_DIRECTORY` (the units set `CacheDirectory=kuma-dp`), else `$XDG_CACHE_HOME/kuma-dp`,
else `~/.cache/kuma-dp`. The file is used only when this user owns it and no one else may write it (a version
planted by someone else would reach the control plane). Light to import (os, json): prestart uses it before
kuma-dp loads anything else.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

FILE = "envoy-versions.json"
MAX_ENTRIES = 16  # binaries remembered (oldest out): a host has one or two


def cache_file(env: Mapping[str, str]) -> Path | None:
    if env.get("CACHE_DIRECTORY"):
        return Path(env["CACHE_DIRECTORY"].split(":")[0]) / FILE
    base = env.get("XDG_CACHE_HOME") or (str(Path(env["HOME"]) / ".cache") if env.get("HOME") else "")
    return Path(base) / "kuma-dp" / FILE if base else None


def _identity(binary: str) -> tuple[str, list[int]] | None:
    try:
        real = os.path.realpath(binary)
        st = os.stat(real)
    except OSError:
        return None
    return real, [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read(path: Path) -> dict[str, dict[str, object]]:
    try:
        with open(path, "rb") as f:
            if not _trusted(os.fstat(f.fileno())):
                return {}
            doc = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def lookup(binary: str, env: Mapping[str, str]) -> str | None:
    """The remembered version of this very binary file, or None."""
    path, ident = cache_file(env), _identity(binary)
    if path is None or ident is None:
        return None
    entry = _read(path).get(ident[0])
    if not isinstance(entry, dict) or entry.get("identity") != ident[1]:
        return None
    version = entry.get("version")
    return version if isinstance(version, str) and version else None


def remember(binary: str, version: str, env: Mapping[str, str]) -> None:
    """Keep `version` for this binary file (best effort: a cache that cannot be written is left alone)."""
    path, ident = cache_file(env), _identity(binary)
    if path is None or ident is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _trusted(os.stat(path.parent)):
            return
        doc = _read(path)
        doc.pop(ident[0], None)
        doc[ident[0]] = {"identity": ident[1], "version": version}
        kept = dict(list(doc.items())[-MAX_ENTRIES:])
        tmp = path.with_name(f".{FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(kept, f)
        os.replace(tmp, path)  # whole or not at all, also when several kuma-dp start at once
    except OSError:
        return
