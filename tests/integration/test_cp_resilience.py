"""A real kuma-cp keeps serving every mesh when one mesh's stored config is poison: a builtin CA with
`expiration: 100000y`, as an older version let through the API, used to overflow a date and kill the
reconciler for every mesh while /healthy said 200."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from controlplane.resources import Resource, from_wire, load_all
from controlplane.resources.base import Meta
from controlplane.resources.mesh import MESH, MeshSpec
from controlplane.store.factory import SQLITE_FILE
from controlplane.store.sqlite import SqliteStore
from tests.apps.runner import App
from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http

POISON = {"type": "Mesh", "name": "poison", "mtls": {"enabledBackend": "ca-1", "backends": [
    {"name": "ca-1", "type": "builtin", "conf": {"caCert": {"expiration": "100000y"}}}]}}

ALLOW_ALL = """
type: MeshTrafficPermission
mesh: good
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
"""

DENY_WEB = """
type: MeshTrafficPermission
mesh: good
name: deny-web
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Deny}
"""


async def store_written_by_an_older_version(db: Path) -> None:
    load_all()
    store = SqliteStore(db)
    await store.start()
    try:
        # Not through from_wire: its validation refuses 100000y now; an older version stored it as it was.
        await store.create(Resource(MESH, Meta(name="poison"), MeshSpec.model_validate(
            {k: v for k, v in POISON.items() if k not in ("type", "name")})))
        await store.create(from_wire({"type": "Mesh", "name": "good", "mtls": {"enabledBackend": "ca-1",
                                      "backends": [{"name": "ca-1", "type": "builtin"}]}}))
        await store.create(from_wire(yaml.safe_load(ALLOW_ALL)))
    finally:
        await store.close()


def healthy(cp: CpProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{cp.diagnostics_url}/healthy", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_poison_mesh_in_the_store_neither_stops_other_meshes_nor_itself(
        tmp_path: Path, envoy_factory: Callable[..., EnvoyProcess], app_factory: Callable[..., App]) -> None:
    work_dir = tmp_path / "kuma-cp"
    work_dir.mkdir()
    asyncio.run(store_written_by_an_older_version(work_dir / SQLITE_FILE))
    with start_cp(tmp_path, KUMA_DEFAULTS_SKIP_MESH_CREATION="true") as cp:
        good = MeshHarness(cp, envoy_factory, app_factory, mesh="good")
        backend = good.app("echo_http", "--name", "backend")
        good.dataplane("backend-1", "backend", app_port=backend.port)
        web = good.dataplane("web-1", "web", app_port=backend.port, outbounds={"backend": 0})
        port = web.outbounds["backend"]
        eventually(lambda: http(port)[0] == 200, message="traffic in the good mesh")

        # The poison mesh is served too: its CA never expires (X.509's last date), its proxies get config.
        poison = MeshHarness(cp, envoy_factory, app_factory, mesh="poison")
        echo = poison.app("echo_http", "--name", "p")
        poison.dataplane("p-1", "p", app_port=echo.port)

        # And the reconciler is alive: a later change in the good mesh still reaches Envoy.
        good.apply(DENY_WEB)
        eventually(lambda: http(port)[0] == 403, timeout=20, message="a change after the poison mesh was served")
        assert healthy(cp)[0] == 200, healthy(cp)
        assert "Traceback" not in cp.logs(tail=100_000), cp.logs()


def test_kill_9_right_after_a_mesh_create_keeps_its_default_policies(tmp_path: Path) -> None:
    """Kuma's default policies are created in the same transaction as the Mesh: a kuma-cp killed the moment the
    API has answered still has them after a restart."""
    cp = start_cp(tmp_path)
    try:
        for i in range(3):
            r = call("PUT", f"{cp.http_url}/meshes/m-{i}", {"type": "Mesh", "name": f"m-{i}"})
            assert r.status == 201, r.raw
        cp.proc.send_signal(signal.SIGKILL)
        assert cp.proc.wait(10) == -signal.SIGKILL
    finally:
        cp.stop()
    again = start_cp(tmp_path, **{k: v for k, v in cp.env.items() if k.startswith("KUMA_")})
    try:
        for i in range(3):
            names = set()
            for plural in ("meshtimeouts", "meshretries", "meshcircuitbreakers"):
                reply = call("GET", f"{again.http_url}/meshes/m-{i}/{plural}")
                assert reply.status == 200, reply.raw
                names |= {item["name"] for item in json.loads(reply.raw)["items"]}
            assert names == {f"mesh-gateways-timeout-all-m-{i}", f"mesh-timeout-all-m-{i}",
                             f"mesh-circuit-breaker-all-m-{i}", f"mesh-retry-all-m-{i}"}, names
    finally:
        again.stop()
