"""Bounded parsing of resource documents (API bodies, kumactl apply files) and the shape of the answers:
deep nesting, alias bombs, recursive aliases, exotic YAML tags, capped violation lists, one path spelling."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controlplane.resources import ResourceValidationError, from_wire, load_all
from controlplane.resources.documents import (
    MAX_DEPTH,
    MAX_EXPANDED_VALUES,
    DocumentError,
    load_json,
    load_yaml,
    load_yaml_all,
)
from controlplane.resources.errors import MAX_REPORTED

DEEP = 2000


def nested_json(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def alias_bomb(levels: int = 9, fan: int = 9) -> str:
    """The "billion laughs": each level lists the previous one `fan` times; fan**levels values expanded."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [
    nested_json(DEEP),
    "[" * DEEP + "]" * DEEP,
    "a:\n" + "".join(f"{'  ' * (i + 1)}a:\n" for i in range(DEEP)) + "  " * (DEEP + 1) + "x: 1\n",  # block style
    "- " * DEEP + "x\n",
    "[" * 100_000,  # unterminated, and deeper than any recursion limit
], ids=["json-objects", "flow-lists", "block-maps", "block-lists", "unterminated"])
def test_deep_yaml_is_refused_with_the_reason(text: str) -> None:
    with pytest.raises(DocumentError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_yaml(text)


@pytest.mark.parametrize("raw", [nested_json(DEEP).encode(), b"[" * DEEP + b"]" * DEEP, b"[" * 100_000,
                                 nested_json(MAX_DEPTH + 1).encode()])
def test_deep_json_is_refused_with_the_reason(raw: bytes) -> None:
    with pytest.raises(DocumentError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_json(raw)


def test_depth_up_to_the_limit_is_accepted() -> None:
    assert load_json(nested_json(MAX_DEPTH - 1))["a"]["a"]
    assert load_yaml(nested_json(MAX_DEPTH - 1))["a"]["a"]


def test_alias_bomb_is_refused_before_it_expands() -> None:
    with pytest.raises(DocumentError, match=f"expand to more than {MAX_EXPANDED_VALUES:,} values") as e:
        load_yaml(alias_bomb())
    assert e.value.line is not None  # points at the level that crossed the cap
    with pytest.raises(DocumentError, match="expand to more than"):
        list(load_yaml_all("a: 1\n---\n" + alias_bomb()))


def test_modest_aliases_still_work() -> None:
    doc = load_yaml("common: &tags {kuma.io/service: web, version: v1}\ninbound:\n- tags: *tags\n- tags: *tags\n")
    assert doc["inbound"][1]["tags"] == {"kuma.io/service": "web", "version": "v1"}
    merged = load_yaml("base: &b {a: 1}\nx:\n  <<: *b\n  c: 2\n")
    assert merged["x"] == {"a": 1, "c": 2}


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(DocumentError, match=r"alias \*a refers to a node that contains it"):
        load_yaml("a: &a\n  b: *a\n")


@pytest.mark.parametrize("text, tag", [("a: !!binary aGk=", "!!binary"), ("a: !!set {x: null}", "!!set"),
                                       ("a: !!omap [x: 1]", "!!omap"), ("a: !!timestamp 2024-01-01", "!!timestamp")])
def test_non_json_tags_are_refused(text: str, tag: str) -> None:
    with pytest.raises(DocumentError, match=f"YAML tag {tag} is not supported"):
        load_yaml(text)


def test_timestamps_stay_strings_and_python_tags_are_refused() -> None:
    assert load_yaml("created: 2024-01-01T00:00:00Z\n") == {"created": "2024-01-01T00:00:00Z"}
    with pytest.raises(DocumentError, match="not valid YAML"):
        load_yaml("a: !!python/object/apply:os.system ['true']\n")


def test_syntax_errors_name_the_place() -> None:
    with pytest.raises(DocumentError) as e:
        load_json(b'{"type": "Mesh",\n "name": }')
    assert e.value.line == 2 and "not valid JSON" in e.value.reason
    with pytest.raises(DocumentError) as e:
        load_yaml("type: Mesh\nname: [a\n")
    assert e.value.line == 3 and "not valid YAML" in e.value.reason
    with pytest.raises(DocumentError, match="not UTF-8"):
        load_json(b'{"a": "\xff"}')
    with pytest.raises(DocumentError, match="2 YAML documents"):
        load_yaml("a: 1\n---\nb: 2\n")


def _dataplane(inbounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": "dp",
            "networking": {"address": "10.0.0.1", "inbound": inbounds}}


def test_violations_are_capped_with_a_count_of_the_rest() -> None:
    doc = _dataplane([{"port": 70000 + i, "tags": {"kuma.io/service": "web"}} for i in range(5000)])
    with pytest.raises(ResourceValidationError) as e:
        from_wire(load_json(json.dumps(doc)))
    invalid = e.value.invalid
    assert len(invalid) == MAX_REPORTED + 1
    assert invalid[-1].field == "" and invalid[-1].reason.startswith("and 4900 more")
    body = e.value.as_api_error()
    assert len(body["invalid_parameters"]) == MAX_REPORTED + 1 and body["details"].endswith(
        "send it again to see the rest")


def _fields(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc, load_all())
    return {p.field: p.reason for p in e.value.invalid}


def test_map_keys_are_spelled_one_way_in_every_kind_of_error() -> None:
    # pydantic-originated (a tag value that is not a string), our own checks (an empty value), the number
    # walk (out of range) and labels all spell the key as ["key"].
    problems = _fields(_dataplane([{"port": 80, "tags": {"kuma.io/service": "web", "kuma.io/protocol": 7,
                                                         "version": ""}}]))
    assert 'networking.inbound[0].tags["kuma.io/protocol"]' in problems
    problems = _fields(_dataplane([{"port": 80, "tags": {"kuma.io/service": "web", "version": ""}}]))
    assert 'networking.inbound[0].tags["version"]' in problems
    problems = _fields(_dataplane([{"port": 80, "tags": {"kuma.io/service": "web", "kuma.io/zone": 2**40}}]))
    assert 'networking.inbound[0].tags["kuma.io/zone"]' in problems
    problems = _fields({**_dataplane([{"port": 80, "tags": {"kuma.io/service": "web"}}]),
                        "labels": {"team": "a b"}})
    assert 'labels["team"]' in problems
    problems = _fields({"type": "MeshTimeout", "mesh": "default", "name": "t", "spec": {
        "targetRef": {"kind": "MeshService", "name": "web", "tags": {"version": [1]}},  # 1 reads as "1" (Kuma)
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1s"}}]}})
    assert any(f.startswith('spec.targetRef.tags["version"]') for f in problems), problems


def test_every_registered_type_refuses_deep_bodies_as_a_document_error() -> None:
    # The depth cap sits before any type's model: nothing deeper than MAX_DEPTH reaches pydantic.
    for rtype in load_all().all():
        body: Any = {"type": rtype.name, "name": "x", "mesh": "default"}
        inner = body
        for _ in range(MAX_DEPTH):
            inner["n"] = {}
            inner = inner["n"]
        with pytest.raises(DocumentError):
            load_json(json.dumps(body))


@pytest.mark.parametrize("text, expected", [
    ("type: Mesh\nname: a\n---\n" + alias_bomb(), "document 2: its anchors and aliases expand to more than"),
    ("type: Mesh\nname: a\n---\ntype: Mesh\nname: b\nx: " + "[" * DEEP + "]" * DEEP + "\n",
     f"document 2: nested deeper than {MAX_DEPTH} levels"),
    ("type: Mesh\nname: &n [*n]\n", "document 1: the alias *n refers to a node that contains it"),
])
def test_kumactl_apply_refuses_hostile_yaml_before_sending_anything(tmp_path: Any, text: str,
                                                                    expected: str) -> None:
    from click.testing import CliRunner

    from controlplane.kumactl.main import main

    f = tmp_path / "in.yaml"
    f.write_text(text)
    # The configured control plane does not exist: reaching "cannot reach" would mean something was sent.
    r = CliRunner().invoke(main, ["--config-file", str(tmp_path / "cfg"), "apply", "-f", str(f)],
                           catch_exceptions=False)
    out = r.stderr if hasattr(r, "stderr") else r.output
    assert r.exit_code == 1 and expected in out and "cannot reach" not in out


def test_kuma_dp_dataplane_file_is_bounded_too() -> None:
    from agent.dataplane import DefinitionError, parse

    with pytest.raises(DefinitionError, match=f"dp.yaml: not valid YAML or JSON at line 1, column .*: nested deeper "
                                              f"than {MAX_DEPTH} levels"):
        parse("x: " + "[" * DEEP + "]" * DEEP, "dp.yaml")
    with pytest.raises(DefinitionError, match="expand to more than"):
        parse(alias_bomb(), "dp.yaml")


def test_kds_peer_specs_are_bounded_too() -> None:
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2

    from controlplane.kds import kds_pb2
    from controlplane.kds.codec import KUMA_RESOURCE_TYPE_URL, KdsDecodeError, decode, encode

    registry = load_all()
    mesh_type = registry.by_name("Mesh")
    assert mesh_type is not None
    w = encode(from_wire({"type": "Mesh", "name": "m"}, registry))
    kr = kds_pb2.KumaResource.FromString(w.message.resource.value)
    kr.spec.type_url = ""  # a Mesh spec as JSON (what earlier kuma-vm peers send, still read)
    kr.spec.value = b'{"routing": ' + nested_json(DEEP).encode() + b"}"
    bad = discovery_pb2.Resource(name=w.key, version="x", resource=any_pb2.Any(
        type_url=KUMA_RESOURCE_TYPE_URL, value=kr.SerializeToString()))
    with pytest.raises(KdsDecodeError, match=f"nested deeper than {MAX_DEPTH} levels"):
        decode(mesh_type, bad)
