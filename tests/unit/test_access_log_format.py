"""Access log formats checked at the API: every command operator kuma-vm accepts loads into the real Envoy,
and what Envoy would refuse (an unknown operator, a stray '%', arguments where none are taken) is refused
naming the field and the operator; Kuma's JSON format key rules."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controlplane.policies._access_log_format import (
    KUMA_PLACEHOLDERS,
    OPTIONAL_ARGS,
    SIMPLE,
    WITH_ARGS,
    format_problems,
)
from controlplane.policies.mesh_access_log import DEFAULT_HTTP_FORMAT, DEFAULT_TCP_FORMAT
from controlplane.resources import ResourceValidationError, from_wire, load_all
from tests.requirements import skip_mark
from tests.unit.test_policies import ENVOY

load_all()


def every_operator() -> str:
    parts = [f"%{c}%" for c in sorted(SIMPLE | OPTIONAL_ARGS)]
    parts += ["%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%", "%PATH(WQ:ORIG)%", "%EMIT_TIME(%s)%"]
    parts += sorted(WITH_ARGS.values())
    parts += ["%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):64%", "%DYNAMIC_METADATA(ns:key):8%"]
    return " ".join(parts)


def _validate(fmt: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert ENVOY is not None
    access_log = {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/dev/null",
        "log_format": {"text_format_source": {"inline_string": fmt}}}}
    manager = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                        "HttpConnectionManager",
               "stat_prefix": "x", "route_config": {"name": "r"}, "access_log": [access_log],
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    cfg: dict[str, Any] = {"static_resources": {"listeners": [{
        "name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager}]}]}]}}
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "-l", "critical"], capture_output=True,
                          text=True, timeout=60)


@skip_mark("envoy", ENVOY is None, "needs the envoy binary")
def test_every_accepted_operator_loads_into_envoy(tmp_path: Path) -> None:
    fmt = every_operator()
    assert format_problems(fmt) == []
    out = _validate(fmt, tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-800:]


@skip_mark("envoy", ENVOY is None, "needs the envoy binary")
@pytest.mark.parametrize("fmt", ["%NOT_AN_OPERATOR%", "100%", "%DURATION(x)%", "%REQ%", "%DURATION:3%",
                                 "%START_TIME(%s):3%"])
def test_what_is_refused_envoy_refuses_too(fmt: str, tmp_path: Path) -> None:
    assert format_problems(fmt), fmt
    assert _validate(fmt, tmp_path).returncode != 0, fmt


@pytest.mark.parametrize(("fmt", "says"), [
    ("[%START_TIME%] %NOT_AN_OPERATOR%", "%NOT_AN_OPERATOR% is not an Envoy access log command operator"),
    ("took 100% of it", "the '%' at position 9 does not start a command operator"),
    ("%DURATION(ms)%", "%DURATION(ms)%: %DURATION% takes no arguments or length"),
    ("%REQ%", "%REQ%: %REQ% needs an argument, e.g. %REQ(X-REQUEST-ID)%"),
    ("%REQ(A?B?C)%", "give one header and at most one alternative"),
    ("%KUMA_ZONE%", "%KUMA_ZONE% is not a Kuma placeholder"),
    ("%KUMA_MESH(x)%", "takes no arguments"),
])
def test_format_problems_name_the_operator(fmt: str, says: str) -> None:
    assert any(says in p for p in format_problems(fmt)), format_problems(fmt)


def test_kumas_defaults_and_placeholders_are_accepted() -> None:
    for fmt in (DEFAULT_HTTP_FORMAT, DEFAULT_TCP_FORMAT, " ".join(f"%{p}%" for p in KUMA_PLACEHOLDERS)):
        assert format_problems(fmt) == [], fmt


def _errors(fmt: dict[str, Any]) -> list[tuple[str, str]]:
    doc = {"type": "MeshAccessLog", "mesh": "default", "name": "p", "spec": {
        "targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {
            "backends": [{"type": "File", "file": {"path": "/dev/stdout", "format": fmt}}]}}]}}
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc)
    return [(p.field, p.reason) for p in e.value.invalid]


FORMAT = "spec.to[0].default.backends[0].file.format"


def test_the_field_and_the_operator_are_named() -> None:
    errors = _errors({"type": "Plain", "plain": "[%START_TIME%] %UPSTREAM_HOSTT%"})
    assert errors[0][0] == f"{FORMAT}.plain" and "%UPSTREAM_HOSTT%" in errors[0][1], errors
    errors = _errors({"type": "Json", "json": [{"key": "a", "value": "%START_TIME%"},
                                               {"key": "b", "value": "%BYTES%"}]})
    assert errors[0][0] == f"{FORMAT}.json[1].value" and "%BYTES%" in errors[0][1], errors


@pytest.mark.parametrize(("entry", "field", "says"), [
    ({"key": "a", "value": ""}, "json[0].value", "cannot be empty"),
    ({"key": "", "value": "%START_TIME%"}, "json[0].key", "cannot be empty"),
    ({"key": 'a"b', "value": "%START_TIME%"}, "json[0].key", "would not make a valid JSON object"),
    ({"key": "method", "value": '"%REQ(:METHOD)%'}, "json[0].value", "would not make a valid JSON object"),
])
def test_json_key_rules(entry: dict[str, str], field: str, says: str) -> None:
    errors = _errors({"type": "Json", "json": [entry]})
    assert any(f == f"{FORMAT}.{field}" and says in r for f, r in errors), errors
