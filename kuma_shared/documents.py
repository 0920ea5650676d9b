"""Text -> plain data for every resource document a user or peer sends (API bodies, `kumactl apply` files,
kuma-dp's dataplane file), bounded so that no body can exhaust the stack, memory or time.

Why each bound:
- Nesting: PyYAML composes recursively and `json` recurses in C; a body nested a few thousand levels deep
  raised RecursionError (a 500). No resource schema is deeper than ~15 levels, so MAX_DEPTH (100, protobuf's
  default recursion limit, which Kuma's own decoding uses) refuses only what no resource can be.
- YAML anchors and aliases: an alias shares the node it names, so ten levels of ten aliases each ("billion
  laughs") are a few hundred bytes that expand to 10^10 values the moment anything walks them. Aliases are
  kept (operators use anchors to share tags), but a document's expanded size is counted while it is composed
  and refused past MAX_EXPANDED_VALUES, and an alias that refers to a node containing it (a cycle) is refused.
- Types: only what JSON can hold. YAML timestamps stay strings (as Kuma's YAML-to-JSON conversion keeps
  them); `!!binary`, `!!set`, `!!omap`, `!!pairs` are refused, since nothing downstream can carry them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import yaml

MAX_DEPTH = 100
MAX_EXPANDED_VALUES = 1_000_000


class DocumentError(ValueError):
    """A body that cannot become a resource document; `reason` says why and how to fix it."""

    def __init__(self, reason: str, *, line: int | None = None, column: int | None = None) -> None:
        self.reason, self.line, self.column = reason, line, column
        where = f" (line {line}, column {column})" if line is not None and column is not None else ""
        super().__init__(f"{reason}{where}")


def _too_deep() -> str:
    return f"nested deeper than {MAX_DEPTH} levels: no resource is that deep; check the document's structure"


def check_depth(doc: Any) -> None:
    """Raise DocumentError when `doc` holds containers nested deeper than MAX_DEPTH (iterative walk)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise DocumentError(_too_deep())
        stack.extend((child, depth + 1) for child in children)


def load_json(raw: bytes | str) -> Any:
    """One JSON document; DocumentError for bad syntax, excessive nesting or invalid UTF-8."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise DocumentError(_too_deep()) from None
    except UnicodeDecodeError:
        raise DocumentError("not UTF-8 text: send JSON encoded as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DocumentError(f"not valid JSON: {e.msg}", line=e.lineno, column=e.colno) from None
    check_depth(doc)
    return doc


def load_yaml(raw: bytes | str) -> Any:
    """One YAML document (JSON is YAML too); DocumentError for anything `load_yaml_all` refuses or a stream
    with more than one document."""
    docs = list(load_yaml_all(raw))
    if len(docs) > 1:
        raise DocumentError(f"holds {len(docs)} YAML documents: send one resource per request")
    return docs[0] if docs else None


def load_yaml_all(raw: bytes | str) -> Iterator[Any]:
    """Every document of a (multi-document) YAML stream, each bounded in depth and expanded size."""
    loader = _BoundedLoader(raw)
    try:
        while loader.check_data():
            yield loader.get_data()
    except DocumentError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        context = e.context
        if context and e.context_mark is not None:  # where the construct that failed began
            context += f" at line {e.context_mark.line + 1}, column {e.context_mark.column + 1}"
        problem = ": ".join(p for p in (context, e.problem) if p) or str(e)
        raise DocumentError(f"not valid YAML: {problem}", line=mark.line + 1 if mark else None,
                            column=mark.column + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise DocumentError(f"not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise DocumentError("not UTF-8 text: send YAML encoded as UTF-8") from None
    finally:
        loader.dispose()


def _refuse_tag(loader: _BoundedLoader, node: yaml.Node) -> Any:
    mark = node.start_mark
    raise DocumentError(f"the YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not supported: resources "
                        "hold only strings, numbers, booleans, null, lists and maps",
                        line=mark.line + 1, column=mark.column + 1)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts depth and expanded size while composing, before anything is constructed."""

    def __init__(self, stream: bytes | str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded

    def compose_document(self) -> yaml.Node | None:
        self._sizes = {}
        try:
            return super().compose_document()
        finally:
            self._sizes = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise DocumentError(f"the alias *{event.anchor} refers to a node that contains it: a resource "
                                    "cannot be recursive", line=event.start_mark.line + 1,
                                    column=event.start_mark.column + 1)
            return super().compose_node(parent, index)
        start = self.peek_event().start_mark
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise DocumentError(_too_deep(), line=start.line + 1, column=start.column + 1)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes.get(id(child), 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        if size > MAX_EXPANDED_VALUES:
            raise DocumentError(f"its anchors and aliases expand to more than {MAX_EXPANDED_VALUES:,} values: "
                                "write the document out with fewer aliases", line=start.line + 1,
                                column=start.column + 1)
        self._sizes[id(node)] = size
        return node


# Timestamps stay strings (drop the implicit resolver); exotic explicit tags are refused.
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag in ("binary", "set", "omap", "pairs", "timestamp"):
    _BoundedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
