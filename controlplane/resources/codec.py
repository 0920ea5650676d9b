"""Kuma's universal YAML/JSON form <-> `Resource`, validating everything a user or peer can send."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from .base import REGISTRY, Meta, Registry, Resource, ResourceType, Scope
from .errors import InvalidParameter, ResourceValidationError, Violations, join_path, pydantic_violations
from .fields import check_labels, check_name
from .partial import checks_despite

META_FIELDS = ("type", "name", "mesh", "labels", "creationTime", "modificationTime")

# Every number a resource holds ends up in an Envoy uint32/int32 field, a port, a count or a percentage: none
# is bigger than uint32 or smaller than int32, so anything outside is refused here, by its field, before a
# type's own checks run (and before anything could be stored that overflows later).
INT_MIN, INT_MAX = -(2**31), 2**32 - 1


def check_numbers(v: Violations, body: Any, prefix: str, model: Any = None) -> None:
    """Integers within [INT_MIN, INT_MAX], floats finite, and no number or duration written with digits other
    than ASCII 0-9 (Python's int() and float() read Arabic-Indic or fullwidth digits too)."""
    stack: list[tuple[Any, list[str | int]]] = [(body, [])]
    while stack:
        value, loc = stack.pop()
        problem = None
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not INT_MIN <= value <= INT_MAX:
                problem = f"{value} is out of range: numbers are at most {INT_MAX} and at least {INT_MIN}"
        elif isinstance(value, float):
            if not math.isfinite(value) or not INT_MIN <= value <= INT_MAX:
                problem = f"{value} is out of range: numbers are finite, at most {INT_MAX} and at least {INT_MIN}"
        elif isinstance(value, str):
            if not value.isascii() and _NON_ASCII_NUMBER.fullmatch(value.strip()) and not _ASCII_NUMBER.fullmatch(
                    value.strip()):
                problem = f"{value!r} uses digits other than 0-9: write numbers and durations with ASCII digits"
        elif isinstance(value, Mapping):
            stack.extend((item, [*loc, str(key)]) for key, item in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((item, [*loc, i]) for i, item in enumerate(value))
        if problem:
            v.add(join_path(prefix, loc, model), problem)


_NON_ASCII_NUMBER = re.compile(r"[+-]?[\d.]+\s*[a-zA-Zµμ%]*")
_ASCII_NUMBER = re.compile(r"[+-]?[0-9.]+\s*[a-zA-Zµμ%]*")


def parse_spec(rtype: ResourceType, body: Any, prefix: str) -> tuple[Any, list[InvalidParameter]]:
    """Validate one spec; returns (spec or None, problems). Problems name the field under `prefix`."""
    if not isinstance(body, Mapping):
        return None, [InvalidParameter(prefix or "spec", "must be an object")]
    numbers = Violations()
    check_numbers(numbers, body, prefix, rtype.spec_cls)
    try:
        spec = rtype.spec_cls.model_validate(body)
    except ValidationError as e:
        structural = _merged(numbers.items, pydantic_violations(e, prefix, rtype.spec_cls))
        return None, _merged(structural, checks_despite(rtype.spec_cls, body, e, prefix))
    v = Violations()
    spec.check(v, prefix)
    problems = _merged(numbers.items, v.items)
    return (None if problems else spec), problems


def _merged(first: list[InvalidParameter], then: list[InvalidParameter]) -> list[InvalidParameter]:
    """Both lists, without a second problem for a field the first already names (one round of fixes)."""
    seen = {p.field for p in first}
    return [*first, *(p for p in then if p.field not in seen)]


def from_wire(doc: Any, registry: Registry = REGISTRY, *, rtype: ResourceType | None = None,
              name: str | None = None, mesh: str | None = None) -> Resource:
    """Build a resource from its universal form. `rtype`/`name`/`mesh`, when given (an API path), must
    agree with the document. Raises ResourceValidationError naming every bad field."""
    v = Violations()
    if not isinstance(doc, Mapping):
        raise ResourceValidationError([InvalidParameter("", "a resource must be a YAML/JSON object")])
    type_name = doc.get("type")
    if rtype is None:
        if not type_name:
            v.add("type", "field is required: say which kind of resource this is, e.g. 'type: Mesh'")
            v.raise_if_any()
        found = registry.by_name(str(type_name))
        if found is None:
            known = ", ".join(sorted(t.name for t in registry.all() if not t.readonly))
            v.add("type", f"unknown resource type {type_name!r}; known types: {known}")
            v.raise_if_any()
        assert found is not None
        rtype = found
    elif type_name is not None and type_name != rtype.name:
        v.add("type", f"is {type_name!r} but this path takes {rtype.name!r}")

    doc_name = doc.get("name")
    if name is not None and doc_name is not None and doc_name != name:
        v.add("name", f"is {doc_name!r} but the path names {name!r}: they must match")
    res_name = doc_name if doc_name is not None else name
    if not isinstance(res_name, str):
        v.add("name", "field is required" if res_name is None else "must be a string")
        res_name = ""
    else:
        check_name(v, "name", res_name, label=rtype.name_is_label)

    res_mesh = ""
    doc_mesh = doc.get("mesh")
    if rtype.scope is Scope.MESH:
        if mesh is not None and doc_mesh is not None and doc_mesh != mesh:
            v.add("mesh", f"is {doc_mesh!r} but the path names mesh {mesh!r}: they must match")
        m = doc_mesh if doc_mesh is not None else mesh
        if not isinstance(m, str) or not m:
            v.add("mesh", "field is required: name the mesh this resource belongs to")
        else:
            check_name(v, "mesh", m, label=True)
            res_mesh = m
    elif doc_mesh not in (None, ""):
        v.add("mesh", f"{rtype.name} is not part of a mesh: remove this field")

    labels = doc.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(x, str)
                                                  for k, x in labels.items()):
        v.add("labels", "must be a map of strings to strings")
        labels = {}
    else:
        check_labels(v, "labels", dict(labels))

    if rtype.flat:
        body = {k: val for k, val in doc.items() if k not in META_FIELDS}
        spec, problems = parse_spec(rtype, body, "")
    else:
        extra = [k for k in doc if k not in (*META_FIELDS, "spec")]
        for k in extra:
            v.add(k, "unknown field: a policy's settings go under 'spec'")
        spec, problems = parse_spec(rtype, doc.get("spec", {}), "spec")
    v.extend(problems)
    v.raise_if_any()

    resource = Resource(rtype, Meta(name=res_name, mesh=res_mesh, labels=dict(labels)), spec)
    if rtype.check_resource is not None:
        rtype.check_resource(resource, v)
        v.raise_if_any()
    return resource


def to_wire(resource: Resource, *, redact: bool = False) -> dict[str, Any]:
    """The universal form, as the API returns it and kumactl prints it."""
    rtype, meta = resource.type, resource.meta
    out: dict[str, Any] = {"type": rtype.name}
    if rtype.scope is Scope.MESH:
        out["mesh"] = meta.mesh
    out["name"] = meta.name
    out["creationTime"] = wire_time(meta.creation_time)
    out["modificationTime"] = wire_time(meta.modification_time)
    if meta.labels:
        out["labels"] = dict(meta.labels)
    spec = resource.spec.to_wire()
    if redact and rtype.is_secret:
        spec = {k: "***" for k in spec}
    if rtype.flat:
        out.update(spec)
    else:
        out["spec"] = spec
    return out


def spec_from_store(rtype: ResourceType, data: Mapping[str, Any]) -> Any:
    """Specs read back from our own store were validated on write; parse without re-running checks."""
    return rtype.spec_cls.model_validate(data, strict=False)


def wire_time(t: datetime | None) -> str | None:
    """A time as the API and the insights write it: RFC 3339 in UTC with a `Z`."""
    return t.isoformat().replace("+00:00", "Z") if t else None


_now: tuple[int, str] = (-1, "")  # (millisecond, its text): the latest now_text()


def now_text() -> str:
    """Now, as `wire_time` writes it, to within a millisecond: the stream callbacks ask for it per response
    and per ACK (a thousand in a few milliseconds on a change), so the text is made once per millisecond.
    Never earlier than a previous answer (the clock's own steps back aside)."""
    global _now
    t = time.time()
    ms = int(t * 1000)
    last = _now
    if last[0] == ms:
        return last[1]
    text = datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
    _now = (ms, text)
    return text
