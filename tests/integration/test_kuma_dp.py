"""kuma-dp for real: a kuma-cp process, `kuma-dp run` processes and the real Envoys they supervise, with
echo services behind them. Traffic, supervision, orphans, drain, several dataplanes on one host."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.test_kuma_dp_support import (
    DpMesh,
    DpProcess,
    dataplane_doc,
    dp_factory,  # noqa: F401  (fixture)
    eventually,
    get,
    http,
    pid_gone,
    unique,
)
from tests.ports import free_port


@pytest.fixture
def mesh(cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
         dp_factory: Callable[..., DpProcess]) -> DpMesh:  # noqa: F811
    cp = cp_factory(KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1")
    return DpMesh(cp, app_factory, dp_factory)


def two_services(mesh: DpMesh) -> int:
    """backend and web (with an outbound to backend); returns web's outbound port."""
    mesh.service("backend")
    web = mesh.service("web", outbounds={"backend": 0})
    return web.outbounds["backend"]


def test_two_services_talk_through_the_mesh_with_mtls(mesh: DpMesh) -> None:
    mesh.mtls()
    backend = mesh.service("backend")
    metrics_port = free_port()
    web = mesh.service("web", outbounds={"backend": 0}, args=["--metrics-port", str(metrics_port)])
    port = web.outbounds["backend"]
    _, body = eventually(lambda: (r := http(port, "/hello")) and r[0] == 200 and r, message="web -> backend")
    assert body["service"] == "backend" and body["path"] == "/hello"
    # The callee saw the caller's SPIFFE identity: the request crossed both Envoys over mTLS.
    assert "URI=spiffe://default/web" in body["headers"]["x-forwarded-client-cert"]
    # Both registered by kuma-dp (their definitions), online, with kuma-dp's and Envoy's versions.
    eventually(lambda: {i["name"]: i["status"] for i in mesh.api("GET", "/meshes/default/dataplanes/_overview")
                        .json["items"]} == {"backend-1": "online", "web-1": "online"}, message="both online")
    stored = mesh.api("GET", "/meshes/default/dataplanes/web-1").json
    assert stored["labels"]["kuma.io/managed-by"] == "kuma-dp"
    # Readiness and the merged metrics endpoint.
    assert get(web.dp.readiness_url + "/ready")[0] == 200
    status, metrics = get(web.dp.readiness_url + "/metrics")
    assert status == 200
    assert "envoy_cluster_upstream_rq_total" in metrics or "envoy_server_live" in metrics
    assert "kuma_dp_envoy_up 1.0" in metrics and "kuma_dp_ready 1.0" in metrics
    assert 'kuma_dp_info{dataplane="web-1"' in metrics and "process_resident_memory_bytes" in metrics
    assert "_created" not in metrics.split("# HELP kuma_dp", 1)[-1]
    # The same merged metrics on --metrics-port, for a Prometheus to scrape.
    status, scraped = get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert status == 200 and "kuma_dp_envoy_up 1.0" in scraped and "envoy_" in scraped
    # Envoy's admin listens on loopback only, on the port kuma-dp chose for this dataplane.
    admin = web.dp.admin_url()
    assert admin.startswith("http://127.0.0.1:") and admin != backend.dp.admin_url()


def test_kill_9_envoy_is_restarted_and_traffic_resumes(mesh: DpMesh) -> None:
    mesh.mtls()
    port = two_services(mesh)
    eventually(lambda: http(port)[0] == 200, message="traffic before")
    web_dp = mesh.dp("web-1")
    old = web_dp.envoy_pid()
    psutil.Process(old).kill()
    eventually(lambda: pid_gone(old), message="old Envoy gone")
    new = eventually(lambda: (p := web_dp.envoy_pid()) != old and p, message="a new Envoy")
    assert web_dp.alive()
    eventually(lambda: http(port)[0] == 200, timeout=30, message="traffic through the new Envoy")
    eventually(lambda: web_dp.ready_status() == 200, message="ready again")
    _status, metrics = get(web_dp.readiness_url + "/metrics")
    restarts = [line for line in metrics.splitlines() if line.startswith("kuma_dp_envoy_restarts")]
    assert "kuma_dp_envoy_restarts_total 1.0" in restarts, restarts
    assert "restarting in" in web_dp.own_logs() and "killed by SIGKILL" in web_dp.own_logs()
    assert psutil.Process(new).ppid() == web_dp.pid


def test_kill_9_kuma_dp_leaves_no_envoy(mesh: DpMesh) -> None:
    svc = mesh.service("backend")
    envoy = svc.dp.envoy_pid()
    assert psutil.Process(envoy).ppid() == svc.dp.pid
    svc.dp.signal(signal.SIGKILL)
    assert svc.dp.wait_exit(10) == -signal.SIGKILL
    # PR_SET_PDEATHSIG: the kernel kills Envoy with kuma-dp, no cleanup code needed.
    eventually(lambda: pid_gone(envoy), timeout=5, message=f"Envoy {envoy} gone after kuma-dp was SIGKILLed")


def test_sigterm_drains_then_both_exit_zero(mesh: DpMesh) -> None:
    mesh.service("backend", args=["--drain-time", "3s"])
    port = mesh.service("web", outbounds={"backend": 0}).outbounds["backend"]
    backend = mesh.dp("backend-1")
    envoy = backend.envoy_pid()
    eventually(lambda: http(port)[0] == 200, message="traffic before")
    # A slow request in flight when the stop begins still completes.
    result: dict[str, object] = {}

    def slow() -> None:
        result["reply"] = http(port, "/delay/1500", timeout=10)

    caller = threading.Thread(target=slow)
    caller.start()
    time.sleep(0.3)
    started = time.monotonic()
    backend.signal(signal.SIGTERM)
    # Readiness fails at once, while Envoy drains.
    eventually(lambda: backend.ready_status() in (503, 0), timeout=2, message="readiness fails on SIGTERM")
    caller.join(10)
    assert result["reply"][0] == 200  # type: ignore[index]
    assert backend.wait_exit(20) == 0
    took = time.monotonic() - started
    assert 2.9 <= took < 10, took  # --drain-time 3s, then Envoy stops
    assert pid_gone(envoy)
    logs = backend.own_logs()
    assert "draining" in logs and 'Envoy stopped how="exited with status 0"' in logs
    assert backend.runtime_dir is not None and not (backend.runtime_dir / "bootstrap.json").exists()


def test_second_signal_stops_at_once(mesh: DpMesh) -> None:
    svc = mesh.service("backend", args=["--drain-time", "60s"])
    envoy = svc.dp.envoy_pid()
    svc.dp.signal(signal.SIGINT)
    eventually(lambda: "draining" in svc.dp.own_logs(), timeout=5, message="draining")
    started = time.monotonic()
    svc.dp.signal(signal.SIGINT)
    code = svc.dp.wait_exit(10)
    assert time.monotonic() - started < 5
    assert code == 128 + signal.SIGINT
    eventually(lambda: pid_gone(envoy), timeout=5, message="Envoy gone")


def test_three_dataplanes_on_one_host_with_only_their_definitions(mesh: DpMesh) -> None:
    """No --admin-port, --readiness-port or runtime directory flags: kuma-dp derives distinct ones."""
    names = [unique("api") for _ in range(3)]
    try:
        _three_dataplanes(mesh, names)
    finally:  # kuma-dp removes them itself; this is for a kuma-dp the harness had to SIGKILL
        for name in names:
            shutil.rmtree(Path("/run/kuma-dp") / f"default.{name}", ignore_errors=True)


def _three_dataplanes(mesh: DpMesh, names: list[str]) -> None:
    services = [mesh.service("api", name=n, runtime_dir=False, wait=False) for n in names]
    for s in services:
        s.dp.wait_ready()
    runtime_dirs = {s.dp.runtime_dir for s in services}
    admins = {s.dp.admin_url() for s in services}
    readiness = {s.dp.readiness_url for s in services}
    envoys = {s.dp.envoy_pid() for s in services}
    assert len(runtime_dirs) == len(admins) == len(readiness) == len(envoys) == 3
    for s in services:
        assert s.dp.runtime_dir is not None and oct(s.dp.runtime_dir.stat().st_mode & 0o777) == "0o700"
        assert oct((s.dp.runtime_dir / "bootstrap.json").stat().st_mode & 0o777) == "0o600"
    # All three registered and online; each answers through its own Envoy's inbound.
    eventually(lambda: {i["name"] for i in mesh.api("GET", "/meshes/default/dataplanes/_overview").json["items"]
                        if i["status"] == "online"} >= set(names), message="all three online")
    for s in services:
        _status, body = eventually(lambda s=s: (r := http(s.inbound_port)) and r[0] == 200 and r,
                                  message=f"inbound of {s.dp.name}")
        assert body["service"] == "api"
    # A second kuma-dp for a dataplane already running on this host is refused, clearly.
    again = mesh.dp_factory(name=names[0], cp=mesh.cp, definition=dataplane_doc(
        names[0], "api", app_port=services[0].app.port, inbound_port=services[0].inbound_port),
        token=mesh.token(names[0]), runtime_dir=False)
    assert again.wait_exit(20) == 2
    assert "already running" in again.logs()
    first = services[0].dp
    assert first.runtime_dir is not None and (first.runtime_dir / "bootstrap.json").exists()  # left alone
    assert first.ready_status() == 200
    # Stopping them removes their runtime directories (created by kuma-dp under /run/kuma-dp).
    for s in services:
        assert s.dp.stop() == 0
        assert s.dp.runtime_dir is not None and not s.dp.runtime_dir.exists()


def test_runtime_dir_from_systemd(mesh: DpMesh, tmp_path: Path) -> None:
    """$RUNTIME_DIRECTORY (systemd's RuntimeDirectory=) is used as is and left in place on exit."""
    rt = tmp_path / "systemd-runtime"
    svc = mesh.service("backend", runtime_dir=False, env={"RUNTIME_DIRECTORY": str(rt)}, wait=False)
    svc.dp.runtime_dir = rt
    svc.dp.wait_ready()
    assert (rt / "bootstrap.json").exists() and oct(rt.stat().st_mode & 0o777) == "0o700"
    assert svc.dp.stop() == 0
    assert rt.exists() and not (rt / "bootstrap.json").exists()
