"""Range and cross-field checks of the parts of a document that did parse, so that one answer names the
structural mistakes (a wrong type, a missing field, an unknown field) and the range mistakes together and
the user fixes a document in one round.

How: every value pydantic refused is cut out of a copy of the document at the nearest point where that is
allowed (the field itself when it is optional or unknown, else the list element or map entry around it),
the copy is validated again, and the spec's own checks run on it. Their findings are translated back to the
original list positions; findings at or above a cut (e.g. "needs at least one inbound" because the only
inbound was cut) are dropped, since they would describe the copy, not the user's document.
"""

from __future__ import annotations

import copy
import logging
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import InvalidParameter, Violations, join_path
from .paths import field_required, parse_path, type_at, walk_raw

Loc = tuple[str | int, ...]
log = logging.getLogger("kuma.resources")


def checks_despite(model: type[BaseModel], body: Any, err: ValidationError, prefix: str) -> list[InvalidParameter]:
    """The spec checks' findings on `body` without the parts `err` refused; [] when nothing can be checked."""
    try:
        return _checks_despite(model, body, err, prefix)
    except Exception:  # an extra for the user: it must never turn the 400 being answered into a 500
        log.exception("range checks of a partly invalid document failed; answering the structural errors only",
                      extra={"type": model.__name__})
        return []


def _checks_despite(model: type[BaseModel], body: Any, err: ValidationError, prefix: str) -> list[InvalidParameter]:
    cuts: set[Loc] = set()
    for e in err.errors(include_url=False):
        _, _, raw = walk_raw(model, prefix, e["loc"])
        cut = _cut_point(model, raw)
        if cut is None:
            return []  # a required field of the document itself: nothing sensible is left to check
        cuts.add(cut)
    # Linear in the number of cuts (a 10 MB body can hold 100,000 of them): sets of locations, not pairs.
    outermost = {c for c in cuts if not any(c[:k] in cuts for k in range(1, len(c)))}
    trimmed = copy.deepcopy(body)
    by_parent: dict[Loc, set[str | int]] = {}
    for cut in outermost:
        by_parent.setdefault(cut[:-1], set()).add(cut[-1])
    survivors: dict[Loc, list[int]] = {}  # list location -> original positions still there, in order
    # Deepest parents first, so no cut moves the location of another.
    for parent in sorted(by_parent, key=len, reverse=True):
        container, gone = _at(trimmed, parent), by_parent[parent]
        if isinstance(container, list) and all(isinstance(g, int) for g in gone):
            kept = [i for i in range(len(container)) if i not in gone]
            container[:] = [container[i] for i in kept]
            survivors[parent] = kept
        elif isinstance(container, dict):
            for key in gone:
                container.pop(key, None)
        else:
            return []
    try:
        spec = model.model_validate(trimmed)
    except ValidationError:
        return []  # cutting exposed another problem (a list left too short, say): report the first round
    v = Violations()
    check = getattr(spec, "check", None)
    if check is None:
        return []
    check(v, prefix)
    around = {c[:k] for c in outermost for k in range(len(c) + 1)}  # every cut and everything above one
    out = []
    for item in v.items:
        original = _original_loc(item.field, prefix, survivors)
        if original is None or original in around or any(original[:k] in outermost for k in range(len(original))):
            continue
        out.append(InvalidParameter(join_path(prefix, original, model), item.reason))
    return out


def _cut_point(model: Any, raw: Loc) -> Loc | None:
    """The smallest piece around `raw` that can be removed and leave a document of the right shape."""
    for k in range(len(raw), 0, -1):
        part = raw[k - 1]
        if isinstance(part, int):
            return raw[:k]
        container = type_at(model, raw[:k - 1])
        if typing.get_origin(container) in (dict, Mapping):
            return raw[:k]
        if isinstance(container, type) and issubclass(container, BaseModel) and not field_required(container, part):
            return raw[:k]
    return None


def _at(doc: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(part, int) and isinstance(doc, list) and part < len(doc):
            doc = doc[part]
        elif isinstance(part, str) and isinstance(doc, dict):
            doc = doc.get(part)
        else:
            return None
    return doc


def _original_loc(path: str, prefix: str, survivors: dict[Loc, list[int]]) -> Loc | None:
    """A path found in the trimmed copy, as a location in the user's document (list positions shifted back)."""
    tokens, head = parse_path(path), parse_path(prefix)
    if tokens is None or head is None or tokens[:len(head)] != head:
        return None
    out: list[str | int] = []
    for part in tokens[len(head):]:
        if isinstance(part, int):
            kept = survivors.get(tuple(out))
            if kept is not None:
                if part >= len(kept):
                    return None
                part = kept[part]
        out.append(part)
    return tuple(out)
