"""The dataplane definition kuma-dp registers: templating, parsing, local checks and full validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.config import DpConfig
from agent.dataplane import Definition, DefinitionError, load, parse, render, validate

TEMPLATE = """\
type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: {{address}}
  inbound:
  - port: {{ port }}
    servicePort: 8080
    tags:
      kuma.io/service: web
"""


def cfg(**kw: object) -> DpConfig:
    return dataclasses.replace(DpConfig(), **kw)  # type: ignore[arg-type]


def test_render_fills_every_variable() -> None:
    text, warnings = render(TEMPLATE, {"name": "web-1", "address": "10.0.0.5", "port": "18080"})
    assert "name: web-1" in text and "address: 10.0.0.5" in text and "port: 18080" in text
    assert warnings == []


def test_render_names_missing_variables_with_their_line() -> None:
    with pytest.raises(DefinitionError) as e:
        render(TEMPLATE, {"name": "web-1"}, "--dataplane-file web.yaml")
    message = str(e.value)
    assert "{{ address }} (line 5)" in message and "{{ port }} (line 7)" in message
    assert "--dataplane-var address=... --dataplane-var port=..." in message


def test_render_warns_about_unused_variables() -> None:
    _, warnings = render("name: {{ name }}", {"name": "a", "zone": "z"}, "--dataplane")
    assert warnings == ["--dataplane-var zone is not used by --dataplane"]


def test_load_from_file_with_vars(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(TEMPLATE)
    d = load(cfg(dataplane_file=str(path), dataplane_vars={"name": "web-1", "address": "127.0.0.1",
                                                           "port": "18080"}))
    assert (d.mesh, d.name) == ("default", "web-1")
    assert d.doc is not None and d.doc["networking"]["inbound"][0]["port"] == 18080
    validate(d, "dataplane")  # valid: no exception


def test_load_inline_json_and_mesh_from_flag() -> None:
    d = load(cfg(dataplane='{"type": "Dataplane", "name": "db-1", "networking": {"address": "127.0.0.1", '
                           '"inbound": [{"port": 5432, "tags": {"kuma.io/service": "db"}}]}}', mesh="prod"))
    assert d.mesh == "prod" and d.doc is not None and d.doc["mesh"] == "prod"


def test_load_without_definition_uses_name_and_mesh() -> None:
    d = load(cfg(name="web-1", mesh="default"))
    assert d.doc is None and (d.mesh, d.name) == ("default", "web-1")


@pytest.mark.parametrize(("text", "flags", "message"), [
    ("type: Mesh\nname: x\n", {}, "type: is 'Mesh'; kuma-dp --proxy-type dataplane runs a Dataplane"),
    ("type: ZoneIngress\nname: x\n", {"proxy_type_given": True},
     "type: is 'ZoneIngress' but --proxy-type dataplane runs a Dataplane"),
    ("mesh: default\nname: x\n", {}, "type: field is required"),
    ("type: Dataplane\nmesh: default\n", {}, "name: field is required"),
    ("type: Dataplane\nname: web-1\n", {}, "mesh: field is required"),
    ("type: Dataplane\nmesh: default\nname: web-1\n", {"name": "web-2"}, "name: is 'web-1' but --name is 'web-2'"),
    ("type: Dataplane\nmesh: a\nname: web-1\n", {"mesh": "b"}, "mesh: is 'a' but --mesh is 'b'"),
])
def test_identity_checks(text: str, flags: dict[str, str], message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(cfg(dataplane=text, **flags))


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("- a\n- b\n", "must be a YAML/JSON object"),
    ("a: 1\n---\nb: 2\n", "holds 2 documents"),
    ("name: [x\n", "not valid YAML or JSON at line 2"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse(text, "--dataplane")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="no such file"):
        load(cfg(dataplane_file=str(tmp_path / "missing.yaml")))
    with pytest.raises(DefinitionError, match="is a directory"):
        load(cfg(dataplane_file=str(tmp_path)))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DefinitionError, match="not text"):
        load(cfg(dataplane_file=str(binary)))


def test_validate_reports_field_paths() -> None:
    doc = {"type": "Dataplane", "mesh": "default", "name": "web-1",
           "networking": {"address": "not an ip!", "inbound": [{"port": 0, "tags": {}}]}}
    with pytest.raises(DefinitionError) as e:
        validate(Definition("--dataplane-file web.yaml", doc, "default", "web-1"), "dataplane")
    message = str(e.value)
    assert message.startswith("--dataplane-file web.yaml is not a valid Dataplane:")
    assert "networking.inbound[0].port" in message and "networking.inbound[0].tags" in message


def test_a_zone_ingress_definition_runs_an_ingress_unless_the_proxy_type_says_otherwise() -> None:
    """One packaged unit (kuma-dp@NAME) runs dataplanes and ingresses: the definition's type decides."""
    doc = {"type": "ZoneIngress", "name": "ingress-1", "networking": {"address": "10.0.0.1", "port": 10001}}
    assert load(cfg(dataplane=__import__("json").dumps(doc))).proxy_type == "ingress"
    dp = {"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {"address": "10.0.0.1"}}
    assert load(cfg(dataplane=__import__("json").dumps(dp))).proxy_type == "dataplane"
    with pytest.raises(DefinitionError, match="ZoneIngress' but --proxy-type dataplane"):
        load(cfg(dataplane=__import__("json").dumps(doc), proxy_type_given=True))


def test_validate_ingress_as_zone_ingress() -> None:
    doc = {"type": "ZoneIngress", "name": "ingress-1", "networking": {"address": "10.0.0.1", "port": 10001}}
    d = load(cfg(dataplane=__import__("json").dumps(doc), proxy_type="ingress"))
    assert d.name == "ingress-1" and d.mesh == "default"
    validate(d, "ingress")
    with pytest.raises(DefinitionError, match=r"networking\.port"):
        validate(Definition("--dataplane", {**doc, "networking": {"address": "10.0.0.1", "port": 0}},
                            "default", "ingress-1"), "ingress")


def test_admin_port_from_definition() -> None:
    d = Definition("x", {"networking": {"admin": {"port": 9911}}}, "m", "n")
    assert d.admin_port == 9911
    assert Definition("x", None, "m", "n").admin_port is None
