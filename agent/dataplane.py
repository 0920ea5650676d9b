"""The dataplane definition kuma-dp registers: read it (`--dataplane-file` / `--dataplane`), fill its template
variables (`{{ name }}` <- `--dataplane-var name=web-1`, as Kuma's templates), parse it, and validate it
locally with the control plane's own model (`controlplane.resources.from_wire`) before anything is sent.

`load()` is cheap (YAML only) and runs in kuma-dp itself; `validate()` imports the resource model (pydantic)
and runs in the bootstrap worker, so the long-running kuma-dp process never carries that memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import DpConfig  # not at run time: the bootstrap worker loads this module without it

_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
TYPE_FOR_PROXY = {"dataplane": "Dataplane", "ingress": "ZoneIngress"}


class DefinitionError(Exception):
    """The definition cannot be used; the message says where (file, line, field) and how to fix it."""


@dataclass
class Definition:
    source: str  # how the operator gave it, for messages: "--dataplane-file web.yaml", "--dataplane"
    doc: dict[str, Any] | None  # None: no definition sent, the control plane uses the stored Dataplane
    mesh: str
    name: str
    warnings: list[str] = field(default_factory=list)
    proxy_type: str = "dataplane"  # what it runs: `--proxy-type`, else what the definition's `type` says

    @property
    def admin_port(self) -> int | None:
        """`networking.admin.port` of a Dataplane (Kuma's per-dataplane admin port), when set."""
        networking = (self.doc or {}).get("networking")
        admin = networking.get("admin") if isinstance(networking, dict) else None
        port = admin.get("port") if isinstance(admin, dict) else None
        return port if isinstance(port, int) and not isinstance(port, bool) else None


def render(template: str, variables: dict[str, str], source: str = "the dataplane template") -> tuple[str, list[str]]:
    """Replace `{{ key }}` with `variables[key]`. Every variable the template uses must be given (an empty
    address silently registered is worse than an error); unused variables come back as warnings."""
    missing: dict[str, int] = {}
    used: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in variables:
            used.add(key)
            return variables[key]
        missing.setdefault(key, template.count("\n", 0, match.start()) + 1)
        return match.group(0)

    text = _VAR.sub(substitute, template)
    if missing:
        detail = ", ".join(f"{{{{ {k} }}}} (line {line})" for k, line in missing.items())
        flags = " ".join(f"--dataplane-var {k}=..." for k in missing)
        raise DefinitionError(f"{source}: no value for {detail}: pass {flags}")
    warnings = [f"--dataplane-var {k} is not used by {source}" for k in sorted(set(variables) - used)]
    return text, warnings


def parse(text: str, source: str) -> dict[str, Any]:
    from kuma_shared.documents import DocumentError, load_yaml_all  # not controlplane's: no pydantic here

    try:  # bounded like API bodies: no nesting past 100 levels, no alias bombs
        docs = [d for d in load_yaml_all(text) if d is not None]
    except DocumentError as e:
        where = f" at line {e.line}, column {e.column}" if e.line is not None else ""
        problem = e.reason.removeprefix("not valid YAML: ")
        raise DefinitionError(f"{source}: not valid YAML or JSON{where}: {problem}") from None
    if not docs:
        raise DefinitionError(f"{source}: empty: it must hold one Dataplane (type: Dataplane, mesh, name, "
                              "networking)")
    if len(docs) > 1:
        raise DefinitionError(f"{source}: holds {len(docs)} documents; one kuma-dp runs exactly one Dataplane")
    doc = docs[0]
    if not isinstance(doc, dict):
        raise DefinitionError(f"{source}: must be a YAML/JSON object (type: Dataplane, mesh, name, networking), "
                              f"not a {type(doc).__name__}")
    return doc


def load(cfg: DpConfig) -> Definition:
    """The definition from the flags, templated and parsed, with its mesh and name checked against
    `--mesh`/`--name` when those are given too. Without an explicit `--proxy-type`, a definition of `type:
    ZoneIngress` runs a zone ingress (so one packaged unit, kuma-dp@NAME, runs either)."""
    proxy_type = cfg.proxy_type
    if cfg.dataplane_file:
        source = f"--dataplane-file {cfg.dataplane_file}"
        try:
            template = Path(cfg.dataplane_file).read_text()
        except FileNotFoundError:
            raise DefinitionError(f"{source}: no such file") from None
        except IsADirectoryError:
            raise DefinitionError(f"{source}: is a directory, not a file") from None
        except PermissionError:
            raise DefinitionError(f"{source}: permission denied (kuma-dp runs as uid "
                                  f"{_uid()}): make it readable") from None
        except UnicodeDecodeError:
            raise DefinitionError(f"{source}: not text (UTF-8 YAML or JSON expected)") from None
        except OSError as e:
            raise DefinitionError(f"{source}: cannot read it: {e.strerror or e}") from None
    elif cfg.dataplane:
        source, template = "--dataplane", cfg.dataplane
    else:
        assert cfg.name is not None
        return Definition("--name", None, cfg.mesh or "default", cfg.name, proxy_type=proxy_type)
    text, warnings = render(template, cfg.dataplane_vars, source)
    doc = parse(text, source)
    problems = []
    rtype = doc.get("type")
    if not cfg.proxy_type_given and rtype == TYPE_FOR_PROXY["ingress"]:
        proxy_type = "ingress"
    expected_type = TYPE_FOR_PROXY[proxy_type]
    if rtype != expected_type:
        if rtype is None:
            problems.append(f"type: field is required (type: {expected_type})")
        elif rtype in TYPE_FOR_PROXY.values():
            problems.append(f"type: is {rtype!r} but --proxy-type {proxy_type} runs a {expected_type}")
        else:
            problems.append(f"type: is {rtype!r}; kuma-dp --proxy-type {proxy_type} runs a {expected_type}")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: field is required" if name is None else "name: must be a non-empty string")
        name = ""
    elif cfg.name and cfg.name != name:
        problems.append(f"name: is {name!r} but --name is {cfg.name!r}: they must agree")
    mesh = doc.get("mesh")
    if expected_type == "Dataplane":
        if not isinstance(mesh, str) or not mesh:
            if cfg.mesh and mesh is None:
                doc["mesh"] = mesh = cfg.mesh  # Kuma fills the mesh from --mesh
            else:
                problems.append("mesh: field is required (the mesh this dataplane joins)" if mesh is None
                                else "mesh: must be a non-empty string")
                mesh = ""
        elif cfg.mesh and cfg.mesh != mesh:
            problems.append(f"mesh: is {mesh!r} but --mesh is {cfg.mesh!r}: they must agree")
    else:
        mesh = cfg.mesh or "default"  # a ZoneIngress belongs to no mesh; the request still names one
    if problems:
        raise DefinitionError(f"{source} is not a valid {expected_type}:\n  " + "\n  ".join(problems))
    return Definition(source, doc, str(mesh), str(name), warnings, proxy_type)


def validate(definition: Definition, proxy_type: str) -> None:
    """Full validation with the control plane's model: every bad field by its path, or nothing."""
    if definition.doc is None:
        return
    from controlplane.resources import REGISTRY, ResourceValidationError, from_wire

    rtype = REGISTRY.by_name(TYPE_FOR_PROXY[proxy_type])
    assert rtype is not None
    try:
        from_wire(definition.doc, REGISTRY, rtype=rtype)
    except ResourceValidationError as e:
        lines = [f"{p.field}: {p.reason}" if p.field else p.reason for p in e.invalid]
        raise DefinitionError(f"{definition.source} is not a valid {rtype.name}:\n  " + "\n  ".join(lines)) from None


def _uid() -> int:
    import os

    return os.getuid()
