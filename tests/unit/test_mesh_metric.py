"""MeshMetric without processes: kuma-dp's filtering and labelling of Envoy's stats (golden files in
tests/unit/golden/meshmetric/, `KUMA_UPDATE_GOLDEN=1` rewrites them), the merged conf and the monitoring
assignments each dataplane gets (precedence, clientId), and the MADS server as Prometheus' kuma_sd asks it
(strict proto3 JSON parsing, long poll, 304)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from agent.metrics import MetricsPolicy
from controlplane.mads.assignments import Assignments, compute
from controlplane.mads.server import BadRequest, MadsServer, parse_fetch_timeout, parse_request
from controlplane.resources import from_wire, load_all
from controlplane.resources.base import REGISTRY, Resource
from controlplane.store.factory import create_store
from controlplane.supervise import Supervisor
from tests.integration.kuma_sd import KumaSdClient
from tests.ports import free_port
from tests.unit.waiting import wait_until

load_all()
GOLDEN = Path(__file__).parent / "golden" / "meshmetric"
UPDATE = os.environ.get("KUMA_UPDATE_GOLDEN") == "1"
ENVOY_STATS = (GOLDEN / "envoy-stats.prom").read_bytes()


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"{path} is missing: run with KUMA_UPDATE_GOLDEN=1 to create it, then review it")
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from {path} (KUMA_UPDATE_GOLDEN=1 to update)"


ANSWER = {"mesh": "default", "service": "web", "zone": "zone-1"}
POLICIES = {
    "default-basic": {},
    "all": {"sidecar": {"profiles": {"appendProfiles": [{"name": "All"}]}}},
    "basic-exclude-include": {"sidecar": {"profiles": {
        "appendProfiles": [{"name": "Basic"}],
        "exclude": [{"type": "Prefix", "match": "envoy_cluster_upstream_cx_"}],
        "include": [{"type": "Exact", "match": "envoy_cluster_upstream_cx_total"}]}}},
    "none-regex": {"sidecar": {"profiles": {"appendProfiles": [{"name": "None"}],
                                            "include": [{"type": "Regex", "match": "_rq_(total|xx)$"}]}}},
}


@pytest.mark.parametrize("case", sorted(POLICIES))
def test_kuma_dp_filters_and_labels_envoy_stats(case: str) -> None:
    policy = MetricsPolicy.from_answer({**ANSWER, "conf": POLICIES[case]})
    check_golden(f"{case}.prom", policy.apply(ENVOY_STATS).decode())


def test_include_unused_and_labels() -> None:
    assert MetricsPolicy.from_answer({**ANSWER, "conf": {}}).stats_path == "/stats/prometheus?usedonly"
    assert MetricsPolicy.from_answer({**ANSWER, "conf": {"sidecar": {"includeUnused": True}}}).stats_path == \
        "/stats/prometheus"
    out = MetricsPolicy.from_answer({**ANSWER, "conf": {}}).apply(ENVOY_STATS).decode()
    # Envoy's own `mesh` tag is kept, not doubled (Prometheus refuses a sample with a label twice).
    assert 'mesh="default",envoy_cluster_name="backend",kuma_io_service="web",kuma_io_zone="zone-1"}' in out
    assert 'envoy_server_live{kuma_io_service="web",kuma_io_zone="zone-1",mesh="default"} 1' in out


# --- assignments ---------------------------------------------------------------------------------------------

def dataplane(name: str, service: str, address: str = "10.0.0.1", labels: dict[str, str] | None = None) -> Resource:
    return from_wire({"type": "Dataplane", "mesh": "default", "name": name, "labels": labels or {},
                      "networking": {"address": address, "inbound": [
                          {"port": 10001, "servicePort": 8080, "tags": {"kuma.io/service": service}}]}})


def mesh_metric(name: str, target: dict[str, Any], default: dict[str, Any]) -> Resource:
    return from_wire({"type": "MeshMetric", "mesh": "default", "name": name,
                      "spec": {"targetRef": target, "default": default}})


def prometheus(**fields: Any) -> dict[str, Any]:
    return {"backends": [{"type": "Prometheus", "prometheus": fields}]}


def test_assignments_follow_precedence_and_client_ids() -> None:
    dps = [dataplane("web-1", "web"), dataplane("backend-1", "backend", "10.0.0.2"),
           dataplane("db-1", "db", "10.0.0.3")]
    policies = {"default": [
        mesh_metric("mesh-wide", {"kind": "Mesh"}, prometheus()),
        mesh_metric("for-backend", {"kind": "MeshService", "name": "backend"},
                    prometheus(port=9100, path="/stats", clientId="main")),
    ]}
    found = compute(dps, policies, "zone-1")
    assert set(found) == {("default", "web-1"), ("default", "backend-1"), ("default", "db-1")}
    web = found[("default", "web-1")].for_client("any")
    assert [t["address"] for t in web[0]["targets"]] == ["10.0.0.1:5670"]  # Kuma's defaults: 5670, /metrics
    assert web[0]["targets"][0]["metricsPath"] == "/metrics"
    assert web[0]["targets"][0]["labels"] == {"kuma.io/service": "web", "kuma.io/zone": "zone-1"}
    # The MeshService policy wins for backend; its backend has a clientId: only that Prometheus gets it.
    assert found[("default", "backend-1")].for_client("other") == []
    main = found[("default", "backend-1")].for_client("main")
    assert main[0]["targets"][0]["address"] == "10.0.0.2:9100" and main[0]["service"] == "backend"
    # No MeshMetric selects a dataplane of another mesh: not assigned.
    assert compute(dps, {}, "") == {}


# --- the MADS server, asked like Prometheus -----------------------------------------------------------------

def test_fetch_timeout_and_request_parsing() -> None:
    assert parse_fetch_timeout("2m") == 120 and parse_fetch_timeout("1m30s") == 90
    assert parse_fetch_timeout("500ms") == 0.5
    with pytest.raises(BadRequest, match="not a duration"):
        parse_fetch_timeout("soon")
    assert parse_request(b'{"versionInfo": "v1", "node": {"id": "prom"}}') == ("v1", "prom")
    with pytest.raises(BadRequest, match=r"kuma\.observability\.v1\.MonitoringAssignment"):
        parse_request(b'{"typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}')
    with pytest.raises(BadRequest, match="JSON"):
        parse_request(b"not json")


async def test_mads_long_poll_as_prometheus_asks(tmp_path: Path) -> None:
    store = create_store("memory", work_dir=tmp_path, postgres=None)
    await store.start()
    mesh_type, dp_type, mm_type = (REGISTRY.by_name(n) for n in ("Mesh", "Dataplane", "MeshMetric"))
    assert mesh_type and dp_type and mm_type
    await store.create(from_wire({"type": "Mesh", "name": "default"}))
    await store.create(mesh_metric("all", {"kind": "Mesh"}, prometheus(port=5670)))
    await store.create(dataplane("web-1", "web"))
    supervisor = Supervisor()
    assignments = Assignments(store, "", supervisor)
    server = MadsServer(assignments, "127.0.0.1", free_port(), default_fetch_timeout=5)
    await assignments.start()
    await server.start()
    try:
        client = KumaSdClient(f"http://127.0.0.1:{server.port}", "prom", fetch_timeout="60s")
        groups = await asyncio.to_thread(client.fetch)  # strict proto3 JSON parse of the answer
        assert groups is not None and [g["targets"] for g in groups] == [["10.0.0.1:5670"]]
        assert groups[0]["labels"]["__meta_kuma_dataplane"] == "web-1"
        # Same version: the long poll waits; a new dataplane ends it with the new assignments.
        waiting = asyncio.create_task(asyncio.to_thread(client.fetch))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await store.create(dataplane("backend-1", "backend", "10.0.0.2"))
        groups = await asyncio.wait_for(waiting, 60)
        assert groups is not None and sorted(g["labels"]["instance"] for g in groups) == ["backend-1", "web-1"]
        # Nothing changes within the fetch timeout: 304 (the client keeps what it has).
        short = KumaSdClient(f"http://127.0.0.1:{server.port}", "prom", fetch_timeout="1s")
        short.version, short.nonce = client.version, client.nonce
        assert await asyncio.to_thread(short.fetch) is None
    finally:
        await server.stop()
        await assignments.stop()
        await store.close()


# --- kuma-dp's listeners follow the MeshMetric -----------------------------------------------------------------

async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_kuma_dp_listeners_follow_the_policy() -> None:
    from agent.metrics_watch import MeshMetricServer

    seen: list[MetricsPolicy | None] = []

    async def render(policy: MetricsPolicy | None) -> bytes:
        seen.append(policy)
        return b"envoy_server_live 1\n"

    server = MeshMetricServer(render=render)
    first, second = free_port(), free_port()
    answer = {**ANSWER, "address": "127.0.0.1", "conf": prometheus(port=first),
              "backends": [{"port": first, "path": "/metrics"}]}
    try:
        await server.apply(answer)
        assert await _get(first, "/metrics") == (200, b"envoy_server_live 1\n")
        assert seen[-1] is not None and seen[-1].labels["kuma_io_service"] == "web"
        assert (await _get(first, "/other"))[0] == 404
        # The port and path change: the old listener closes, the new one serves.
        await server.apply({**answer, "backends": [{"port": second, "path": "/stats"}]})
        assert (await _get(second, "/stats"))[0] == 200
        with pytest.raises(OSError):
            await _get(first, "/metrics")
        # No MeshMetric selects the dataplane any more: nothing is served.
        await server.apply({**ANSWER, "conf": None, "backends": []})
        assert server.listeners == {} and server.policy is None
        with pytest.raises(OSError):
            await _get(second, "/stats")
    finally:
        await server.close()


# --- applications: kuma-dp scrapes the application and serves its metrics with Envoy's ----------------------

async def _app_server(body: bytes, status: int = 200) -> tuple[asyncio.Server, int, list[str]]:
    """A real HTTP server on loopback standing in for an application's metrics endpoint."""
    paths: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        paths.append(request.split()[1].decode())
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], paths


async def test_applications_are_scraped_and_served_after_envoys_series() -> None:
    from agent.metrics import DpMetrics
    from agent.readiness import DpState

    app, port, paths = await _app_server(b"# TYPE app_requests_total counter\napp_requests_total 7")
    down = free_port()  # nothing listens here
    try:
        policy = MetricsPolicy.from_answer({**ANSWER, "conf": {"applications": [
            {"name": "app", "port": port}, {"name": "gone", "port": down, "path": "/m"}]}})
        assert [(a.address, a.path) for a in policy.applications] == [("127.0.0.1", "/metrics/prometheus"),
                                                                       ("127.0.0.1", "/m")]
        text = (await DpMetrics(DpState()).merged(None, policy)).decode()
        assert paths == ["/metrics/prometheus"]
        # Envoy's part (not running here), then the application's text unchanged, then kuma-dp's own series.
        assert text.index("# Envoy is not running") < text.index("app_requests_total 7\n") < text.index("kuma_dp_")
        assert "# application gone metrics unavailable" in text
    finally:
        app.close()
        await app.wait_closed()


def test_application_checks() -> None:
    from controlplane.resources.errors import ResourceValidationError

    doc = {"type": "MeshMetric", "mesh": "default", "name": "m", "spec": {"default": {"applications": [
        {"port": 8888}, {"port": 8888, "path": "/metrics/prometheus", "address": "127.0.0.1"},
        {"port": 9, "path": "metrics"}]}}}
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc)
    got = {(p.field, p.reason.split(":")[0]) for p in e.value.invalid}
    assert ("spec.default.applications[1]", "scrapes the same endpoint as applications[0]") in got
    assert ("spec.default.applications[2].path", "'metrics' is not an HTTP path") in got


# --- Prometheus tls mode ProvidedTLS -----------------------------------------------------------------------------

def test_provided_tls_backends_are_https_targets() -> None:
    dps = [dataplane("web-1", "web")]
    policies = {"default": [mesh_metric("tls", {"kind": "Mesh"}, {"backends": [
        {"type": "Prometheus", "prometheus": {"port": 5670, "tls": {"mode": "ProvidedTLS"}}},
        {"type": "Prometheus", "prometheus": {"port": 5671, "clientId": "plain"}}]})]}
    found = compute(dps, policies, "zone-1")[("default", "web-1")].for_client("plain")
    assert [(a["targets"][0]["address"], a["targets"][0]["scheme"]) for a in found] == [
        ("10.0.0.1:5670", "https"), ("10.0.0.1:5671", "http")]


async def test_kuma_dp_serves_provided_tls_backends_over_tls(tmp_path: Path) -> None:
    import ssl

    from agent.metrics_watch import MeshMetricServer
    from tests.unit.test_kumactl import self_signed

    async def render(policy: MetricsPolicy | None) -> bytes:
        return b"envoy_server_live 1\n"

    cert, key = self_signed(tmp_path, "127.0.0.1")
    port = free_port()
    answer = {**ANSWER, "address": "127.0.0.1", "conf": prometheus(port=port),
              "backends": [{"port": port, "path": "/metrics", "tls": {"mode": "ProvidedTLS"}}]}
    server = MeshMetricServer(render=render, cert_path=str(cert), key_path=str(key))
    try:
        await server.apply(answer)
        client = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        raw = await reader.read()
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"envoy_server_live 1\n"), raw
        # Plain HTTP on the TLS listener gets no metrics.
        status_line = b""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", port)
            plain_writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            await plain_writer.drain()
            status_line = await plain_reader.read()
            plain_writer.close()
        assert b"envoy_server_live" not in status_line
        # Back to Disabled: the listener is reopened in plain HTTP.
        await server.apply({**answer, "backends": [{"port": port, "path": "/metrics"}]})
        assert await _get(port, "/metrics") == (200, b"envoy_server_live 1\n")
    finally:
        await server.close()


async def test_kuma_dp_asks_for_its_meshmetric_once_envoy_is_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """kuma-dp's follow waits for Envoy's readiness (its listeners came over the xDS stream that registers the
    Dataplane) before its first call, and a NOT_FOUND right after it (a registration still behind) is asked
    again within a tenth of a second, not after the one-second backoff."""
    from agent import metrics_watch
    from agent.bootstrap_client import BootstrapError

    loop = asyncio.get_running_loop()
    calls: list[float] = []
    outcomes: list[Any] = [BootstrapError("NOT_FOUND", "Dataplane 'web' does not exist"),
                           {"version": "v1", "conf": {}}]
    applied: list[dict[str, Any]] = []

    async def get_config(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(loop.time())
        if not outcomes:
            await asyncio.sleep(3600)  # the long poll: nothing new
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return dict(outcome)

    class Server:
        async def apply(self, answer: dict[str, Any]) -> None:
            applied.append(answer)

    monkeypatch.setattr(metrics_watch, "get_config", get_config)
    ready = asyncio.Event()
    task = asyncio.create_task(metrics_watch.follow(
        Server(), "https://127.0.0.1:5678", b"", "default", "web", "token",  # type: ignore[arg-type]
        ready=ready))
    try:
        await asyncio.sleep(0.3)
        assert calls == [], "asked before Envoy was ready"
        connected_at = loop.time()
        ready.set()
        await wait_until(lambda: applied, timeout=5.0)
        assert applied == [{"version": "v1", "conf": {}}]
        assert calls[0] - connected_at < 0.1
        assert calls[1] - calls[0] < 0.5, "a NOT_FOUND right after readiness waited out the full backoff"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
