"""Printers: aligned tables (Kuma's layout: upper-case headers, columns three spaces apart), YAML and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
import yaml

FORMATS = ("table", "yaml", "json")
OUTPUT_OPTION = click.option("-o", "--output", "output", type=click.Choice(FORMATS), default="table",
                             show_default=True, help="output format")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns left-aligned, separated by three spaces; trailing blanks trimmed from every line."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def render_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def render_yaml_documents(docs: Sequence[Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, allow_unicode=True,
                              explicit_start=True)


def render_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render(data: Any, fmt: str) -> str:
    """`data` as YAML or JSON (tables are built per command)."""
    if fmt == "json":
        return render_json(data)
    return render_yaml(data)


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """kubectl/Kuma-style short ages: 45s, 3m20s, 2h10m, 5d3h, 400d, 3y20d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    years, rest = divmod(days, 365)
    return f"{years}y{rest}d" if rest and years < 8 else f"{years}y"


def age(creation_time: Any, now: datetime | None = None) -> str:
    t = parse_time(creation_time)
    if t is None:
        return "<unknown>"
    now = now or datetime.now(UTC)
    return human_duration((now - t).total_seconds())
