"""MeshMetric's OpenTelemetry backend, kuma-dp's side: Prometheus text into OTLP metrics (agent/metrics_otel.py),
and the backend's checks."""

from __future__ import annotations

import pytest

from agent.metrics_otel import to_otlp
from controlplane.policies.mesh_metric import opentelemetry_backends
from controlplane.resources import ResourceValidationError, from_wire, load_all

load_all()

TEXT = """# HELP envoy_cluster_upstream_rq_total Total requests.
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="backend",kuma_io_service="web"} 12
# TYPE envoy_server_memory_allocated gauge
envoy_server_memory_allocated{kuma_io_service="web"} 1.5e+06
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="backend",le="0.5"} 1
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="backend",le="5"} 3
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="backend",le="+Inf"} 4
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="backend"} 27.5
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="backend"} 4
# TYPE rpc_latency summary
rpc_latency{quantile="0.5"} 0.2
rpc_latency{quantile="0.99"} 0.9
rpc_latency_sum 3.0
rpc_latency_count 10
app_untyped 7
"""


def test_prometheus_families_become_otlp_metrics() -> None:
    request = to_otlp(TEXT, {"service.name": "web"}, start_ns=1, now_ns=2)
    rm = request.resource_metrics[0]
    assert [(kv.key, kv.value.string_value) for kv in rm.resource.attributes] == [("service.name", "web")]
    metrics = {m.name: m for m in rm.instrumentation_library_metrics[0].metrics}
    counter = metrics["envoy_cluster_upstream_rq"].sum
    assert counter.is_monotonic and counter.aggregation_temporality == 2  # cumulative
    assert counter.data_points[0].as_int == 12 and counter.data_points[0].start_time_unix_nano == 1
    assert {kv.key: kv.value.string_value for kv in counter.data_points[0].attributes} == {
        "envoy_cluster_name": "backend", "kuma_io_service": "web"}
    assert metrics["envoy_server_memory_allocated"].gauge.data_points[0].as_int == 1_500_000
    histogram = metrics["envoy_cluster_upstream_rq_time"].histogram.data_points[0]
    assert list(histogram.explicit_bounds) == [0.5, 5.0]
    assert list(histogram.bucket_counts) == [1, 2, 1]  # per bucket, the last one above 5
    assert (histogram.count, histogram.sum) == (4, 27.5)
    summary = metrics["rpc_latency"].summary.data_points[0]
    assert [(q.quantile, q.value) for q in summary.quantile_values] == [(0.5, 0.2), (0.99, 0.9)]
    assert (summary.count, summary.sum) == (10, 3.0)
    assert metrics["app_untyped"].gauge.data_points[0].as_int == 7


def _policy(backend: dict[str, object]) -> dict[str, object]:
    return {"type": "MeshMetric", "mesh": "default", "name": "m", "spec": {"default": {"backends": [backend]}}}


def test_backend_checks_and_defaults() -> None:
    ok = from_wire(_policy({"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel:4317"}}))
    assert opentelemetry_backends(ok.spec.default.to_wire()) == [  # type: ignore[attr-defined]
        {"endpoint": "otel:4317", "interval": 60.0}]
    for backend, field, says in [
        ({"type": "OpenTelemetry", "openTelemetry": {"endpoint": "http://otel:4318"}}, "openTelemetry.endpoint",
         "give host:port"),
        ({"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel:4317", "refreshInterval": "100ms"}},
         "openTelemetry.refreshInterval", "too often"),
        ({"type": "OpenTelemetry"}, "openTelemetry", "must be set with type OpenTelemetry"),
        ({"type": "Prometheus", "openTelemetry": {"endpoint": "otel:4317"}, "prometheus": {}}, "openTelemetry",
         "cannot be set with type Prometheus"),
    ]:
        with pytest.raises(ResourceValidationError) as e:
            from_wire(_policy(backend))
        got = [(p.field, p.reason) for p in e.value.invalid]
        assert any(f == f"spec.default.backends[0].{field}" and says in r for f, r in got), got
