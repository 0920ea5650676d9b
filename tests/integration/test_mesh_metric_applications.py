"""MeshMetric through a real kuma-dp and its real Envoy: `applications` (kuma-dp scrapes the application's
metrics endpoint, an HTTP server the test runs serving Prometheus text, and serves it unchanged after Envoy's
filtered and labelled series on the backend's port and path) and the OpenTelemetry backend (kuma-dp pushes the
same to a gRPC OTLP collector the test runs)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.test_kuma_dp_support import (
    DpMesh,
    DpProcess,
    dp_factory,  # noqa: F401  (fixture)
    eventually,
    get,
)
from tests.integration.test_mesh_metric import mesh_metric, put
from tests.ports import free_port

APP_METRICS = b"# HELP app_orders_total Orders taken.\n# TYPE app_orders_total counter\napp_orders_total 42\n"


@pytest.fixture
def mesh(cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
         dp_factory: Callable[..., DpProcess]) -> DpMesh:  # noqa: F811
    cp = cp_factory(KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1", KUMA_MULTIZONE_ZONE_NAME="zone-1")
    return DpMesh(cp, app_factory, dp_factory)


@pytest.fixture
def app_metrics() -> Iterator[tuple[int, list[str]]]:
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(APP_METRICS)))
            self.end_headers()
            self.wfile.write(APP_METRICS)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, name="app-metrics", daemon=True)
    thread.start()
    yield server.server_address[1], paths
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_kuma_dp_serves_the_applications_metrics_with_envoys(mesh: DpMesh,
                                                              app_metrics: tuple[int, list[str]]) -> None:
    app_port, paths = app_metrics
    metrics_port = free_port()
    put(mesh, mesh_metric("with-app", {"kind": "Mesh"}, {
        "applications": [{"name": "orders", "port": app_port, "path": "/custom/metrics"}],
        "backends": [{"type": "Prometheus", "prometheus": {"port": metrics_port, "path": "/metrics"}}]}))
    mesh.service("web")

    def served() -> str:
        status, text = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and "app_orders_total 42" in text and "envoy_server_live" in text, text[:300]
        return text

    text = eventually(served, timeout=30, message="kuma-dp serves Envoy's and the application's metrics")
    assert "/custom/metrics" in paths
    assert APP_METRICS.decode() in text, "the application's text is passed on unchanged"
    assert 'envoy_server_live{' in text and 'kuma_io_service="web"' in text
    assert text.index("envoy_server_live") < text.index("app_orders_total") < text.index("kuma_dp_envoy_up")


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def test_kuma_dp_pushes_metrics_to_an_otlp_collector(mesh: DpMesh, otlp: OtlpReceiver,
                                                     app_metrics: tuple[int, list[str]]) -> None:
    """The OpenTelemetry backend: kuma-dp pushes what it would serve Prometheus (Envoy's filtered, labelled
    series and the application's) to the collector every refreshInterval."""
    app_port, _paths = app_metrics
    put(mesh, mesh_metric("otel", {"kind": "Mesh"}, {
        "applications": [{"name": "orders", "port": app_port}],
        "backends": [{"type": "OpenTelemetry",
                      "openTelemetry": {"endpoint": f"127.0.0.1:{otlp.port}", "refreshInterval": "1s"}}]}))
    mesh.service("web")

    def pushed() -> list[dict[str, Any]]:
        points = otlp.snapshot_metrics()
        names = {p["name"] for p in points}
        assert {"envoy_server_live", "app_orders"} <= names, sorted(names)[:20]
        return points

    points = eventually(pushed, timeout=30, message="kuma-dp pushes to the OTLP collector")
    live = next(p for p in points if p["name"] == "envoy_server_live")
    assert live["resource"]["service.name"] == "web" and live["resource"]["mesh"] == "default"
    assert live["attributes"]["kuma_io_service"] == "web" and live["kind"] == "gauge" and live["value"] == 1
    orders = next(p for p in points if p["name"] == "app_orders")
    assert orders["kind"] == "sum" and orders["value"] == 42
