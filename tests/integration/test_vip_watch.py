"""The VIP map reaches kuma-dp: in the bootstrap answer, and over the dp-server's VIP watch stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from agent.bootstrap_client import BootstrapError, CpAddress, fetch_bootstrap
from agent.vips_client import watch_vips
from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness
from tests.ports import free_port


def dataplane_doc(name: str, service: str) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "127.0.0.1",
                           "inbound": [{"port": free_port(), "servicePort": 8080,
                                        "tags": {"kuma.io/service": service}}]}}


async def next_map(stream: Any, timeout: float = 10.0) -> dict[str, Any]:
    return await asyncio.wait_for(stream.__anext__(), timeout)  # type: ignore[no-any-return]


def test_vip_map_in_bootstrap_and_watch(cp_factory: Callable[..., CpProcess],
                                        envoy_factory: Callable[..., EnvoyProcess],
                                        app_factory: Callable[..., App]) -> None:
    mesh = MeshHarness(cp_factory(), envoy_factory, app_factory)
    mesh.apply(json.dumps(dataplane_doc("backend-1", "backend")))
    token = mesh.token("web-1")
    cp = CpAddress("127.0.0.1", mesh.cp.ports["KUMA_DP_SERVER_PORT"])
    ca = mesh.cp.ca_file.read_bytes()

    async def scenario() -> None:
        stream = watch_vips(cp, ca, "default", token).__aiter__()
        first = await next_map(stream)
        # The leader allocates shortly after the Dataplane appears; the stream delivers each new version.
        while "backend" not in first["vips"]:
            first = await next_map(stream)
        assert first["vips"]["backend"].startswith("127.24") and first["names"]["backend.mesh"] == "backend"
        mesh.apply(json.dumps(dataplane_doc("db-1", "db")))
        second = await next_map(stream)
        while "db" not in second["vips"]:
            second = await next_map(stream)
        assert second["version"] != first["version"]
        assert second["vips"]["backend"] == first["vips"]["backend"]  # stable
        await stream.aclose()

    asyncio.run(scenario())
    request = {"mesh": "default", "name": "web-1", "dataplaneToken": token, "adminPort": free_port(),
               "dataplane": dataplane_doc("web-1", "web")}
    answer = asyncio.run(fetch_bootstrap(cp, ca, request))
    assert answer["vips"]["vips"].keys() >= {"backend", "db"}  # the stub's first table comes with the bootstrap


def test_vip_watch_needs_a_token_for_the_mesh(cp_factory: Callable[..., CpProcess]) -> None:
    cp_proc = cp_factory()
    cp = CpAddress("127.0.0.1", cp_proc.ports["KUMA_DP_SERVER_PORT"])

    async def scenario() -> None:
        with pytest.raises(BootstrapError) as e:
            async for _ in watch_vips(cp, cp_proc.ca_file.read_bytes(), "default", "not-a-token"):
                pass
        assert e.value.code == "UNAUTHENTICATED"

    asyncio.run(scenario())
