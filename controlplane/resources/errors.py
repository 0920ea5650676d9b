"""Validation errors in Kuma's API shape: a title, details and field-level reasons."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .paths import unknown_field_reason, walk


@dataclass(frozen=True, slots=True)
class InvalidParameter:
    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


# One answer names at most this many problems (a 5,000-item list with one typo each must not produce a
# megabyte of errors); the rest are counted in a last "and N more" entry.
MAX_REPORTED = 100


class ResourceValidationError(Exception):
    """A resource (or request) that cannot be accepted; names every bad field (up to MAX_REPORTED) and why."""

    def __init__(self, invalid: Sequence[InvalidParameter], title: str = "Resource is not valid") -> None:
        self.omitted = max(0, len(invalid) - MAX_REPORTED)
        self.invalid = list(invalid[:MAX_REPORTED])
        if self.omitted:
            self.invalid.append(InvalidParameter("", f"and {self.omitted} more: fix the problems above and send "
                                                     "it again to see the rest"))
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


def join_path(prefix: str, loc: Iterable[str | int], model: Any = None) -> str:
    """('networking', 'inbound', 0, 'port') -> 'networking.inbound[0].port' (under an optional prefix);
    map keys as `tags["kuma.io/service"]`, told apart from fields by `model`'s schema (see paths.py)."""
    return walk(model, prefix, loc)[0]


def pydantic_violations(err: ValidationError, prefix: str, model: Any = None) -> list[InvalidParameter]:
    """pydantic's errors as field problems, spelled by `model`'s schema (the class that was validated)."""
    out = []
    for e in err.errors(include_url=False):
        path, parent = walk(model, prefix, e["loc"])
        if e["type"] == "extra_forbidden":
            reason = unknown_field_reason(parent, str(e["loc"][-1]))
        elif e["type"] == "missing":
            reason = "field is required"
        else:
            reason = e["msg"]
            if "input" in e and not isinstance(e["input"], dict | list):
                shown = repr(e["input"])
                reason = f"{reason} (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
        out.append(InvalidParameter(path, reason))
    return out
