"""An OpenTelemetry collector for tests: a gRPC server on loopback that answers OTLP's TraceService,
LogsService and MetricsService Export calls and records what Envoy sends, decoded with the opentelemetry-proto modules
xds-protos ships.

That OTLP version is from before the `scope_*` rename: its `instrumentation_library_spans`/`_logs` are field
2, today's `scope_spans`/`scope_logs`, with the spans/records at field 2 as well, so the bytes read the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from tests.ports import free_port


def _service(resource: Any) -> str:
    return next((a.value.string_value for a in resource.attributes if a.key == "service.name"), "")


def spans(request: bytes) -> list[dict[str, Any]]:
    """ExportTraceServiceRequest -> [{service, trace_id, span_id, name, kind}]."""
    message = trace_service_pb2.ExportTraceServiceRequest.FromString(request)
    return [{"service": _service(rs.resource), "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
             "name": span.name, "kind": span.kind}
            for rs in message.resource_spans for scope in rs.instrumentation_library_spans for span in scope.spans]


def plain(value: common_pb2.AnyValue) -> Any:
    """An AnyValue as plain Python (strings, lists, dicts)."""
    kind = value.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def log_records(request: bytes) -> list[dict[str, Any]]:
    """ExportLogsServiceRequest -> [{body, attributes}]."""
    message = logs_service_pb2.ExportLogsServiceRequest.FromString(request)
    return [{"body": plain(record.body), "attributes": {kv.key: plain(kv.value) for kv in record.attributes}}
            for rl in message.resource_logs for scope in rl.instrumentation_library_logs for record in scope.logs]


def metric_points(request: bytes) -> list[dict[str, Any]]:
    """ExportMetricsServiceRequest -> [{resource, name, kind, attributes, value}] (value: a number point's value,
    or a histogram's/summary's count)."""
    message = metrics_service_pb2.ExportMetricsServiceRequest.FromString(request)
    out = []
    for rm in message.resource_metrics:
        resource = {kv.key: plain(kv.value) for kv in rm.resource.attributes}
        for scope in rm.instrumentation_library_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                for point in getattr(metric, kind).data_points:
                    value: Any = point.count if kind in ("histogram", "summary") else \
                        getattr(point, point.WhichOneof("value") or "as_int")
                    out.append({"resource": resource, "name": metric.name, "kind": kind, "value": value,
                                "attributes": {kv.key: plain(kv.value) for kv in point.attributes}})
    return out


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))

        def export(into: list[dict[str, Any]], decode: Callable[[bytes], list[dict[str, Any]]],
                   answer: bytes) -> Callable[[bytes, grpc.ServicerContext], bytes]:
            def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
                items = decode(request)
                with self._lock:
                    into.extend(items)
                return answer
            return handle

        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {
                "Export": grpc.unary_unary_rpc_method_handler(export(
                    self.spans, spans, trace_service_pb2.ExportTraceServiceResponse().SerializeToString()))}),
            grpc.method_handlers_generic_handler("opentelemetry.proto.collector.logs.v1.LogsService", {
                "Export": grpc.unary_unary_rpc_method_handler(export(
                    self.logs, log_records, logs_service_pb2.ExportLogsServiceResponse().SerializeToString()))}),
            grpc.method_handlers_generic_handler("opentelemetry.proto.collector.metrics.v1.MetricsService", {
                "Export": grpc.unary_unary_rpc_method_handler(export(
                    self.metrics, metric_points,
                    metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()))}),
        ))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{free_port()}")
        self.server.start()

    def snapshot_spans(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.spans)

    def snapshot_logs(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.logs)

    def snapshot_metrics(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.metrics)

    def close(self) -> None:
        self.server.stop(grace=None).wait(5)
