"""Versioned schema migrations, one SQL file per step: `<backend>/NNNN_name.sql`.

Both durable backends number their steps the same way, so "schema version 3" means the same change on
sqlite and postgres. A step is applied in one transaction together with its row in `schema_migrations`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # "0001_init"
    sql: str


def load(backend: str) -> list[Migration]:
    """Every step for `backend` ("postgres" or "sqlite"), in order. Gaps or duplicates are a packaging
    bug, so they fail loudly instead of leaving a database half-way."""
    root = resources.files(__name__).joinpath(backend)
    found: list[Migration] = []
    for entry in root.iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise RuntimeError(f"{backend} migrations are not numbered 1..N: expected step {expected:04d}, "
                               f"found {mig.name}")
    return found


def latest_version(backend: str) -> int:
    steps = load(backend)
    return steps[-1].version if steps else 0
