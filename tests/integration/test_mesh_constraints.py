"""A Mesh's `constraints.dataplaneProxy` (Kuma's membership validator) against a real kuma-cp: a Dataplane
whose tags fulfil no requirement, or match a restriction, is refused by the API (400, the store unchanged)
and at kuma-dp's bootstrap (PERMISSION_DENIED, so its Envoy never starts); one that fits joins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from agent.bootstrap_client import BootstrapError, CpAddress, fetch_bootstrap
from tests.integration.api_client import Reply, call
from tests.integration.cp_process import CpProcess
from tests.ports import free_port

MESH = "constrained"
CONSTRAINTS = {"dataplaneProxy": {"requirements": [{"tags": {"team": "*"}}],
                                  "restrictions": [{"tags": {"kuma.io/service": "legacy"}}]}}


def dataplane(name: str, tags: dict[str, str]) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": MESH, "name": name,
            "networking": {"address": "127.0.0.1", "inbound": [{"port": free_port(), "servicePort": 8080,
                                                                 "tags": tags}]}}


@pytest.fixture(scope="module")
def api(cp_process: CpProcess) -> Callable[..., Reply]:
    def request(method: str, path: str, body: Any = None) -> Reply:
        return call(method, cp_process.http_url + path, body)
    r = request("PUT", f"/meshes/{MESH}", {"type": "Mesh", "name": MESH, "constraints": CONSTRAINTS})
    assert r.status in (200, 201), r.raw
    return request


@pytest.mark.parametrize("name, tags, words", [
    ("no-team", {"kuma.io/service": "web"}, "fulfil none of the mesh's constraints.dataplaneProxy.requirements"),
    ("legacy", {"kuma.io/service": "legacy", "team": "a"}, "match the restricted tags 'kuma.io/service=legacy'"),
])
def test_the_api_refuses_a_dataplane_the_mesh_does_not_allow(api: Callable[..., Reply], name: str,
                                                             tags: dict[str, str], words: str) -> None:
    r = api("PUT", f"/meshes/{MESH}/dataplanes/{name}", dataplane(name, tags))
    assert r.status == 400, r.raw
    problems = r.json["invalid_parameters"]
    assert problems[0]["field"] == "networking" and words in problems[0]["reason"], problems
    assert api("GET", f"/meshes/{MESH}/dataplanes/{name}").status == 404


def test_the_api_accepts_a_dataplane_that_fits(api: Callable[..., Reply]) -> None:
    r = api("PUT", f"/meshes/{MESH}/dataplanes/fits", dataplane("fits", {"kuma.io/service": "web", "team": "a"}))
    assert r.status == 201, r.raw


def test_bootstrap_refuses_a_dataplane_the_mesh_does_not_allow(api: Callable[..., Reply],
                                                               cp_process: CpProcess) -> None:
    r = api("POST", "/tokens/dataplane", {"mesh": MESH, "name": "web-2"})
    assert r.status == 200, r.raw
    request = {"mesh": MESH, "name": "web-2", "dataplaneToken": r.raw.decode(), "adminPort": free_port(),
               "dataplane": dataplane("web-2", {"kuma.io/service": "web"})}
    cp = CpAddress("127.0.0.1", cp_process.ports["KUMA_DP_SERVER_PORT"])
    with pytest.raises(BootstrapError) as e:
        asyncio.run(fetch_bootstrap(cp, cp_process.ca_file.read_bytes(), request))
    assert e.value.code == "PERMISSION_DENIED" and "requirements" in e.value.message
    request["dataplane"] = dataplane("web-2", {"kuma.io/service": "web", "team": "a"})
    answer = asyncio.run(fetch_bootstrap(cp, cp_process.ca_file.read_bytes(), request))
    assert answer["bootstrap"]
