"""Field paths spelled one way everywhere: `networking.inbound[0].tags["kuma.io/protocol"]`.

A location from pydantic or from a walk over the raw document is a tuple of strings and ints; whether a
string is a field (`.port`) or a map key (`["kuma.io/service"]`) depends on the schema at that point, so the
location is walked alongside the model's types. Outside any known schema (under an unknown field), a string
that looks like an identifier is a field and anything else a key.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def key_path(path: str, key: str) -> str:
    """`tags` + `kuma.io/service` -> `tags["kuma.io/service"]`, the spelling of every map key in a path."""
    return f'{path}["{key}"]'


def field_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unwrap(tp: Any) -> Any:
    """`X | None` -> X; Annotated[X, ...] -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def model_field(model: type[BaseModel], name: str) -> tuple[str, Any] | None:
    """(wire name, annotation) of the field `name` (by alias or Python name), or None when there is none."""
    for py_name, info in model.model_fields.items():
        if name in (info.alias, py_name):
            return (info.alias or py_name), info.annotation
    return None


def wire_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _union_member(tp: Any, part: str) -> Any | None:
    """pydantic names a union member in the location ('int', 'str', 'MeshRetryConf'): the member, if so."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    for member in typing.get_args(tp):
        name = getattr(member, "__name__", None) or str(member)
        if part == name or part.startswith(f"{name}[") or part == str(member).replace("typing.", ""):
            return member
    return None


def walk(model: Any, prefix: str, loc: Iterable[str | int]) -> tuple[str, Any]:
    """The path of `loc` under `prefix`, and the type at its parent (the model a last field belongs to)."""
    path, parent, _ = walk_raw(model, prefix, loc)
    return path, parent


def walk_raw(model: Any, prefix: str, loc: Iterable[str | int]) -> tuple[str, Any, tuple[str | int, ...]]:
    """`walk`, plus the location in the document itself (pydantic's names for unions and validators left
    out), which is what a caller needs to find the value again."""
    path, tp, parent = prefix, model, None
    raw: list[str | int] = []
    for part in loc:
        tp = _unwrap(tp)
        parent = tp
        if isinstance(part, int):
            raw.append(part)
            path += f"[{part}]"
            args = typing.get_args(tp)
            tp = args[0] if typing.get_origin(tp) in (list, tuple, set, frozenset) and args else None
            continue
        if part.startswith("function-") or part == "[key]":
            continue  # pydantic's names for a validator, or for the key (not the value) of a map entry
        member = _union_member(tp, part)
        if member is not None:
            tp = member
            continue
        raw.append(part)
        if _is_model(tp):
            found = model_field(tp, part)
            path = field_path(path, found[0] if found else part)
            tp = found[1] if found else None
        elif typing.get_origin(tp) in (dict, Mapping):
            path = key_path(path, part)
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else None
        elif _IDENTIFIER.match(part):
            path, tp = field_path(path, part), None
        else:
            path, tp = key_path(path, part), None
    return path, _unwrap(parent), tuple(raw)


def field_required(container: Any, name: str) -> bool:
    """Whether `name` must be present in `container` (a model type); unknown fields and maps: no."""
    container = _unwrap(container)
    if not _is_model(container):
        return False
    for py_name, info in container.model_fields.items():
        if name in (info.alias, py_name):
            return info.is_required()
    return False


def type_at(model: Any, raw: Iterable[str | int]) -> Any:
    """The schema type of the value at document location `raw` (None outside the schema)."""
    tp = model
    for part in raw:
        tp = _unwrap(tp)
        if isinstance(part, int):
            args = typing.get_args(tp)
            tp = args[0] if typing.get_origin(tp) in (list, tuple, set, frozenset) and args else None
        elif _is_model(tp):
            found = model_field(tp, part)
            tp = found[1] if found else None
        elif typing.get_origin(tp) in (dict, Mapping):
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else None
        else:
            tp = None
    return _unwrap(tp)


_TOKEN = re.compile(r'\.?([^.\[\]"]+)|\[(\d+)\]|\["(.*?)"\](?=[.\[]|$)')


def parse_path(path: str) -> list[str | int] | None:
    """'networking.inbound[0].tags["kuma.io/service"]' -> ['networking', 'inbound', 0, 'tags',
    'kuma.io/service']; None when `path` is not in this module's spelling."""
    out: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None or m.end() == pos:
            return None
        name, index, key = m.groups()
        out.append(int(index) if index is not None else (key if key is not None else name))
        pos = m.end()
    return out


def unknown_field_reason(parent: Any, name: str) -> str:
    """Why `name` is refused in `parent`: a Kuma field we lack, or a typo (with the closest valid name)."""
    if not _is_model(parent):
        return "unknown field: not a field of this resource; remove it or check its spelling"
    if name in getattr(parent, "kuma_unsupported", ()):
        fix = getattr(parent, "kuma_unsupported_fix", {}).get(name, "remove it; the README lists what is missing")
        return f"a Kuma field kuma-vm does not support yet: {name} ({fix})"
    valid = wire_names(parent)
    unsupported = sorted(getattr(parent, "kuma_unsupported", ()))
    candidates = valid + unsupported
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:  # a case slip ('Port', 'servicePORT') is a near miss too
        close = [c for c in candidates if c.lower() == name.lower()][:1]
    if close and close[0] in unsupported:
        hint = f": did you mean {close[0]!r}? (a Kuma field kuma-vm does not support yet)"
    elif close:
        hint = f": did you mean {close[0]!r}?"
    else:
        hint = f"; valid fields here: {', '.join(sorted(valid))}" if valid else "; nothing else belongs here"
    return f"unknown field: not a field of this resource{hint}"
