"""MeshTrace between real Envoys on loopback (mTLS): the caller's Envoy (its outbound listener) and the
callee's (its inbound listener) both report a span of the same trace to a Zipkin-compatible receiver the test
runs, with the policy's tags and sampling; the OpenTelemetry backend's spans reach a gRPC OTLP receiver the
test runs (tests/integration/otlp_receiver.py).

Sampling is shown by Envoy's decisions, not by shares: with `random: 0` and `client: 100`, a request is
traced exactly when it carries `x-client-trace-id`. Envoy posts every buffered span at each flush, so once a
forced trace's spans have arrived, the spans of every request made before it would have arrived too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.otlp_receiver import spans as otlp_spans
from tests.integration.test_policies_envoy import ALLOW_ALL, MTLS_MESH, policy_mesh
from tests.integration.test_policies_faults import inspected, kumactl_inspect
from tests.ports import free_port


@pytest.fixture
def pmesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
          app_factory: Callable[..., App]) -> MeshHarness:
    return policy_mesh(cp_factory, envoy_factory, app_factory)


# --- a Zipkin-compatible receiver ----------------------------------------------------------------------------

class ZipkinReceiver:
    """Records the spans Envoy POSTs to /api/v2/spans (Zipkin's JSON v2 list) and answers 202, as Zipkin does;
    any other POST's body is kept as it came (`bodies`: an OTLP/HTTP collector's /v1/traces)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.posts: list[tuple[str, str]] = []  # (path, content type)
        self.bodies: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self._body()
                with receiver._lock:
                    receiver.posts.append((self.path, self.headers.get("Content-Type", "")))
                    if self.path == "/api/v2/spans":
                        receiver.spans.extend(json.loads(body))
                    else:
                        receiver.bodies.append((self.path, body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()  # the empty line after the last chunk
                return b"".join(chunks)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="zipkin-receiver", daemon=True)
        self.thread.start()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.spans)

    def snapshot_bodies(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def zipkin() -> Iterator[ZipkinReceiver]:
    receiver = ZipkinReceiver()
    yield receiver
    receiver.close()


def trace_policy(url: str) -> str:
    return f"""
type: MeshTrace
mesh: default
name: everyone
spec:
  targetRef: {{kind: Mesh}}
  default:
    backends:
    - type: Zipkin
      zipkin: {{url: "{url}"}}
    sampling: {{overall: 100, client: 100, random: 0}}
    tags:
    - {{name: team, literal: core}}
    - name: env
      header: {{name: x-env, default: prod}}
"""


def spans_of(spans: list[dict[str, Any]], env: str) -> list[dict[str, Any]]:
    return [s for s in spans if s.get("tags", {}).get("env") == env]


def test_zipkin_trace_spans_the_callers_and_the_callees_envoys(pmesh: MeshHarness, zipkin: ZipkinReceiver,
                                                                tmp_path: Path) -> None:
    mesh = pmesh
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    mesh.apply(trace_policy(f"http://127.0.0.1:{zipkin.port}/api/v2/spans"))
    backend = mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    web = mesh.dataplane("web-1", "web", app_port=mesh.app("echo_http", "--name", "web").port,
                         outbounds={"backend": 0})
    for dp in (web, backend):
        assert '"envoy.tracers.zipkin"' in json.dumps(dp.envoy.config_dump_of("ListenersConfigDump"))
    port = web.outbounds["backend"]
    eventually(lambda: http(port)[0] == 200, message="web reaches backend")

    # random: 0: not traced unless the client asks (x-client-trace-id, client: 100).
    for _ in range(3):
        assert http(port, headers={"x-env": "unsampled"})[0] == 200
    for _ in range(2):
        assert http(port, headers={"x-env": "staging", "x-client-trace-id": "t-1"})[0] == 200

    def both_sides() -> list[dict[str, Any]]:
        staged = spans_of(zipkin.snapshot(), "staging")
        by_trace: dict[str, set[tuple[str, str]]] = {}
        for s in staged:
            by_trace.setdefault(s["traceId"], set()).add((s["localEndpoint"]["serviceName"], s.get("kind", "")))
        complete = [t for t, sides in by_trace.items() if sides >= {("web", "CLIENT"), ("backend", "SERVER")}]
        assert len(complete) == 2, by_trace
        return staged

    staged = eventually(both_sides, timeout=30, message="spans of both Envoys at the Zipkin receiver")
    assert spans_of(zipkin.snapshot(), "unsampled") == [], "random: 0 traces nothing the client did not ask for"
    assert {p for p, _ in zipkin.posts} == {"/api/v2/spans"}
    assert all(ct.startswith("application/json") for _, ct in zipkin.posts), zipkin.posts  # httpJson
    for span in staged:
        assert span["tags"]["team"] == "core" and span["tags"]["kuma.mesh"] == "default", span["tags"]
    # sharedSpanContext (Kuma's default): the callee's server span shares the caller's client span's id.
    client = next(s for s in staged if s["localEndpoint"]["serviceName"] == "web")
    server = next(s for s in staged if s["localEndpoint"]["serviceName"] == "backend"
                  and s["traceId"] == client["traceId"])
    assert server["id"] == client["id"]

    # The inspect API and kumactl show what the proxy merges.
    shown = inspected(mesh, "web-1", "MeshTrace")
    assert shown["proxy"]["origins"] == ["everyone"]
    assert shown["proxy"]["conf"]["sampling"] == {"overall": 100, "client": 100, "random": 0}
    table = kumactl_inspect(mesh, "web-1", tmp_path)
    assert any("MeshTrace" in line and "proxy" in line and "127.0.0.1" in line for line in table.splitlines()), table

    # Without a backend (a more specific policy with `backends: []`), the proxy stops tracing.
    mesh.apply("""
type: MeshTrace
mesh: default
name: web-off
spec:
  targetRef: {kind: MeshService, name: web}
  default: {backends: []}
""")
    web.envoy.wait_for(lambda: "envoy.tracers.zipkin" not in json.dumps(
        web.envoy.config_dump_of("ListenersConfigDump")), message="web's tracing removed")
    assert '"envoy.tracers.zipkin"' in json.dumps(backend.envoy.config_dump_of("ListenersConfigDump"))


# --- OpenTelemetry: a gRPC OTLP receiver ---------------------------------------------------------------------

@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def test_opentelemetry_trace_reaches_a_grpc_otlp_receiver(pmesh: MeshHarness, otlp: OtlpReceiver) -> None:
    mesh = pmesh
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    mesh.apply(f"""
type: MeshTrace
mesh: default
name: otel
spec:
  default:
    backends:
    - type: OpenTelemetry
      openTelemetry: {{endpoint: "127.0.0.1:{otlp.port}"}}
    sampling: {{overall: 100, random: 100}}
""")
    backend = mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    web = mesh.dataplane("web-1", "web", app_port=mesh.app("echo_http", "--name", "web").port,
                         outbounds={"backend": 0})
    port = web.outbounds["backend"]
    eventually(lambda: http(port)[0] == 200, message="web reaches backend")
    for dp in (web, backend):
        assert not {k: v for k, v in dp.envoy.stats(filter="update_rejected$").items() if v}

    def both_sides() -> bool:
        by_trace: dict[str, set[str]] = {}
        for s in otlp.snapshot_spans():
            by_trace.setdefault(s["trace_id"], set()).add(s["service"])
        assert any(services >= {"web", "backend"} for services in by_trace.values()), by_trace
        return True

    for _ in range(5):
        assert http(port)[0] == 200
    eventually(both_sides, timeout=30, message="spans of both Envoys at the OTLP receiver")


def test_opentelemetry_over_http_reaches_an_otlp_http_collector(pmesh: MeshHarness, zipkin: ZipkinReceiver) -> None:
    """`openTelemetry.endpoint` as a URL: Envoy posts OTLP/HTTP (protobuf) to its path, /v1/traces by default."""
    mesh = pmesh
    mesh.apply(f"""
type: MeshTrace
mesh: default
name: otel-http
spec:
  default:
    backends:
    - type: OpenTelemetry
      openTelemetry: {{endpoint: "http://127.0.0.1:{zipkin.port}"}}
    sampling: {{overall: 100, random: 100}}
""")
    mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    web = mesh.dataplane("web-1", "web", app_port=mesh.app("echo_http", "--name", "web").port,
                         outbounds={"backend": 0})
    port = web.outbounds["backend"]
    eventually(lambda: http(port)[0] == 200, message="web reaches backend")

    def both_sides() -> bool:
        by_trace: dict[str, set[str]] = {}
        for path, body in zipkin.snapshot_bodies():
            assert path == "/v1/traces", path
            for s in otlp_spans(body):
                by_trace.setdefault(s["trace_id"], set()).add(s["service"])
        assert any(services >= {"web", "backend"} for services in by_trace.values()), by_trace
        return True

    for _ in range(5):
        assert http(port)[0] == 200
    eventually(both_sides, timeout=30, message="OTLP/HTTP spans of both Envoys")
