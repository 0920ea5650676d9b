"""MeshTrace: Kuma's precedence and merging across policies, what the tracing config holds, collector
addresses, and that proxies with the same merged conf share their listeners."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.trace.v3 import datadog_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf.any_pb2 import Any as AnyPb

from controlplane.policies import mesh_trace
from controlplane.policies._collectors import Collector, parse_host_port, parse_url
from controlplane.resources import Resource, from_wire, load_all
from controlplane.resources.errors import ResourceValidationError
from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.generate.proxy import generate_snapshot
from controlplane.xds.resources import CLUSTER, LISTENER
from tests.unit.xds_fixtures import context, dataplane, mesh, topology

load_all()


def policy(name: str, target: dict[str, Any] | None, default: dict[str, Any]) -> Resource:
    spec: dict[str, Any] = {"default": default}
    if target is not None:
        spec["targetRef"] = target
    return from_wire({"type": "MeshTrace", "mesh": "default", "name": name, "spec": spec})


ZIPKIN = {"type": "Zipkin", "zipkin": {"url": "http://127.0.0.1:9411/api/v2/spans"}}


def test_merge_sampling_key_by_key_backends_and_tags_replaced() -> None:
    merged = mesh_trace.merged_conf([
        policy("mesh-wide", None, {"backends": [ZIPKIN], "sampling": {"overall": 50, "client": 10},
                                   "tags": [{"name": "a", "literal": "1"}]}),
        policy("web", {"kind": "MeshService", "name": "web"},
               {"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "127.0.0.1:4317"}}],
                "sampling": {"overall": 5}, "tags": [{"name": "b", "literal": "2"}]}),
    ])
    assert merged == {"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "127.0.0.1:4317"}}],
                      "sampling": {"overall": 5, "client": 10}, "tags": [{"name": "b", "literal": "2"}]}


def _hcm(listener_body: bytes) -> hcm_pb2.HttpConnectionManager:
    from envoy.config.listener.v3 import listener_pb2

    listener = listener_pb2.Listener.FromString(listener_body)
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def _fixture(policies: list[Resource], memo: ResourceMemo | None = None) -> dict[str, Any]:
    dps = [dataplane("backend-1", "backend", port=10001, service_port=20001, protocol="http"),
           dataplane("web-1", "web", port=10002, service_port=20002, protocol="http",
                     outbounds=[(30001, "backend")]),
           dataplane("web-2", "web", port=10003, service_port=20003, protocol="http",
                     outbounds=[(30001, "backend")])]
    topo = topology(mesh(), dps, policies)
    memo = memo or ResourceMemo()
    return {d.meta.name: generate_snapshot(context(topo, d.meta.name, memo)) for d in dps}


def test_the_more_specific_policy_wins_and_renders_into_inbound_and_outbound() -> None:
    snaps = _fixture([
        policy("mesh-wide", None, {"backends": [ZIPKIN], "sampling": {"overall": 50, "random": "2.5"}}),
        policy("web-only", {"kind": "MeshService", "name": "web"},
               {"backends": [ZIPKIN], "sampling": {"overall": 100},
                "tags": [{"name": "env", "header": {"name": "x-env", "default": "prod"}}]}),
    ])
    web = snaps["web-1"]
    for name in ("inbound:127.0.0.1:10002", "outbound:127.0.0.1:30001"):
        tracing = _hcm(web.of_type(LISTENER)[name].body).tracing
        assert tracing.overall_sampling.value == 100 and tracing.random_sampling.value == 2.5
        assert [t.tag for t in tracing.custom_tags] == ["env", "kuma.mesh"]
        assert tracing.custom_tags[0].request_header.default_value == "prod"
        zipkin = zipkin_pb2.ZipkinConfig()
        tracing.provider.typed_config.Unpack(zipkin)
        assert (zipkin.collector_cluster, zipkin.collector_endpoint, zipkin.collector_hostname) == (
            "meshtrace:zipkin", "/api/v2/spans", "127.0.0.1:9411")
        assert zipkin.shared_span_context.value and zipkin.collector_endpoint_version == zipkin.HTTP_JSON
    assert "meshtrace:zipkin" in web.of_type(CLUSTER)
    backend = _hcm(snaps["backend-1"].of_type(LISTENER)["inbound:127.0.0.1:10001"].body).tracing
    assert backend.overall_sampling.value == 50 and not backend.custom_tags[:-1]


def test_same_conf_same_outbound_listener_and_no_backend_no_tracing() -> None:
    memo = ResourceMemo()
    snaps = _fixture([policy("mesh-wide", None, {"backends": [ZIPKIN]}),
                      policy("backend-off", {"kind": "MeshService", "name": "backend"}, {"backends": []})], memo)
    one = snaps["web-1"].of_type(LISTENER)["outbound:127.0.0.1:30001"]
    two = snaps["web-2"].of_type(LISTENER)["outbound:127.0.0.1:30001"]
    assert one is two, "proxies of one service with one merged conf share the outbound listener"
    assert not _hcm(snaps["backend-1"].of_type(LISTENER)["inbound:127.0.0.1:10001"].body).HasField("tracing")
    assert "meshtrace:zipkin" not in snaps["backend-1"].of_type(CLUSTER)


def test_opentelemetry_and_datadog_providers() -> None:
    otel = {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "https://otel.example:4318"}}
    conf = {"backends": [otel]}
    tracing = mesh_trace.tracing(conf, "web", "default", "zone-1")
    config = opentelemetry_pb2.OpenTelemetryConfig()
    tracing.provider.typed_config.Unpack(config)
    assert config.service_name == "web"
    assert config.http_service.http_uri.uri == "https://otel.example:4318/v1/traces"
    assert [t.tag for t in tracing.custom_tags] == ["kuma.mesh", "kuma.zone"]
    dd = {"type": "Datadog", "datadog": {"url": "http://127.0.0.1:8126", "splitService": True}}
    tracing = mesh_trace.tracing({"backends": [dd]}, "web", "default", "", "OUTBOUND", "db")
    datadog = datadog_pb2.DatadogConfig()
    assert isinstance(tracing.provider.typed_config, AnyPb)
    tracing.provider.typed_config.Unpack(datadog)
    assert (datadog.service_name, datadog.collector_cluster) == ("web_OUTBOUND_db", "meshtrace:datadog")


def test_user_tags_are_not_overridden_by_kumas() -> None:
    tags = mesh_trace.custom_tags([{"name": "kuma.mesh", "literal": "mine"}], "default", "")
    assert [(t.tag, t.literal.value) for t in tags] == [("kuma.mesh", "mine")]


@pytest.mark.parametrize(("text", "found"), [
    ("http://zipkin:9411/api/v2/spans", Collector("zipkin", 9411, False, "/api/v2/spans")),
    ("https://zipkin/api/v2/spans", Collector("zipkin", 443, True, "/api/v2/spans")),
    ("http://[::1]:9411/x", Collector("::1", 9411, False, "/x")),
    ("ftp://zipkin/x", None), ("http:///x", None), ("http://a:b@zipkin/x", None), ("http://zipkin/x?y", None),
])
def test_collector_urls(text: str, found: Collector | None) -> None:
    assert parse_url(text) == found


@pytest.mark.parametrize(("text", "found"), [
    ("otel:4317", Collector("otel", 4317)), ("otel", Collector("otel", 4317)),
    ("[::1]:4317", Collector("::1", 4317)), ("::1", Collector("::1", 4317)), ("otel:0", None), ("otel:x", None),
])
def test_collector_host_ports(text: str, found: Collector | None) -> None:
    assert parse_host_port(text) == found


@pytest.mark.parametrize(("backend", "field", "reason"), [
    ({"type": "Datadog", "datadog": {"url": "http://dd"}}, "datadog.url", "must name the port"),
    ({"type": "Datadog", "datadog": {"url": "http://dd:8126/x"}}, "datadog.url", "no path"),
    ({"type": "Zipkin"}, "zipkin", "must be set with type Zipkin"),
    ({"type": "Zipkin", "zipkin": {"url": "http://z:1/a", "apiVersion": "grpc"}}, "zipkin.apiVersion",
     "use httpJson or httpProto"),
    ({"type": "Zipkin", "zipkin": {"url": "http://z:1/a"}, "datadog": {"url": "http://d:1"}}, "datadog",
     "cannot be set with type Zipkin"),
    ({"type": "Jaeger"}, "type", "unknown backend type"),
])
def test_backend_checks(backend: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ResourceValidationError) as e:
        policy("p", None, {"backends": [backend]})
    assert any(p.field == f"spec.default.backends[0].{field}" and reason in p.reason for p in e.value.invalid), \
        e.value.invalid
