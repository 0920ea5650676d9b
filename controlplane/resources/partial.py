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
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import InvalidParameter, Violations, join_path
from .paths import field_required, parse_path, type_at, walk_raw

Loc = tuple[str | int, ...]


def checks_despite(model: type[BaseModel], body: Any, err: ValidationError, prefix: str) -> list[InvalidParameter]:
    """The spec checks' findings on `body` without the parts `err` refused; [] when nothing can be checked."""
    cuts: set[Loc] = set()
    for e in err.errors(include_url=False):
        _, _, raw = walk_raw(model, prefix, e["loc"])
        cut = _cut_point(model, raw)
        if cut is None:
            return []  # a required field of the document itself: nothing sensible is left to check
        cuts.add(cut)
    outermost = [c for c in sorted(cuts, key=len) if not any(c[:len(o)] == o for o in cuts if o != c)]
    trimmed = copy.deepcopy(body)
    removed: dict[Loc, list[int]] = {}
    # Deepest first, and later list positions before earlier ones, so no cut moves another.
    for cut in sorted(outermost, key=lambda c: (len(c), c), reverse=True):
        container = _at(trimmed, cut[:-1])
        last = cut[-1]
        if isinstance(last, int) and isinstance(container, list) and last < len(container):
            del container[last]
            removed.setdefault(cut[:-1], []).append(last)
        elif isinstance(last, str) and isinstance(container, dict):
            container.pop(last, None)
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
    out = []
    for item in v.items:
        original = _original_loc(item.field, prefix, removed)
        if original is None:
            continue
        if any(original[:len(c)] == c or c[:len(original)] == original for c in outermost):
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


def _original_loc(path: str, prefix: str, removed: dict[Loc, list[int]]) -> Loc | None:
    """A path found in the trimmed copy, as a location in the user's document (list positions shifted back)."""
    tokens, head = parse_path(path), parse_path(prefix)
    if tokens is None or head is None or tokens[:len(head)] != head:
        return None
    out: list[str | int] = []
    for part in tokens[len(head):]:
        if isinstance(part, int):
            for gone in sorted(removed.get(tuple(out), ())):
                if gone <= part:
                    part += 1
        out.append(part)
    return tuple(out)
