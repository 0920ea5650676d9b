"""The import rules between the project's packages, read from the source (every import statement, also the
ones inside functions):

- no circle between modules of `controlplane` and `agent`;
- the xDS generators (the policy framework) never import a policy: policies register what the framework needs
  (`register_plugin`, `register_merger`, `register_route_names`);
- `agent` imports from the control plane only `controlplane.resources` (kuma-dp validates Dataplanes with the
  same model, and nothing else of the control plane ships in its package's hot path);
- `controlplane.resources` imports nothing else of the control plane, except `load_all()` importing the policy
  modules so they register their types;
- `kuma_shared` (what both the agent and the control plane run) imports neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def modules() -> dict[str, Path]:
    found = {}
    for base in ("controlplane", "agent", "kuma_shared"):
        for path in (REPO / base).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a `from package import name` of a submodule counts as that)."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers() -> None:
    g = graph()
    problems = []
    for module, deps in sorted(g.items()):
        for dep in sorted(deps):
            if module.startswith("controlplane.xds.generate") and dep.startswith("controlplane.policies"):
                problems.append(f"{module} imports the policy {dep}: register it from the policy instead")
            if module.startswith("agent") and dep.startswith("controlplane") \
                    and not dep.startswith("controlplane.resources"):
                problems.append(f"{module} imports {dep}: the agent may import only controlplane.resources")
            if module.startswith("controlplane.resources") and dep.startswith("controlplane") \
                    and not dep.startswith("controlplane.resources") \
                    and (module, dep) != ("controlplane.resources", "controlplane.policies"):
                problems.append(f"{module} imports {dep}: resources are the bottom layer")
            if module.startswith("kuma_shared") and not dep.startswith("kuma_shared"):
                problems.append(f"{module} imports {dep}: kuma_shared is shared by the agent and the control plane")
    assert problems == []
