"""MeshAccessLog: Envoy access logs for inbound (`from[]`) and outbound (`to[]`) traffic, HTTP and TCP.

`default.backends` lists where each request (HTTP) or connection (TCP) is logged:

- `type: File`, `file.path` (absolute; Envoy appends to it, creating it) and an optional `file.format`;
- `type: Tcp`, `tcp.address` (host:port) and an optional `tcp.format`: as in Kuma, Envoy writes
  `{address, message}` JSON lines to the dataplane's pipe (`kuma_shared.access_logs`) and kuma-dp sends each
  message as a line to the address (agent/access_logs.py); a dataplane whose Envoy runs without kuma-dp
  gets those lines in a plain file at that path instead;
- `type: OpenTelemetry`, `openTelemetry.endpoint` (`host:port` of an OTLP/gRPC collector; 4317 when it names no
  port), an optional `body` (OTLP's AnyValue in its JSON form: `stringValue`, `kvlistValue`, ...; Kuma's default
  line as a `stringValue` when not given; Envoy formats only `stringValue`, `kvlistValue` and `arrayValue`, so
  Kuma's `boolValue`, `intValue`, `doubleValue` and `bytesValue` are refused) and `attributes`
  (`[{key, value}]`): Envoy's `envoy.access_loggers.open_telemetry` sends each record to the collector
  through a cluster of the proxy's own, `meshaccesslog:opentelemetry:<host>:<port>`. Placeholders work in the
  body's strings and the attributes' values.

`format` is `type: Plain` with `plain: "<Envoy format string>"`, or `type: Json` with `json: [{key, value}]`
(and `omitEmptyValues`). Without a format, Kuma's default line for HTTP or TCP traffic is written. Envoy's
command operators (`%START_TIME%`, `%REQ(X)%`...) work as in Envoy; Kuma's placeholders are filled in by
kuma-vm: `%KUMA_MESH%`, `%KUMA_SOURCE_SERVICE%`, `%KUMA_DESTINATION_SERVICE%`,
`%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%` (and the deprecated `%KUMA_SOURCE_ADDRESS%`, `<ip>:0`),
`%KUMA_TRAFFIC_DIRECTION%` (INBOUND/OUTBOUND). Operators are checked at the API (`_access_log_format`): an
unknown one, a `%` that starts none, or arguments where an operator takes none are refused naming the field and
the operator; a JSON format's `key` and `value` cannot be empty and, as in Kuma, must form a JSON object when
written as `{"key": "value"}`. As in Kuma, on an inbound the source service is `*` and the
source address is the dataplane's own. On an outbound the source address is Envoy's
`%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%` (the address the proxy's connection leaves from: the dataplane's
address on a host with one), so that replicas of a service still share one outbound listener; the source
service is the proxy's own (its first inbound's), which does split the sharing between services. Any other
`%KUMA_...%` placeholder is refused.

Positions: top-level Mesh, MeshSubset, MeshService, MeshServiceSubset or Dataplane; `from[]` kind Mesh
(an inbound's log covers every client, as in Kuma); `to[]` Mesh or MeshService (and Kuma's kinds kuma-vm
has no resource for, which select nothing); Kuma 2.10+'s `rules[]` (`rules: [{default: {backends: [...]}}]`),
inbound traffic from every client, exactly as a `from` entry of kind Mesh. A policy with `rules` cannot also
have `from` or `to`. A rule's `matches` (Kuma 2.13+: `[{spiffeID: {type: Exact|Prefix, value}}]`, see
`_rule_matches`) log only the traffic of the callers any of them selects: as in Kuma 2.14, each match is a rule of
its own whose loggers carry Envoy's CEL filter on the connection's peer certificate (`connection.
uri_san_peer_certificate`, so TCP inbounds too; without mTLS nothing is logged), and rules with matches come
first (Exact, then Prefix); Kuma's `sni` matcher is refused.

Merging follows Kuma 2.14: on an outbound the most specific `to` entry's `backends` replace the others'; on an
inbound every `from` entry and rule logs to its own backends (Kuma treats MeshAccessLog's `from` entries as
rules and fans each request out to every rule's backends), so the lists add up, less specific policies first
(an empty list adds nothing: it cannot switch a less specific policy's log off).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from functools import partial
from typing import Any, Literal

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2, json_format, struct_pb2
from opentelemetry.proto.common.v1 import common_pb2
from pydantic import Field

from controlplane.resources.base import Resource, ResourceType, Scope, Spec, register
from controlplane.resources.dataplane import Inbound, identifying_service
from controlplane.resources.errors import Violations
from controlplane.resources.fields import check_address
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import HCM_FILTER, TCP_PROXY_FILTER, pack, update_filters
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.rules import Entry
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_SERVICE,
    SELECTS_NOTHING_YET,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    check_top_level,
)
from controlplane.xds.resources import XdsResource
from kuma_shared.access_logs import access_log_pipe

from ._access_log_format import check_format_text, interpolate
from ._checks import check_from, check_rules, check_to, check_type_blocks, rules_as_from
from ._collectors import check_endpoint, collector_cluster, endpoint_of
from ._inbound_view import origins, register_inbound_view
from ._rule_matches import Caller, MatchingInboundRule, check_rule_matches, match_key

POLICY = "MeshAccessLog"
FILE_LOGGER = "envoy.access_loggers.file"

# Kuma's defaults (pkg/plugins/policies/meshaccesslog/plugin/xds/configurer.go).
DEFAULT_TCP_FORMAT = ("[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%"
                      "(%KUMA_SOURCE_SERVICE%)->%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, "
                      "sent %BYTES_SENT% bytes, received: %BYTES_RECEIVED% bytes")
DEFAULT_HTTP_FORMAT = ('[%START_TIME%] %KUMA_MESH% "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
                       "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
                       '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
                       '"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" '
                       '"%KUMA_SOURCE_SERVICE%" "%KUMA_DESTINATION_SERVICE%" "%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%" '
                       '"%UPSTREAM_HOST%"')
OTEL_LOGGER = "envoy.access_loggers.open_telemetry"
OTEL_CLUSTER_PREFIX = "meshaccesslog:opentelemetry:"
OUTBOUND_SOURCE_ADDRESS = "%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"


class JsonValue(Spec):
    key: str
    value: str


class Format(Spec):
    type: Literal["Plain", "Json"]
    plain: str | None = None
    json_: list[JsonValue] | None = Field(default=None, alias="json")
    omit_empty_values: bool | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.type == "Plain":
            if self.json_ is not None:
                v.add(f"{path}.json", "cannot be set with type Plain: use type Json, or 'plain'")
            if not self.plain:
                v.add(f"{path}.plain", "must be set with type Plain: give the line's format, e.g. "
                                       "'[%START_TIME%] %KUMA_MESH% %UPSTREAM_HOST%'")
            else:
                check_format_text(v, f"{path}.plain", self.plain)
        else:
            if self.plain is not None:
                v.add(f"{path}.plain", "cannot be set with type Json: use type Plain, or 'json'")
            if not self.json_:
                v.add(f"{path}.json", "must list at least one {key, value} with type Json")
            seen: set[str] = set()
            for i, kv in enumerate(self.json_ or ()):
                if not kv.key:
                    v.add(f"{path}.json[{i}].key", "cannot be empty")
                elif any(c in '"\\' or ord(c) < 0x20 for c in kv.key):  # Kuma writes keys into JSON text unescaped
                    v.add(f"{path}.json[{i}].key", f"{kv.key!r} would not make a valid JSON object: a key cannot "
                                                   "hold '\"', '\\' or control characters")
                elif kv.key in seen:
                    v.add(f"{path}.json[{i}].key", f"{kv.key!r} is listed twice: keep one")
                seen.add(kv.key)
                if not kv.value:
                    v.add(f"{path}.json[{i}].value", "cannot be empty: give the value's format, e.g. %START_TIME%")
                elif not _json_string(kv.value):  # Kuma checks {"key": "value"} is JSON: the value is written raw too
                    v.add(f"{path}.json[{i}].value", f"{kv.value!r} would not make a valid JSON object: remove the "
                                                     "double quotes and backslashes (or escape them as \\\" and \\\\)")
                check_format_text(v, f"{path}.json[{i}].value", kv.value)


def _json_string(value: str) -> bool:
    try:
        json.loads(f'"{value}"')
    except ValueError:
        return False
    return True


class FileBackend(Spec):
    path: str
    format: Format | None = None

    def check(self, v: Violations, path: str) -> None:
        if not self.path.startswith("/"):
            v.add(f"{path}.path", f"{self.path!r} is not an absolute path: give one, e.g. /var/log/kuma/access.log "
                                  "(Envoy would resolve a relative one against its working directory)")
        elif "\x00" in self.path:
            v.add(f"{path}.path", "cannot contain a NUL character")
        if self.format is not None:
            self.format.check(v, f"{path}.format")


class TcpBackend(Spec):
    address: str
    format: Format | None = None

    def check(self, v: Violations, path: str) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            v.add(f"{path}.address", f"{self.address!r} is not host:port: give e.g. 127.0.0.1:5000 or "
                                     "logstash.internal:5000")
        else:
            check_address(v, f"{path}.address", host.strip("[]"))
        if self.format is not None:
            self.format.check(v, f"{path}.format")


class OtelBackend(Spec):
    endpoint: str
    body: Any = None
    attributes: list[JsonValue] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_endpoint(v, f"{path}.endpoint", self.endpoint, "otel-collector:4317")
        if "://" in self.endpoint:
            v.add(f"{path}.endpoint", "give host:port: Envoy sends access logs to an OpenTelemetry collector over "
                                      "gRPC (OTLP/gRPC, e.g. otel-collector:4317), not to a URL")
        if self.body is not None:
            try:
                json_format.ParseDict(self.body, common_pb2.AnyValue())
            except (json_format.ParseError, TypeError, ValueError) as e:
                v.add(f"{path}.body", f"is not an OpenTelemetry AnyValue ({e}): give e.g. "
                                      "{stringValue: '%START_TIME% %KUMA_MESH%'} or {kvlistValue: {values: [...]}}")
            else:
                unsupported = _unsupported_body_values(self.body)
                if unsupported:
                    v.add(f"{path}.body", f"{', '.join(unsupported)} cannot be sent: Envoy's OpenTelemetry access "
                                          "logger formats only stringValue, kvlistValue and arrayValue (use a "
                                          "stringValue)")
                for text in _body_strings(self.body):
                    check_format_text(v, f"{path}.body", text)
        seen: set[str] = set()
        for i, kv in enumerate(self.attributes or ()):
            if not kv.key:
                v.add(f"{path}.attributes[{i}].key", "cannot be empty")
            elif kv.key in seen:
                v.add(f"{path}.attributes[{i}].key", f"{kv.key!r} is listed twice: keep one")
            seen.add(kv.key)
            check_format_text(v, f"{path}.attributes[{i}].value", kv.value)


def _body_strings(body: Any) -> list[str]:
    """Every `stringValue` of an AnyValue's JSON form (where placeholders go)."""
    out: list[str] = []
    if isinstance(body, dict):
        for key, value in body.items():
            if key == "stringValue" and isinstance(value, str):
                out.append(value)
            else:
                out.extend(_body_strings(value))
    elif isinstance(body, list):
        for item in body:
            out.extend(_body_strings(item))
    return out


def _unsupported_body_values(body: Any) -> list[str]:
    """The AnyValue kinds in a body that Envoy's formatter refuses (it NACKs the listener)."""
    found: list[str] = []
    if isinstance(body, dict):
        for key, value in body.items():
            if key in ("boolValue", "intValue", "doubleValue", "bytesValue") and key not in found:
                found.append(key)
            for kind in _unsupported_body_values(value):
                if kind not in found:
                    found.append(kind)
    elif isinstance(body, list):
        for item in body:
            for kind in _unsupported_body_values(item):
                if kind not in found:
                    found.append(kind)
    return found


def _interpolate_body(body: Any, values: dict[str, str]) -> Any:
    if isinstance(body, dict):
        return {k: interpolate(x, values) if k == "stringValue" and isinstance(x, str) else _interpolate_body(x, values)
                for k, x in body.items()}
    if isinstance(body, list):
        return [_interpolate_body(x, values) for x in body]
    return body


class Backend(Spec):
    type: Literal["Tcp", "File", "OpenTelemetry"]
    tcp: TcpBackend | None = None
    file: FileBackend | None = None
    open_telemetry: OtelBackend | None = None

    def check(self, v: Violations, path: str) -> None:
        check_type_blocks(v, path, self.type, {
            "Tcp": ("tcp", self.tcp, "give at least 'address'"),
            "File": ("file", self.file, "give at least 'path'"),
            "OpenTelemetry": ("openTelemetry", self.open_telemetry, "give at least 'endpoint'")})


class Conf(Spec):
    backends: list[Backend] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.backends is None:  # Kuma 2.14 too ('must be defined')
            v.add(f"{path}.backends", "must be defined: list the backends to log to (an empty list logs nothing)")
        for i, backend in enumerate(self.backends or ()):
            backend.check(v, f"{path}.backends[{i}]")


class MeshAccessLogSpec(Spec):
    target_ref: TargetRef | None = None
    from_: list[Item[Conf]] | None = Field(default=None, alias="from")
    to: list[Item[Conf]] | None = None
    rules: list[MatchingInboundRule[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_LEVEL_KINDS, policy=POLICY,
                        inbound=bool(self.from_ or self.rules))
        if not self.from_ and not self.to and not self.rules:
            v.add(path, "at least one of 'from', 'to' or 'rules' must have an item")
        check_from(v, path, self.from_, policy=POLICY, allowed=(MESH,))
        check_to(v, path, self.to, policy=POLICY, allowed=(MESH, MESH_SERVICE, *SELECTS_NOTHING_YET))
        check_rules(v, path, self.rules, other=[*(self.from_ or ()), *(self.to or ())])
        check_rule_matches(v, path, self.rules)

    def inbound_items(self) -> list[Item[Conf]]:
        """`from` entries and rules (with or without matches: see `inbound_logs`), an entry's index its rule's."""
        return [*(self.from_ or ()), *rules_as_from(self.rules)]


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshaccesslogs", singular="meshaccesslog", scope=Scope.MESH,
    spec_cls=MeshAccessLogSpec, flat=False, is_policy=True,
    description="Writes an access log line per request or connection, inbound and outbound.",
))

# --- Envoy effect -----------------------------------------------------------------------------------


def access_logs(backends: list[dict[str, Any]], default_format: str, values: dict[str, str],
                pipe: str) -> list[accesslog_pb2.AccessLog]:
    """One file logger per backend: File writes the line to its path; Tcp writes {address, message} JSON to
    the dataplane's pipe, which kuma-dp forwards to the address (agent/access_logs.py)."""
    out = []
    for backend in backends:
        kind = backend.get("type")
        if kind == "OpenTelemetry":
            out.append(otel_access_log(backend["openTelemetry"], default_format, values))
            continue
        target = backend.get("file") if kind == "File" else backend.get("tcp") if kind == "Tcp" else None
        if target is None:
            continue  # refused at validation; never reached
        fmt = target.get("format") or {}
        log_format = substitution_format_string_pb2.SubstitutionFormatString()
        if fmt.get("type") == "Json":
            message = struct_pb2.Struct()
            for kv in fmt["json"]:
                message.fields[kv["key"]].string_value = interpolate(kv["value"], values)
            if kind == "Tcp":
                log_format.json_format.fields["address"].string_value = target["address"]
                log_format.json_format.fields["message"].struct_value.CopyFrom(message)
            else:
                log_format.json_format.CopyFrom(message)
        else:
            text = interpolate(fmt.get("plain") or default_format, values)
            if kind == "Tcp":
                log_format.json_format.fields["address"].string_value = target["address"]
                log_format.json_format.fields["message"].string_value = text
            else:
                log_format.text_format_source.CopyFrom(base_pb2.DataSource(inline_string=text + "\n"))
        if fmt.get("omitEmptyValues"):
            log_format.omit_empty_values = True
        config = file_pb2.FileAccessLog(path=target["path"] if kind == "File" else pipe, log_format=log_format)
        typed = any_pb2.Any()
        typed.Pack(config, deterministic=True)  # a JSON format is a map: same content, same bytes, same hash
        out.append(accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=typed))
    return out


def otel_cluster_name(endpoint: str) -> str:
    return OTEL_CLUSTER_PREFIX + endpoint_of(endpoint).authority


def otel_access_log(otel: dict[str, Any], default_format: str, values: dict[str, str]) -> accesslog_pb2.AccessLog:
    cluster = otel_cluster_name(otel["endpoint"])
    config = logs_service_pb2.OpenTelemetryAccessLogConfig(common_config=als_pb2.CommonGrpcAccessLogConfig(
        log_name=cluster, transport_api_version=config_source_pb2.V3,
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster))))
    body = otel.get("body")
    json_format.ParseDict(_interpolate_body(body, values) if body is not None
                          else {"stringValue": interpolate(default_format, values)}, config.body)
    for kv in otel.get("attributes") or ():
        config.attributes.values.append(common_pb2.KeyValue(
            key=kv["key"], value=common_pb2.AnyValue(string_value=interpolate(kv["value"], values))))
    typed = any_pb2.Any()
    typed.Pack(config, deterministic=True)
    return accesslog_pb2.AccessLog(name=OTEL_LOGGER, typed_config=typed)


def otel_endpoints(policies: Iterable[Resource]) -> list[str]:
    """The OpenTelemetry endpoints of these policies' backends (each needs a cluster), in a fixed order."""
    found = {b.open_telemetry.endpoint for p in policies
             for item in [*p.spec.inbound_items(), *(p.spec.to or ())]  # type: ignore[attr-defined]
             for b in item.default.backends or () if b.open_telemetry is not None}
    return sorted(found)


def add_access_logs(listener: listener_pb2.Listener, backends: list[dict[str, Any]],
                    values: dict[str, str], pipe: str, only: accesslog_pb2.AccessLogFilter | None = None) -> None:
    """Loggers for the backends on the listener's connection manager or TCP proxy; `only`: which traffic."""
    def logs(default_format: str) -> list[accesslog_pb2.AccessLog]:
        out = access_logs(backends, default_format, values, pipe)
        for log in out if only is not None else ():
            log.filter.CopyFrom(only)
        return out

    def edit_manager(manager: hcm_pb2.HttpConnectionManager) -> None:
        manager.access_log.extend(logs(DEFAULT_HTTP_FORMAT))

    def edit_proxy(proxy: tcp_proxy_pb2.TcpProxy) -> None:
        proxy.access_log.extend(logs(DEFAULT_TCP_FORMAT))

    update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager, edit_manager)
    update_filters(listener, TCP_PROXY_FILTER, tcp_proxy_pb2.TcpProxy, edit_proxy)


def _values(mesh: str, source: str, destination: str, address: str, direction: str) -> dict[str, str]:
    return {"KUMA_MESH": mesh, "KUMA_SOURCE_SERVICE": source, "KUMA_DESTINATION_SERVICE": destination,
            "KUMA_SOURCE_ADDRESS": f"{address}:0", "KUMA_SOURCE_ADDRESS_WITHOUT_PORT": address,
            "KUMA_TRAFFIC_DIRECTION": direction}


def _pipe(ctx: ProxyContext, conf: dict[str, Any]) -> str:
    """The dataplane's access log pipe when a Tcp backend needs it ('' otherwise, so that proxies without
    one keep sharing resources)."""
    if any(b.get("type") == "Tcp" for b in conf.get("backends") or ()):
        return access_log_pipe(ctx.dataplane.meta.name, ctx.mesh)
    return ""


# An inbound's logs: (the callers a group logs, None for every caller; its backends), in Envoy's order.
InboundLogs = list[tuple[Caller | None, list[dict[str, Any]]]]


def _specificity(caller: Caller | None) -> int:
    """Kuma's order of inbound rules (SortRules): Exact spiffeID matches, then Prefix, then rules for everyone."""
    return 0 if caller is None else 2 if caller[0] == "Exact" else 1


def inbound_logs(entries: Sequence[Entry], matched: Sequence[Resource]) -> InboundLogs:
    """Kuma 2.14 (MeshAccessLog is `is_from_as_rules`): every `from` entry and rule selecting an inbound logs to
    its own backends, so the lists add up (policies in precedence order, entries in written order) instead of
    the most specific replacing the others, as they do for `to`. A rule with matches is one rule per match (Kuma
    splits them), each logging only its callers' traffic; rules with matches come first, Exact before Prefix."""
    by_name = {p.meta.name: p for p in matched}
    groups: InboundLogs = []
    for e in entries:
        backends = list(e.conf.get("backends") or ())
        rules = getattr(by_name[e.policy].spec, "rules", None) if e.policy in by_name else None
        callers = match_key(rules[e.index]) if rules else None  # a policy with rules has no `from`
        groups.extend([(c, backends) for c in callers] if callers else [(None, backends)])
    ordered = sorted(groups, key=lambda g: _specificity(g[0]), reverse=True)  # stable, also reversed
    return [g for g in ordered if g[1]]


def inbound_backends(entries: Sequence[Entry], matched: Sequence[Resource]) -> list[dict[str, Any]]:
    return [backend for _caller, backends in inbound_logs(entries, matched) for backend in backends]


def _inbound_view(entries: Sequence[Entry], matched: Sequence[Resource]) -> dict[str, Any]:
    view: dict[str, Any] = {"conf": {"backends": inbound_backends(entries, matched)}, "origins": origins(entries)}
    groups = inbound_logs(entries, matched)
    if any(caller is not None for caller, _ in groups):
        view["clients"] = [{"clients": "every client" if caller is None else
                            [{"spiffeID": {"type": caller[0], "value": caller[1]}}], "conf": {"backends": backends}}
                           for caller, backends in groups]
    return view


def caller_filter(caller: Caller) -> accesslog_pb2.AccessLogFilter:
    """Kuma's access log filter for a spiffeID match: a CEL expression on the caller's certificate's URI SAN
    (the connection's, so it holds for TCP inbounds too; without mTLS there is none and nothing is logged)."""
    kind, value = caller
    quoted = json.dumps(value)  # a validated SPIFFE ID: no character CEL would read differently from JSON
    expression = (f"connection.uri_san_peer_certificate == {quoted}" if kind == "Exact"
                  else f"connection.uri_san_peer_certificate.startsWith({quoted})")
    return accesslog_pb2.AccessLogFilter(extension_filter=accesslog_pb2.ExtensionFilter(
        name=CEL_FILTER, typed_config=pack(cel_pb2.ExpressionFilter(expression=expression))))


register_inbound_view(POLICY, _inbound_view)


def _own_service(ctx: ProxyContext) -> str:
    """The proxy's service as Kuma's source service (IdentifyingName): its first inbound's kuma.io/service; an
    outbound-only proxy's kuma.io/workload label, else "unknown"."""
    return identifying_service(ctx.dataplane)


class AccessLogPlugin(PolicyPlugin):
    policy_type = POLICY
    order = 90

    # --- inbound: the inbound's service, its dataplane's address, every client ('*') ---

    def inbound_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        groups = inbound_logs(ctx.rules.from_entries(POLICY, ctx.dataplane, inbound),
                              ctx.rules.matched(POLICY, ctx.dataplane))
        if not groups:
            return None
        conf = {"backends": [b for _caller, backends in groups for b in backends]}
        return (json.dumps(groups, sort_keys=True, separators=(",", ":")), ctx.mesh, inbound.service,
                ctx.spec.networking.address, _pipe(ctx, conf))

    def apply_inbound(self, ctx: ProxyContext, inbound: Inbound, listener: listener_pb2.Listener,
                      key: Hashable) -> None:
        assert isinstance(key, tuple)
        groups, mesh, service, address, pipe = key
        values = _values(mesh, "*", service, address, "INBOUND")
        for caller, backends in json.loads(groups):
            add_access_logs(listener, backends, values, pipe,
                            None if caller is None else caller_filter((caller[0], caller[1])))

    # --- outbound: the proxy's own service is part of the line, so it splits the sharing between services ---

    def outbound_source_key(self, ctx: ProxyContext) -> Hashable:
        matched = ctx.rules.matched(POLICY, ctx.dataplane)
        if not matched:
            return None
        tcp = any(b.type == "Tcp" for p in matched for item in getattr(p.spec, "to", None) or ()
                  for b in item.default.backends or ())
        return (_own_service(ctx), ctx.dataplane.meta.name if tcp else "")

    def listener_key(self, ctx: ProxyContext, service: str) -> Hashable:
        merged = ctx.rules.to_conf(POLICY, ctx.dataplane, service)
        if merged is None or not merged.data.get("backends"):
            return None
        return (merged.json, ctx.mesh, _own_service(ctx), _pipe(ctx, merged.data))

    def apply_outbound_listener(self, ctx: ProxyContext, service: str, listener: listener_pb2.Listener,
                                key: Hashable) -> None:
        assert isinstance(key, tuple)
        conf, mesh, source, pipe = key
        add_access_logs(listener, json.loads(conf)["backends"],
                        _values(mesh, source, service, OUTBOUND_SOURCE_ADDRESS, "OUTBOUND"), pipe)


    # --- the collectors' clusters ---

    def proxy_resources(self, ctx: ProxyContext) -> Sequence[tuple[Hashable, Callable[[], XdsResource]]]:
        matched = ctx.rules.matched(POLICY, ctx.dataplane)
        if not matched:
            return ()
        out: list[tuple[Hashable, Callable[[], XdsResource]]] = []
        for endpoint in otel_endpoints(matched):
            name, collector = otel_cluster_name(endpoint), endpoint_of(endpoint)
            out.append((("collector", name, collector, True),
                        partial(collector_cluster, name, collector, http2=True)))
        return out


PLUGIN = register_plugin(AccessLogPlugin())
