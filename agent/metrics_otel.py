"""MeshMetric's OpenTelemetry backend: kuma-dp pushes the dataplane's metrics to an OTLP/gRPC collector.

Envoy can push stats over OTLP only from a stats sink in its bootstrap, which the control plane cannot change,
so, as in Kuma, kuma-dp does it: every `refreshInterval` (Kuma's default: 1m) it takes what it serves to
Prometheus (Envoy's series filtered and labelled as the MeshMetric says, the applications' and kuma-dp's own),
turns each family into an OTLP metric (counter -> monotonic cumulative Sum, gauge and untyped -> Gauge,
histogram -> Histogram with explicit bounds, summary -> Summary; Prometheus labels -> attributes) and calls
`opentelemetry.proto.collector.metrics.v1.MetricsService/Export` on the endpoint. Kuma routes that push through
Envoy; kuma-vm's kuma-dp dials the collector itself (plaintext gRPC, as Kuma's endpoint is).

The OTLP messages come from the opentelemetry-proto modules xds-protos ships. That version predates the
`scope_metrics` rename: its `instrumentation_library_metrics` is field 2, today's `scope_metrics`, with the
metrics at field 2 as well, so collectors of today read the bytes the same.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("kuma-dp.metrics")

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DEFAULT_INTERVAL = 60.0  # Kuma's refreshInterval default
EXPORT_TIMEOUT = 10.0


def _attributes(labels: dict[str, str]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v)) for k, v in sorted(labels.items())]


def _number(point: metrics_pb2.NumberDataPoint, value: float) -> None:
    if value == int(value) and not math.isinf(value) and abs(value) < 2**63:
        point.as_int = int(value)
    else:
        point.as_double = value


def to_otlp(text: str, resource: dict[str, str], start_ns: int, now_ns: int
            ) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """Prometheus exposition text as one OTLP metrics export request."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.CopyFrom(resource_pb2.Resource(attributes=_attributes(resource)))
    scope = rm.instrumentation_library_metrics.add()
    scope.instrumentation_library.name = "kuma-dp"
    for family in text_string_to_metric_families(text):
        if not family.samples:
            continue
        metric = scope.metrics.add(name=family.name, description=family.documentation or "")
        if family.type == "counter":
            metric.sum.aggregation_temporality = CUMULATIVE
            metric.sum.is_monotonic = True
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                point = metric.sum.data_points.add(attributes=_attributes(s.labels), start_time_unix_nano=start_ns,
                                                   time_unix_nano=now_ns)
                _number(point, s.value)
        elif family.type == "histogram":
            _histogram(metric, family.samples, start_ns, now_ns)
        elif family.type == "summary":
            _summary(metric, family.samples, start_ns, now_ns)
        else:  # gauge, unknown (untyped), info, stateset: a value per series
            for s in family.samples:
                point = metric.gauge.data_points.add(attributes=_attributes(s.labels), time_unix_nano=now_ns)
                _number(point, s.value)
    return request


def _series(samples: Iterable[Any], drop: str) -> dict[tuple[tuple[str, str], ...], list[Any]]:
    out: dict[tuple[tuple[str, str], ...], list[Any]] = {}
    for s in samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != drop))
        out.setdefault(key, []).append(s)
    return out


def _histogram(metric: metrics_pb2.Metric, samples: list[Any], start_ns: int, now_ns: int) -> None:
    metric.histogram.aggregation_temporality = CUMULATIVE
    for labels, group in _series(samples, "le").items():
        buckets = sorted(((float(s.labels["le"]), s.value) for s in group if s.name.endswith("_bucket")),
                         key=lambda b: b[0])
        point = metric.histogram.data_points.add(attributes=_attributes(dict(labels)), start_time_unix_nano=start_ns,
                                                 time_unix_nano=now_ns)
        previous = 0.0
        for bound, cumulative in buckets:  # Prometheus buckets are cumulative; OTLP's are per bucket
            if not math.isinf(bound):
                point.explicit_bounds.append(bound)
            point.bucket_counts.append(int(cumulative - previous))
            previous = cumulative
        for s in group:
            if s.name.endswith("_sum"):
                point.sum = s.value
            elif s.name.endswith("_count"):
                point.count = int(s.value)


def _summary(metric: metrics_pb2.Metric, samples: list[Any], start_ns: int, now_ns: int) -> None:
    for labels, group in _series(samples, "quantile").items():
        point = metric.summary.data_points.add(attributes=_attributes(dict(labels)), start_time_unix_nano=start_ns,
                                               time_unix_nano=now_ns)
        for s in group:
            if "quantile" in s.labels:
                point.quantile_values.add(quantile=float(s.labels["quantile"]), value=s.value)
            elif s.name.endswith("_sum"):
                point.sum = s.value
            elif s.name.endswith("_count"):
                point.count = int(s.value)


@dataclass
class OtelPusher:
    """Pushes to one collector every `interval` seconds until cancelled."""

    endpoint: str  # host:port
    interval: float
    render: Callable[[], Awaitable[bytes]]
    resource: dict[str, str]
    start_ns: int = 0

    async def run(self) -> None:
        import grpc

        self.start_ns = self.start_ns or time.time_ns()
        failing = False
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            export = channel.unary_unary(EXPORT)
            while True:
                try:
                    text = (await self.render()).decode("utf-8", "replace")
                    request = to_otlp(text, self.resource, self.start_ns, time.time_ns())
                    await export(request.SerializeToString(), timeout=EXPORT_TIMEOUT)
                    if failing:
                        log.info("pushing metrics to the OpenTelemetry collector again",
                                 extra={"endpoint": self.endpoint})
                    failing = False
                except asyncio.CancelledError:
                    raise
                except (grpc.aio.AioRpcError, ValueError) as e:
                    (log.debug if failing else log.warning)(
                        "cannot push metrics to the OpenTelemetry collector; retrying at the next interval",
                        extra={"endpoint": self.endpoint, "error": str(e)[:300]})
                    failing = True
                await asyncio.sleep(self.interval)
