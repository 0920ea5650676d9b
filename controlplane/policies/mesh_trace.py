"""MeshTrace: Envoy traces HTTP requests (HTTP, HTTP/2, gRPC listeners) and reports spans to a backend.

Kuma's YAML (`kuma.io/v1alpha1`): a top-level targetRef (Mesh, MeshSubset, MeshService, MeshServiceSubset,
Dataplane) and one `default`:

    default:
      backends:                      # zero or one; [] turns tracing off
        - type: Zipkin
          zipkin: {url: http://jaeger-collector:9411/api/v2/spans, apiVersion: httpJson|httpProto,
                   traceId128bit: false, sharedSpanContext: true}
        - type: OpenTelemetry
          openTelemetry: {endpoint: otel-collector:4317}     # gRPC; or an http(s) URL: OTLP over HTTP
        - type: Datadog
          datadog: {url: http://127.0.0.1:8126, splitService: false}
      sampling: {overall: 80, client: 60, random: 50}      # percentages, IntOrString decimals 0-100
      tags:
        - {name: team, literal: core}
        - {name: env, header: {name: x-env, default: prod}}

Policies selecting a proxy merge in Kuma's precedence order (JSON merge patch: `backends` and `tags` are
replaced whole, `sampling` merges key by key). The merged conf goes, as Kuma renders it, into the `tracing`
of the HTTP connection manager of every inbound and outbound listener of the proxy (TCP listeners are not
traced), with the literal tags `kuma.mesh` (and `kuma.zone` in a named zone) after the user's unless the user
names them; the collector is reached through a cluster of the proxy's own, `meshtrace:zipkin`,
`meshtrace:opentelemetry` or `meshtrace:datadog`. The service name Envoy reports (OpenTelemetry, Datadog) is
the proxy's first inbound's `kuma.io/service`, as in Kuma.

Differences from Kuma, refused with a message: a Zipkin URL without a path (Envoy needs the collector's path;
Kuma passes it on and Envoy NACKs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from envoy.config.core.v3 import grpc_service_pb2, http_uri_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import datadog_pb2, http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2
from pydantic import Field

from controlplane.resources.base import Resource, ResourceType, Scope, Spec, register
from controlplane.resources.dataplane import Inbound, identifying_service
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import HCM_FILTER, seconds, update_filters
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.targeting import TOP_LEVEL_KINDS, TargetRef, check_top_level, merge_confs
from controlplane.xds.resources import XdsResource

from ._checks import IntOrString, check_percentage, check_type_blocks, parse_decimal, seen_before
from ._collectors import check_endpoint, check_url, collector_cluster, endpoint_of, parse_url

POLICY = "MeshTrace"
BACKEND_TYPES = ("Zipkin", "OpenTelemetry", "Datadog")
ZIPKIN_VERSIONS = {"httpJson": zipkin_pb2.ZipkinConfig.HTTP_JSON, "httpProto": zipkin_pb2.ZipkinConfig.HTTP_PROTO}
CLUSTER_PREFIX = "meshtrace:"  # Kuma's GetTracingClusterName
TRACERS = {"Zipkin": "envoy.tracers.zipkin", "OpenTelemetry": "envoy.tracers.opentelemetry",
           "Datadog": "envoy.tracers.datadog"}
OTLP_HTTP_PATH = "/v1/traces"  # the OTLP/HTTP path for traces, when an endpoint URL names none


def cluster_name(backend_type: str) -> str:
    return CLUSTER_PREFIX + backend_type.lower()


class ZipkinBackend(Spec):
    url: str
    trace_id128bit: bool | None = Field(default=None, alias="traceId128bit")
    api_version: str | None = None
    shared_span_context: bool | None = None

    def check(self, v: Violations, path: str) -> None:
        found = check_url(v, f"{path}.url", self.url, "http://jaeger-collector:9411/api/v2/spans")
        if found is not None and found.path in ("", "/"):
            v.add(f"{path}.url", f"{self.url!r} has no path: Envoy posts spans to the collector's path, give it "
                                 "(Zipkin's is /api/v2/spans)")
        if self.api_version is not None and self.api_version not in ZIPKIN_VERSIONS:
            v.add(f"{path}.apiVersion", f"unknown API version {self.api_version!r}: use httpJson or httpProto")


class DatadogBackend(Spec):
    url: str
    split_service: bool | None = None

    def check(self, v: Violations, path: str) -> None:
        found = parse_url(self.url)
        if found is None or not self.url.startswith("http://") or found.path not in ("", "/"):
            v.add(f"{path}.url", f"{self.url!r} is not the Datadog agent's address: give http://HOST:PORT, no path "
                                 "(e.g. http://127.0.0.1:8126)")
        elif ":" not in self.url.removeprefix("http://").rsplit("]", 1)[-1]:
            v.add(f"{path}.url", "must name the port: give http://HOST:PORT (the agent's default is 8126)")
        else:
            check_url(v, f"{path}.url", self.url, "http://127.0.0.1:8126")


class OpenTelemetryBackend(Spec):
    endpoint: str

    def check(self, v: Violations, path: str) -> None:
        check_endpoint(v, f"{path}.endpoint", self.endpoint, "otel-collector:4317 or http://otel-collector:4318")


class Backend(Spec):
    type: str
    zipkin: ZipkinBackend | None = None
    datadog: DatadogBackend | None = None
    open_telemetry: OpenTelemetryBackend | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.type not in BACKEND_TYPES:
            v.add(f"{path}.type", f"unknown backend type {self.type!r}: use one of {', '.join(BACKEND_TYPES)}")
        check_type_blocks(v, path, self.type, {"Zipkin": ("zipkin", self.zipkin, ""),
                                               "Datadog": ("datadog", self.datadog, ""),
                                               "OpenTelemetry": ("openTelemetry", self.open_telemetry, "")})


class HeaderTag(Spec):
    name: str
    default: str | None = None


class Tag(Spec):
    name: str
    literal: str | None = None
    header: HeaderTag | None = None

    def check(self, v: Violations, path: str) -> None:
        if not self.name:
            v.add(f"{path}.name", "must not be empty: name the tag the spans carry")
        if (self.header is None) == (self.literal is None):
            v.add(path, "must have exactly one of header or literal: a tag's value comes from one of them")
        if self.header is not None:
            name = self.header.name
            if not name or any(c in name for c in "\x00\r\n \t"):
                v.add(f"{path}.header.name", f"{name!r} is not a header name: give e.g. x-env")


class Sampling(Spec):
    overall: IntOrString | None = None
    client: IntOrString | None = None
    random: IntOrString | None = None

    def check(self, v: Violations, path: str) -> None:
        for field in ("overall", "client", "random"):
            value = getattr(self, field)
            if value is not None:
                check_percentage(v, f"{path}.{field}", value)


class Conf(Spec):
    backends: list[Backend] | None = None
    sampling: Sampling | None = None
    tags: list[Tag] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.backends is None:
            v.add(f"{path}.backends", "must be defined: one backend, or [] to turn tracing off")
        elif len(self.backends) > 1:
            v.add(f"{path}.backends", "must have zero or one backend defined: Envoy reports to one tracer")
        for i, backend in enumerate(self.backends or ()):
            backend.check(v, f"{path}.backends[{i}]")
        if self.sampling is not None:
            self.sampling.check(v, f"{path}.sampling")
        seen: dict[str, int] = {}
        for i, tag in enumerate(self.tags or ()):
            tag.check(v, f"{path}.tags[{i}]")
            if (earlier := seen_before(seen, tag.name, i)) is not None:
                v.add(f"{path}.tags[{i}].name", f"{tag.name!r} is already tags[{earlier}]: keep one")


class MeshTraceSpec(Spec):
    target_ref: TargetRef | None = None
    default: Conf | None = None

    def check(self, v: Violations, path: str) -> None:
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_LEVEL_KINDS, policy=POLICY)
        if self.default is None:
            v.add(f"{path}.default", "required: say where spans go (backends), how many (sampling), and tags")
        else:
            self.default.check(v, f"{path}.default")


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshtraces", singular="meshtrace", scope=Scope.MESH, spec_cls=MeshTraceSpec,
    flat=False, is_policy=True,
    description="Traces HTTP requests in Envoy and reports the spans to Zipkin, OpenTelemetry or Datadog.",
))


# --- the merged conf of one proxy ------------------------------------------------------------------------


def merged_conf(policies: Sequence[Resource]) -> dict[str, Any] | None:
    """The `default`s of the MeshTraces selecting a proxy (lowest precedence first), merged."""
    return merge_confs(p.spec.default.to_wire() for p in policies
                       if isinstance(p.spec, MeshTraceSpec) and p.spec.default is not None)


def proxy_conf(ctx: ProxyContext) -> str | None:
    """The proxy's merged conf as canonical JSON when it has a backend (None: no tracing). Computed once per
    set of selecting policies."""
    matched = ctx.rules.matched(POLICY, ctx.dataplane)
    if not matched:
        return None

    def compute() -> str | None:
        conf = merged_conf(matched)
        if not conf or not conf.get("backends"):
            return None
        return json.dumps(conf, sort_keys=True, separators=(",", ":"))

    found: str | None = ctx.rules.cached(("meshtrace-conf", id(matched)), compute)
    return found


def _own_service(ctx: ProxyContext) -> str:
    """The proxy's service as Kuma's source service (IdentifyingName): its first inbound's kuma.io/service; an
    outbound-only proxy's kuma.io/workload label, else "unknown"."""
    return identifying_service(ctx.dataplane)


# --- Envoy effect --------------------------------------------------------------------------------------------


def _percent(value: int | str) -> percent_pb2.Percent:
    d = parse_decimal(value)
    assert d is not None  # validated
    return percent_pb2.Percent(value=float(d))


def custom_tags(tags: list[dict[str, Any]], mesh: str, zone: str) -> list[custom_tag_pb2.CustomTag]:
    out = []
    for tag in tags:
        if "header" in tag:
            header = tag["header"]
            out.append(custom_tag_pb2.CustomTag(tag=tag["name"], request_header=custom_tag_pb2.CustomTag.Header(
                name=header["name"], default_value=header.get("default", ""))))
        else:
            out.append(custom_tag_pb2.CustomTag(tag=tag["name"], literal=custom_tag_pb2.CustomTag.Literal(
                value=tag.get("literal", ""))))
    named = {t["name"] for t in tags}
    for name, value in (("kuma.mesh", mesh), ("kuma.zone", zone)):
        if value and name not in named:  # Kuma's own tags never override the user's
            out.append(custom_tag_pb2.CustomTag(tag=name, literal=custom_tag_pb2.CustomTag.Literal(value=value)))
    return out


def provider(backend: dict[str, Any], service: str, direction: str, destination: str
             ) -> http_tracer_pb2.Tracing.Http:
    kind = backend["type"]
    cluster = cluster_name(kind)
    config: Any
    if kind == "Zipkin":
        zipkin = backend["zipkin"]
        url = endpoint_of(zipkin["url"])
        config = zipkin_pb2.ZipkinConfig(
            collector_cluster=cluster, collector_endpoint=url.path,
            trace_id_128bit=bool(zipkin.get("traceId128bit", False)),
            collector_endpoint_version=ZIPKIN_VERSIONS[zipkin.get("apiVersion", "httpJson")],
            collector_hostname=zipkin["url"].split("://", 1)[1].split("/", 1)[0])
        config.shared_span_context.value = bool(zipkin.get("sharedSpanContext", True))
    elif kind == "OpenTelemetry":
        endpoint = backend["openTelemetry"]["endpoint"]
        config = opentelemetry_pb2.OpenTelemetryConfig(service_name=service)
        if "://" in endpoint:  # OTLP over HTTP
            url = endpoint_of(endpoint)
            path = url.path if url.path not in ("", "/") else OTLP_HTTP_PATH
            scheme = "https" if url.tls else "http"
            config.http_service.http_uri.CopyFrom(http_uri_pb2.HttpUri(
                uri=f"{scheme}://{url.authority}{path}", cluster=cluster, timeout=seconds(5)))
        else:
            config.grpc_service.CopyFrom(grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster)))
    else:
        split = backend["datadog"].get("splitService", False)
        name = service
        if split:  # Kuma's splitService: backend_INBOUND, backend_OUTBOUND_db
            name = f"{service}_{direction}" + (f"_{destination}" if destination else "")
        config = datadog_pb2.DatadogConfig(collector_cluster=cluster, service_name=name)
    typed = any_pb2.Any()
    typed.Pack(config, deterministic=True)
    return http_tracer_pb2.Tracing.Http(name=TRACERS[kind], typed_config=typed)


def tracing(conf: dict[str, Any], service: str, mesh: str, zone: str, direction: str = "INBOUND",
            destination: str = "") -> hcm_pb2.HttpConnectionManager.Tracing:
    out = hcm_pb2.HttpConnectionManager.Tracing()
    out.spawn_upstream_span.value = False  # a sidecar: Envoy's client span stands for the upstream call
    sampling = conf.get("sampling") or {}
    for field in ("overall", "client", "random"):
        if field in sampling:
            getattr(out, f"{field}_sampling").CopyFrom(_percent(sampling[field]))
    out.custom_tags.extend(custom_tags(conf.get("tags") or [], mesh, zone))
    out.provider.CopyFrom(provider(conf["backends"][0], service, direction, destination))
    return out


def add_tracing(listener: listener_pb2.Listener, config: hcm_pb2.HttpConnectionManager.Tracing) -> None:
    def edit(manager: hcm_pb2.HttpConnectionManager) -> None:
        manager.tracing.CopyFrom(config)

    update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager, edit)


def _splits_by_destination(conf: str) -> bool:
    """Datadog's splitService names the destination in the outbound service name."""
    backend = json.loads(conf)["backends"][0]
    return bool(backend.get("type") == "Datadog" and backend["datadog"].get("splitService"))


class TracePlugin(PolicyPlugin):
    policy_type = POLICY
    order = 95

    def inbound_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        conf = proxy_conf(ctx)
        return None if conf is None else (conf, _own_service(ctx), ctx.mesh, ctx.topology.zone)

    def apply_inbound(self, ctx: ProxyContext, inbound: Inbound, listener: listener_pb2.Listener,
                      key: Hashable) -> None:
        assert isinstance(key, tuple)
        conf, service, mesh, zone = key
        add_tracing(listener, tracing(json.loads(conf), service, mesh, zone, "INBOUND"))

    # Outbound: the conf comes from the proxy's top-level match, not its to[] rules, so it is part of what the
    # outbound summaries read of the proxy itself.
    def outbound_source_key(self, ctx: ProxyContext) -> Hashable:
        conf = proxy_conf(ctx)
        return None if conf is None else (conf, _own_service(ctx))

    def listener_key(self, ctx: ProxyContext, service: str) -> Hashable:
        conf = proxy_conf(ctx)
        if conf is None:
            return None
        destination = service if _splits_by_destination(conf) else ""
        return (conf, _own_service(ctx), ctx.mesh, ctx.topology.zone, destination)

    def cluster_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return None

    def apply_outbound_listener(self, ctx: ProxyContext, service: str, listener: listener_pb2.Listener,
                                key: Hashable) -> None:
        assert isinstance(key, tuple)
        conf, source, mesh, zone, destination = key
        add_tracing(listener, tracing(json.loads(conf), source, mesh, zone, "OUTBOUND", destination))

    def proxy_resources(self, ctx: ProxyContext) -> Sequence[tuple[Hashable, Callable[[], XdsResource]]]:
        conf = proxy_conf(ctx)
        if conf is None:
            return ()
        backend = json.loads(conf)["backends"][0]
        kind = backend["type"]
        address = {"Zipkin": lambda: backend["zipkin"]["url"], "Datadog": lambda: backend["datadog"]["url"],
                   "OpenTelemetry": lambda: backend["openTelemetry"]["endpoint"]}[kind]()
        collector = endpoint_of(address)
        grpc = kind == "OpenTelemetry" and "://" not in address
        name = cluster_name(kind)
        return [(("collector", name, collector, grpc), lambda: collector_cluster(name, collector, http2=grpc))]


PLUGIN = register_plugin(TracePlugin())
