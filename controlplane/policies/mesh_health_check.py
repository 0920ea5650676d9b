"""MeshHealthCheck: active health checking of the destinations a proxy calls (`to[]` only).

`default` sets the probing rhythm (`interval`, default 1m; `timeout`, default 15s; `unhealthyInterval`,
`noTrafficInterval`, `initialJitter`, `intervalJitter`, all > 0; `intervalJitterPercent` 0-100),
thresholds (`unhealthyThreshold` default 5, `healthyThreshold` default 1, both >= 1), `healthyPanicThreshold`
(a percentage, int or decimal string), `failTrafficOnPanic`, `reuseConnection`, event logging
(`eventLogPath`, an absolute path; `alwaysLogHealthCheckFailures`) and at least one checker:

- `http`: `disabled`, `path` (absolute, default '/'), `requestHeadersToAdd.{set, add}[]` (at most 16 each),
  `expectedStatuses[]` (100-599);
- `tcp`: `disabled`, `send` (base64), `receive[]` (base64 blocks expected in order);
- `grpc`: `disabled`, `serviceName`, `authority`.

Positions (Kuma 2.9): top-level Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane or MeshGateway
(with listener tags); `to[]` Mesh or MeshService (Kuma 2.14: under any top level).

Envoy effect (end of this module): one active health check on every cluster of the destination, chosen as
Kuma does: HTTP for a service speaking http/http2 and gRPC for grpc when that checker is configured and not
disabled, otherwise TCP unless `tcp.disabled` (no checker at all: no health check). Defaults as Kuma's:
interval 1m, timeout 15s, unhealthy threshold 5, healthy threshold 1; HTTP path '/', expected statuses as
[s, s+1) ranges, request headers; TCP send/receive payloads as bytes; gRPC service name and authority;
`eventLogPath` is accepted but not rendered (Envoy would reject the whole cluster update when the file
cannot be opened on the proxy's host; Kuma passes it through). `healthyPanicThreshold` and
`failTrafficOnPanic` go to the cluster's common_lb_config. An endpoint failing the check leaves the
load-balancing rotation and returns once it passes `healthyThreshold` checks.
"""

from __future__ import annotations

import base64
import json
import posixpath
from collections.abc import Hashable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.type.v3 import http_pb2, range_pb2

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import duration
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_GATEWAY,
    MESH_SERVICE,
    SELECTS_NOTHING_YET,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    check_top_level,
    require_some,
)

from ._checks import (
    check_base64,
    check_duration,
    check_header_name,
    check_header_value,
    check_http_status,
    check_int,
    check_percentage,
    check_to,
    parse_decimal,
    parse_go_duration,
    seen_before,
)

POLICY = "MeshHealthCheck"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY)
MAX_HEADERS = 16


class HeaderKeyValue(Spec):
    name: str
    value: str

    def check(self, v: Violations, path: str) -> None:
        check_header_name(v, f"{path}.name", self.name, modifiable=True)
        check_header_value(v, f"{path}.value", self.value)


class HeaderModifier(Spec):
    set: list[HeaderKeyValue] | None = None
    add: list[HeaderKeyValue] | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, ("set", "add")):
            return
        seen: dict[Hashable, str] = {}
        for field in ("set", "add"):
            items = getattr(self, field) or []
            if len(items) > MAX_HEADERS:
                v.add(f"{path}.{field}", f"at most {MAX_HEADERS} headers")
            for i, kv in enumerate(items):
                p = f"{path}.{field}[{i}]"
                kv.check(v, p)
                if (earlier := seen_before(seen, kv.name, p)) is not None:
                    v.add(f"{p}.name", f"header {kv.name!r} is already given at {earlier}: give each header once")


class HttpHealthCheck(Spec):
    disabled: bool | None = None
    path: str | None = None
    request_headers_to_add: HeaderModifier | None = None
    expected_statuses: list[int] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.path is not None:
            if not self.path.startswith("/"):
                v.add(f"{path}.path", f"{self.path!r} must be an absolute path, e.g. /health")
            else:
                check_header_value(v, f"{path}.path", self.path)
        if self.request_headers_to_add is not None:
            self.request_headers_to_add.check(v, f"{path}.requestHeadersToAdd")
        if self.expected_statuses is not None and not self.expected_statuses:
            v.add(f"{path}.expectedStatuses", "cannot be empty: list the healthy statuses or remove the field")
        for i, status in enumerate(self.expected_statuses or ()):
            check_http_status(v, f"{path}.expectedStatuses[{i}]", status)


class TcpHealthCheck(Spec):
    disabled: bool | None = None
    send: str | None = None
    receive: list[str] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.send is not None:
            if not self.send:
                v.add(f"{path}.send", "cannot be empty: remove it to only check that the connection opens")
            check_base64(v, f"{path}.send", self.send)
        for i, block in enumerate(self.receive or ()):
            check_base64(v, f"{path}.receive[{i}]", block)
            if not block:
                v.add(f"{path}.receive[{i}]", "cannot be empty")


class GrpcHealthCheck(Spec):
    disabled: bool | None = None
    service_name: str | None = None
    authority: str | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.service_name is not None:
            check_header_value(v, f"{path}.serviceName", self.service_name)
        if self.authority:  # Kuma: "" is the default (the cluster's name)
            if any(c.isspace() for c in self.authority):
                v.add(f"{path}.authority", "must be a host name (optionally with :port), without spaces")
            else:
                check_header_value(v, f"{path}.authority", self.authority)


class Conf(Spec):
    interval: str | None = None
    unhealthy_interval: str | None = None
    timeout: str | None = None
    unhealthy_threshold: int | None = None
    healthy_threshold: int | None = None
    initial_jitter: str | None = None
    interval_jitter: str | None = None
    interval_jitter_percent: int | None = None
    healthy_panic_threshold: int | str | None = None
    fail_traffic_on_panic: bool | None = None
    event_log_path: str | None = None
    always_log_health_check_failures: bool | None = None
    no_traffic_interval: str | None = None
    tcp: TcpHealthCheck | None = None
    http: HttpHealthCheck | None = None
    grpc: GrpcHealthCheck | None = None
    reuse_connection: bool | None = None

    def check(self, v: Violations, path: str) -> None:
        for f, alias in (("interval", "interval"), ("unhealthy_interval", "unhealthyInterval"),
                         ("timeout", "timeout"), ("initial_jitter", "initialJitter"),
                         ("interval_jitter", "intervalJitter"), ("no_traffic_interval", "noTrafficInterval")):
            check_duration(v, f"{path}.{alias}", getattr(self, f), allow_zero=False)
        check_int(v, f"{path}.unhealthyThreshold", self.unhealthy_threshold, minimum=1)
        check_int(v, f"{path}.healthyThreshold", self.healthy_threshold, minimum=1)
        check_int(v, f"{path}.intervalJitterPercent", self.interval_jitter_percent, maximum=100)
        check_percentage(v, f"{path}.healthyPanicThreshold", self.healthy_panic_threshold)
        if self.event_log_path is not None:
            p = self.event_log_path
            if not p.startswith("/") or p.endswith("/") or "\x00" in p or posixpath.normpath(p) != p:
                v.add(f"{path}.eventLogPath", f"{p!r} must be an absolute, normalised file path, e.g. "
                                              "/var/log/kuma/health.log")
        if require_some(v, path, self, ("http", "tcp", "grpc"),
                        "configure at least one health checker: http, tcp or grpc"):
            for name in ("http", "tcp", "grpc"):
                checker = getattr(self, name)
                if checker is not None:
                    checker.check(v, f"{path}.{name}")


class MeshHealthCheckSpec(Spec):
    target_ref: TargetRef | None = None
    to: list[Item[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_KINDS, policy=POLICY,
                        listener_tags=True)
        # Kuma 2.14: the same kinds under every top level (a MeshGateway one selects nothing in kuma-vm yet)
        check_to(v, path, self.to, policy=POLICY, allowed=(MESH, MESH_SERVICE, *SELECTS_NOTHING_YET))


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshhealthchecks", singular="meshhealthcheck", scope=Scope.MESH,
    spec_cls=MeshHealthCheckSpec, flat=False, is_policy=True,
    description="Active HTTP, TCP and gRPC health checks of outbound destinations.",
))

# --- Envoy effect -----------------------------------------------------------------------------------

DEFAULT_INTERVAL, DEFAULT_TIMEOUT = 60_000_000_000, 15_000_000_000


def _enabled(section: dict[str, Any] | None) -> bool:
    return section is not None and not section.get("disabled")


def _header_options(mod: dict[str, Any] | None) -> list[base_pb2.HeaderValueOption]:
    out = []
    for field, action in (("set", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
                          ("add", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD)):
        for kv in (mod or {}).get(field) or ():
            out.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=kv["name"], value=kv["value"]),
                                                  append_action=action))
    return out


def health_check(conf: dict[str, Any], protocol: str) -> health_check_pb2.HealthCheck | None:
    hc = health_check_pb2.HealthCheck(
        interval=duration(parse_go_duration(conf["interval"]) if conf.get("interval") else DEFAULT_INTERVAL),
        timeout=duration(parse_go_duration(conf["timeout"]) if conf.get("timeout") else DEFAULT_TIMEOUT),
        unhealthy_threshold={"value": conf.get("unhealthyThreshold") or 5},
        healthy_threshold={"value": conf.get("healthyThreshold") or 1},
    )
    http, grpc, tcp = conf.get("http"), conf.get("grpc"), conf.get("tcp")
    if protocol in ("http", "http2") and _enabled(http):
        assert http is not None
        check = health_check_pb2.HealthCheck.HttpHealthCheck(path=http.get("path") or "/")
        check.request_headers_to_add.extend(_header_options(http.get("requestHeadersToAdd")))
        for status in http.get("expectedStatuses") or ():
            check.expected_statuses.append(range_pb2.Int64Range(start=status, end=status + 1))
        if protocol == "http2":
            check.codec_client_type = http_pb2.HTTP2
        hc.http_health_check.CopyFrom(check)
    elif protocol == "grpc" and _enabled(grpc):
        assert grpc is not None
        hc.grpc_health_check.CopyFrom(health_check_pb2.HealthCheck.GrpcHealthCheck(
            service_name=grpc.get("serviceName") or "", authority=grpc.get("authority") or ""))
    elif tcp is None or not tcp.get("disabled"):
        check = health_check_pb2.HealthCheck.TcpHealthCheck()
        if tcp and tcp.get("send"):
            check.send.binary = base64.b64decode(tcp["send"])
        for block in (tcp or {}).get("receive") or ():
            check.receive.append(health_check_pb2.HealthCheck.Payload(binary=base64.b64decode(block)))
        hc.tcp_health_check.CopyFrom(check)
    else:
        return None
    for field, name in (("initialJitter", "initial_jitter"), ("intervalJitter", "interval_jitter"),
                        ("unhealthyInterval", "unhealthy_interval"), ("noTrafficInterval", "no_traffic_interval")):
        if conf.get(field):
            getattr(hc, name).CopyFrom(duration(parse_go_duration(conf[field])))
    if conf.get("intervalJitterPercent") is not None:
        hc.interval_jitter_percent = conf["intervalJitterPercent"]
    if conf.get("reuseConnection") is not None:
        hc.reuse_connection.value = conf["reuseConnection"]
    if conf.get("alwaysLogHealthCheckFailures") is not None:
        hc.always_log_health_check_failures = conf["alwaysLogHealthCheckFailures"]
    # `eventLogPath` is not rendered: Envoy opens the file when it loads the cluster and rejects the whole
    # CDS update if the directory is missing on the proxy's host, which the control plane cannot know.
    return hc


class HealthCheckPlugin(PolicyPlugin):
    policy_type = POLICY
    order = 60

    def cluster_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return self.to_conf_key(ctx, service)

    def apply_outbound_cluster(self, ctx: ProxyContext, service: str, cluster: cluster_pb2.Cluster,
                               key: Hashable) -> None:
        assert isinstance(key, str)
        conf = json.loads(key)
        hc = health_check(conf, ctx.topology.protocol(service))
        if hc is not None:
            del cluster.health_checks[:]
            cluster.health_checks.append(hc)
        if conf.get("healthyPanicThreshold") is not None:
            cluster.common_lb_config.healthy_panic_threshold.value = float(
                parse_decimal(conf["healthyPanicThreshold"]) or 0)
        if conf.get("failTrafficOnPanic") is not None:
            cluster.common_lb_config.zone_aware_lb_config.fail_traffic_on_panic = conf["failTrafficOnPanic"]


PLUGIN = register_plugin(HealthCheckPlugin())
