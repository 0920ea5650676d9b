"""`kumactl apply -f FILE|-`: create or update resources from (multi-document) YAML.

All or nothing up to the first write: every document is validated locally and every mesh it names must exist
on the control plane (or be created by an earlier document of the same apply) before anything is written.
Then each document is PUT in file order, exactly as written (plus its type/name/mesh), and the control
plane's own validation has the last word.
"""

from __future__ import annotations

import re
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from controlplane.resources import load_all
from controlplane.resources.base import Registry, Resource, ResourceType, Scope
from controlplane.resources.codec import from_wire
from controlplane.resources.documents import DocumentError, load_yaml_all
from controlplane.resources.errors import ResourceValidationError

from .client import ApiClient, ApiError
from .context import global_options, state
from .errors import KumactlError
from .output import render_yaml_documents

# Kuma renders `{{ name }}` (mustache); we accept the same, with or without the inner blanks.
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")
OUTPUT_ONLY = ("creationTime", "modificationTime")


@dataclass
class Document:
    index: int  # 1-based position in the file
    body: Any

    @property
    def label(self) -> str:
        if isinstance(self.body, Mapping):
            kind, name = self.body.get("type"), self.body.get("name")
            if kind and name:
                return f"document {self.index} ({kind} {name})"
            if kind:
                return f"document {self.index} ({kind})"
        return f"document {self.index}"


@dataclass
class Planned:
    doc: Document
    resource: Resource

    @property
    def rtype(self) -> ResourceType:
        return self.resource.type

    @property
    def path(self) -> str:
        meta, rtype = self.resource.meta, self.resource.type
        name = urllib.parse.quote(meta.name, safe="")
        if rtype.scope is Scope.MESH:
            return f"/meshes/{urllib.parse.quote(meta.mesh, safe='')}/{rtype.plural}/{name}"
        return f"/{rtype.plural}/{name}"

    @property
    def wire(self) -> dict[str, Any]:
        """What is sent: the user's own fields (output-only timestamps dropped), type/name/mesh included."""
        body = {k: v for k, v in self.doc.body.items() if k not in OUTPUT_ONLY}
        body["type"] = self.rtype.name
        body["name"] = self.resource.meta.name
        if self.rtype.scope is Scope.MESH:
            body["mesh"] = self.resource.meta.mesh
        return body

    def describe(self) -> str:
        meta = self.resource.meta
        where = f' in mesh "{meta.mesh}"' if self.rtype.scope is Scope.MESH else ""
        return f'{self.rtype.name} "{meta.name}"{where}'


# --- text -> documents ------------------------------------------------------------------------------------------


def parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} must be KEY=VALUE", param_hint="'--var'")
        out[key.strip()] = value
    return out


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Replace every `{{ key }}`; a placeholder with no --var is an error naming it (all of them at once)."""
    missing = sorted({m.group(1) for m in PLACEHOLDER.finditer(text) if m.group(1) not in variables})
    if missing:
        raise KumactlError(*(f"template variable {name!r} is not set: pass --var {name}=VALUE" for name in missing))
    return PLACEHOLDER.sub(lambda m: variables[m.group(1)], text)


def parse_documents(text: str) -> list[Document]:
    docs: list[Document] = []
    position = 0
    try:
        for body in load_yaml_all(text):
            position += 1
            if body is not None:
                docs.append(Document(position, body))
    except DocumentError as e:
        raise KumactlError(f"document {position + 1}: {e}") from None
    if not docs:
        raise KumactlError("nothing to apply: the input holds no YAML documents")
    return docs


def validate(docs: Sequence[Document], registry: Registry) -> list[Planned]:
    """Every document checked locally; all problems of all documents reported together."""
    planned: list[Planned] = []
    lines: list[str] = []
    for doc in docs:
        try:
            resource = from_wire(doc.body, registry)
        except ResourceValidationError as e:
            lines.extend(f"{doc.label}: {p.field}: {p.reason}" if p.field else f"{doc.label}: {p.reason}"
                         for p in e.invalid)
            continue
        if resource.type.readonly:
            lines.append(f"{doc.label}: type: {resource.type.name} is maintained by the control plane and "
                         "cannot be applied")
            continue
        planned.append(Planned(doc, resource))
    if lines:
        raise KumactlError(*lines)
    return planned


def check_meshes(planned: Sequence[Planned], client: ApiClient) -> None:
    """Each mesh-scoped resource's mesh exists on the control plane or is created earlier in this apply."""
    created_at: dict[str, int] = {}
    for p in planned:
        if p.rtype.name == "Mesh":
            created_at.setdefault(p.resource.meta.name, p.doc.index)
    exists: dict[str, bool] = {}
    lines: list[str] = []
    for p in planned:
        if p.rtype.scope is not Scope.MESH:
            continue
        mesh = p.resource.meta.mesh
        first = created_at.get(mesh)
        if first is not None and first < p.doc.index:
            continue
        if mesh not in exists:
            resp = client.request("GET", f"/meshes/{urllib.parse.quote(mesh, safe='')}", ok=(404,))
            exists[mesh] = resp.status != 404
        if exists[mesh]:
            continue
        if first is not None:
            lines.append(f"{p.doc.label}: mesh: mesh {mesh!r} is created by document {first}, after this one: "
                         "put the Mesh first")
        else:
            lines.append(f"{p.doc.label}: mesh: mesh {mesh!r} does not exist: create it first (a Mesh document "
                         "earlier in this file, or kumactl apply)")
    if lines:
        raise KumactlError(*lines)


def put_all(planned: Sequence[Planned], client: ApiClient) -> None:
    for i, p in enumerate(planned):
        try:
            resp = client.request("PUT", p.path, body=p.wire)
        except ApiError as e:
            done = [str(q.doc.index) for q in planned[:i]]
            rest = [str(q.doc.index) for q in planned[i + 1:]]
            summary = []
            if done:
                summary.append(f"already applied: document(s) {', '.join(done)}")
            if rest:
                summary.append(f"not applied: document(s) {', '.join(rest)}")
            raise KumactlError(*e.prefixed(p.doc.label).lines, *summary) from None
        click.echo(f"{'created' if resp.status == 201 else 'updated'} {p.describe()}")


def read_input(file: str | None) -> str:
    if file in (None, "-"):
        if file is None and sys.stdin.isatty():
            raise click.UsageError("say what to apply: -f FILE, or -f - to read standard input")
        return sys.stdin.read()
    assert file is not None
    try:
        with open(file, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise KumactlError(f"cannot read {file}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KumactlError(f"{file} is not UTF-8 text") from None


@click.command("apply")
@click.option("-f", "--file", "file", default=None, metavar="FILE",
              help="path to the YAML to apply (several documents separated by ---); - reads standard input")
@click.option("-v", "--var", "var", multiple=True, metavar="KEY=VALUE",
              help="value for a {{ KEY }} placeholder in the file (repeatable)")
@click.option("--dry-run", is_flag=True, help="print the resulting documents and write nothing")
@global_options
def apply_cmd(file: str | None, var: tuple[str, ...], dry_run: bool) -> None:
    """Create or modify resources (Mesh, Dataplane, policies, ...) from YAML."""
    variables = parse_vars(var)
    text = substitute(read_input(file), variables)
    planned = validate(parse_documents(text), load_all())
    if dry_run:
        click.echo(render_yaml_documents([p.wire for p in planned]), nl=False)
        return
    client = state().client()
    check_meshes(planned, client)
    put_all(planned, client)
