"""Pieces the SQL backends (sqlite, postgres) share: paging arithmetic, JSON forms, error messages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from controlplane.resources.base import Resource, ResourceType

from .base import Conflict, ListQuery, describe

MESH_TYPE = "Mesh"


def spec_json(resource: Resource) -> str:
    """The spec as stored: its wire form (camelCase, no nulls), compact."""
    return json.dumps(resource.spec.to_wire(), separators=(",", ":"))


def labels_json(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), separators=(",", ":"), sort_keys=True)


def event_json(op: str, type_name: str, mesh: str, name: str, version: int) -> str:
    return json.dumps({"op": op, "type": type_name, "mesh": mesh, "name": name, "version": version},
                      separators=(",", ":"))


def conflict(rtype: ResourceType, name: str, mesh: str, stored: int, read: int) -> Conflict:
    return Conflict(f"{describe(rtype, name, mesh)} was changed (version {stored}, you read {read}): "
                    "read it again")


def total_from_page(q: ListQuery, got: int) -> int | None:
    """The number of matches when the page itself tells it (it is the last page), else None: a count
    query is needed (the page is full, or empty past the end)."""
    if (q.size is None or got < q.size) and (got > 0 or q.offset == 0):
        return q.offset + got
    return None


def next_offset(q: ListQuery, total: int) -> int | None:
    if q.size is None:
        return None
    end = q.offset + q.size
    return end if end < total else None


def loads(text: str | bytes) -> Any:
    return json.loads(text)
