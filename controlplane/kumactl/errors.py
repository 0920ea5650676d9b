"""The error every kumactl command raises: printed one problem per line to stderr, exit status 1."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import IO, Any

import click


class KumactlError(click.ClickException):
    """A failure the user can act on. `lines` are printed as they are, one per line, after `Error: `."""

    exit_code = 1

    def __init__(self, *lines: str) -> None:
        self.lines = [line for line in lines if line] or ["unknown error"]
        super().__init__("\n".join(self.lines))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.lines[0]}", err=True, file=file)
        for line in self.lines[1:]:
            click.echo(f"  {line}", err=True, file=file)

    def prefixed(self, prefix: str) -> KumactlError:
        """The same problems, each line starting with `prefix` (a document in a multi-document apply)."""
        return KumactlError(*(f"{prefix}: {line}" for line in self.lines))


def api_error_lines(body: Any, status: int | None = None) -> list[str]:
    """Kuma's API error body {"title","details","invalid_parameters":[{"field","reason"}]} as lines:
    the title (and details when they say more than the fields), then `field: reason` per parameter."""
    if not isinstance(body, Mapping):
        text = str(body).strip() if body not in (None, "") else ""
        return [f"the control plane answered HTTP {status}" + (f": {text}" if text else "")]
    title = str(body.get("title") or f"HTTP {status}")
    details = str(body.get("details") or "")
    params = _params(body.get("invalid_parameters") or body.get("invalidParameters") or [])
    lines = [f"{f}: {r}" if f else r for f, r in params]
    head = title
    # details usually repeat the parameters (possibly after a prefix): then the title says enough
    if details and details != title and not (lines and all(line in details for line in lines)):
        head = f"{title}: {details}"
    return [head, *lines]


def _params(raw: Iterable[Any]) -> list[tuple[str, str]]:
    out = []
    for p in raw if isinstance(raw, list) else []:
        if isinstance(p, Mapping):
            out.append((str(p.get("field") or ""), str(p.get("reason") or "")))
    return out
