"""Hostile and huge bodies against a real kuma-cp: each is answered with a 4xx naming the problem (never a
500, never a hang), nothing is stored, and the control plane keeps serving afterwards."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.api_client import Reply, call
from tests.integration.cp_process import CpProcess
from tests.unit.test_documents import alias_bomb, nested_json

YAML = {"Content-Type": "application/yaml"}
PATH = "/meshes/default/dataplanes/{name}"
# Big bodies take seconds to validate on a busy 2-core machine; the answer must come, however slowly.
SLOW = 300.0


def dataplane(name: str, inbounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "10.0.0.1", "inbound": inbounds}}


def bad_inbounds(count: int) -> list[dict[str, Any]]:
    """`count` inbounds, each with one mistake (a port out of range)."""
    return [{"port": 70000 + i, "tags": {"kuma.io/service": f"svc-{i:07d}", "version": "v1"}} for i in range(count)]


@pytest.fixture
def api(cp_process: CpProcess) -> Callable[..., Reply]:
    def request(method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        return call(method, cp_process.http_url + path, body, **kw)
    return request


def assert_not_stored(api: Callable[..., Reply], name: str) -> None:
    assert api("GET", PATH.format(name=name)).status == 404
    assert api("GET", "/").status == 200  # and the control plane still answers


@pytest.mark.parametrize("name, raw, headers", [
    ("deep-json", nested_json(2000).encode(), {}),
    ("deep-json-lists", b'{"type": "Dataplane", "networking": ' + b"[" * 2000 + b"]" * 2000 + b"}", {}),
    ("deep-yaml", nested_json(2000).encode(), YAML),
    ("deep-yaml-block", ("type: Dataplane\nnetworking:\n  " + "- " * 2000 + "x\n").encode(), YAML),
])
def test_deeply_nested_bodies_get_a_400(api: Callable[..., Reply], name: str, raw: bytes,
                                        headers: dict[str, str]) -> None:
    r = api("PUT", PATH.format(name=name), raw=raw, headers=headers)
    assert r.status == 400, r.raw[:500]
    assert r.json["title"] == "Malformed body" and "nested deeper than 100 levels" in r.json["details"]
    assert_not_stored(api, name)


def test_yaml_alias_bomb_gets_a_400(api: Callable[..., Reply]) -> None:
    body = "type: Dataplane\nmesh: default\nname: bomb\n" + alias_bomb()
    r = api("PUT", PATH.format(name="bomb"), raw=body.encode(), headers=YAML)
    assert r.status == 400 and "anchors and aliases expand to more than 1,000,000 values" in r.json["details"]
    assert_not_stored(api, "bomb")
    r = api("PUT", PATH.format(name="loop"), raw=b"type: Dataplane\nnetworking: &n\n  inbound: [*n]\n",
            headers=YAML)
    assert r.status == 400 and "refers to a node that contains it" in r.json["details"]
    assert_not_stored(api, "loop")


def test_yaml_with_modest_anchors_is_accepted(api: Callable[..., Reply]) -> None:
    body = ("type: Dataplane\nmesh: default\nname: anchors\nnetworking:\n  address: 10.0.0.9\n  inbound:\n"
            "  - port: 10001\n    tags: &t {kuma.io/service: web, version: v1}\n"
            "  - port: 10002\n    tags: *t\n")
    r = api("PUT", PATH.format(name="anchors"), raw=body.encode(), headers=YAML)
    assert r.status == 201, r.raw
    got = api("GET", PATH.format(name="anchors")).json
    assert got["networking"]["inbound"][1]["tags"] == {"kuma.io/service": "web", "version": "v1"}
    assert api("DELETE", PATH.format(name="anchors")).status == 200


def test_five_thousand_violations_are_capped_in_one_answer(api: Callable[..., Reply]) -> None:
    r = api("PUT", PATH.format(name="many"), dataplane("many", bad_inbounds(5000)), timeout=SLOW)
    assert r.status == 400
    params = r.json["invalid_parameters"]
    assert len(params) == 101
    assert params[0]["field"].startswith("networking.inbound[") and "[1, 65535]" in params[0]["reason"]
    assert params[-1] == {"field": "", "reason": "and 4900 more: fix the problems above and send it again to "
                                                 "see the rest"}
    assert_not_stored(api, "many")


def test_ten_megabytes_over_the_limit_get_a_413(api: Callable[..., Reply]) -> None:
    raw = json.dumps(dataplane("huge", bad_inbounds(130_000))).encode()
    assert len(raw) > 10_000_000
    r = api("PUT", PATH.format(name="huge"), raw=raw, timeout=SLOW)
    assert r.status == 413 and "apiServer.maxBodyBytes" in r.json["details"]
    assert_not_stored(api, "huge")


def test_ten_megabytes_within_a_raised_limit_get_a_capped_400(cp_factory: Callable[..., CpProcess]) -> None:
    cp = cp_factory(KUMA_API_SERVER_MAX_BODY_BYTES=str(16 << 20))

    def api(method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        return call(method, cp.http_url + path, body, **kw)

    raw = json.dumps(dataplane("huge", bad_inbounds(130_000))).encode()
    assert len(raw) > 10_000_000
    r = api("PUT", PATH.format(name="huge"), raw=raw, timeout=SLOW)
    assert r.status == 400 and len(r.json["invalid_parameters"]) == 101
    assert r.json["invalid_parameters"][-1]["reason"].startswith("and 129900 more")
    assert_not_stored(api, "huge")
    # The same size with a structural mistake in every inbound (each is cut out before the range checks run)
    structural = [{"port": str(80 + i % 1000), "tags": {"kuma.io/service": f"svc-{i:07d}", "version": "v1"}}
                  for i in range(130_000)]
    r = api("PUT", PATH.format(name="huge"), raw=json.dumps(dataplane("huge", structural)).encode(), timeout=SLOW)
    assert r.status == 400 and len(r.json["invalid_parameters"]) == 101
    assert r.json["invalid_parameters"][0]["field"].startswith("networking.inbound[")
    assert_not_stored(api, "huge")
    assert api("GET", "/meshes/default/dataplanes").json["total"] == 0
    assert "Traceback" not in cp.logs()
