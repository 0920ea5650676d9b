"""Validation errors in Kuma's API shape: a title, details and field-level reasons."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True, slots=True)
class InvalidParameter:
    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


class ResourceValidationError(Exception):
    """A resource (or request) that cannot be accepted; names every bad field and why."""

    def __init__(self, invalid: Sequence[InvalidParameter], title: str = "Resource is not valid") -> None:
        self.invalid = list(invalid)
        self.title = title
        super().__init__(self.details)

    @property
    def details(self) -> str:
        return "; ".join(f"{p.field}: {p.reason}" if p.field else p.reason for p in self.invalid)

    def as_api_error(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "details": self.details,
            "invalid_parameters": [p.as_dict() for p in self.invalid],
        }


@dataclass
class Violations:
    """Collects field-level problems while a validator walks a spec; raise once at the end."""

    items: list[InvalidParameter] = field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        self.items.append(InvalidParameter(path, reason))

    def extend(self, other: Iterable[InvalidParameter]) -> None:
        self.items.extend(other)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, title: str = "Resource is not valid") -> None:
        if self.items:
            raise ResourceValidationError(self.items, title)


def join_path(prefix: str, loc: Iterable[str | int]) -> str:
    """('networking', 'inbound', 0, 'port') -> 'networking.inbound[0].port' (under an optional prefix)."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


_REASONS = {
    "extra_forbidden": "unknown field: remove it or check its spelling against the documentation",
    "missing": "field is required",
}


def pydantic_violations(err: ValidationError, prefix: str) -> list[InvalidParameter]:
    out = []
    for e in err.errors(include_url=False):
        reason = _REASONS.get(e["type"]) or e["msg"]
        if e["type"] not in _REASONS and "input" in e and not isinstance(e["input"], dict | list):
            reason = f"{reason} (got {e['input']!r})"
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        out.append(InvalidParameter(join_path(prefix, loc), reason))
    return out
