"""MeshMetric: which Envoy stats a dataplane publishes, and where Prometheus scrapes them.

Kuma's YAML (`kuma.io/v1alpha1`, Kuma 2.9): a top-level targetRef (Mesh, MeshSubset, MeshService,
MeshServiceSubset, Dataplane) and one `default`:

    default:
      sidecar:
        includeUnused: false          # Envoy stats never updated are left out (Envoy's `usedonly`)
        profiles:
          appendProfiles: [{name: All|Basic|None}]
          exclude: [{type: Regex|Prefix|Exact|Contains, match: ...}]
          include: [...]              # include wins over exclude and the profiles
      applications:                   # kuma-dp scrapes these and serves them with Envoy's (Kuma's hijacker)
        - {name: app, port: 8888, path: /metrics/prometheus, address: 127.0.0.1}
      backends:
        - type: Prometheus
          prometheus: {clientId: ..., port: 5670, path: /metrics, tls: {mode: Disabled}}

Policies that select a dataplane merge in Kuma's precedence order (JSON merge patch: `backends` and the
lists are replaced whole, objects merge key by key).

What each side does with the merged conf:

- kuma-dp (agent/metrics.py) fetches it from the dp-server (`/kuma.vm.dp.v1.Metrics/Get`, see
  `controlplane/mads/dp_config.py`), serves Envoy's stats filtered as the profiles say, plus its own
  `kuma_dp_*` series, on every Prometheus backend's port and path, with `kuma_io_service`, `kuma_io_zone`
  and `mesh` labels on Envoy's series, and each application's own metrics (`applications`: fetched from
  `http://ADDRESS:PORT/PATH` on every scrape, unchanged, as Kuma's kuma-dp does; `path` defaults to Kuma's
  `/metrics/prometheus`, `address` to 127.0.0.1, the application beside kuma-dp);
- the control plane's MADS (controlplane/mads/) lists that port and path for Prometheus' `kuma_sd_configs`.

OpenTelemetry backend (`openTelemetry: {endpoint: host:port, refreshInterval: 1m}`): kuma-dp pushes the same
metrics over OTLP/gRPC every refreshInterval (agent/metrics_otel.py; Envoy pushes stats only from a bootstrap
stats sink, which xDS cannot change, so Kuma has kuma-dp do it too). Not implemented yet, refused with "not
supported by kuma-vm yet: FIELD": Prometheus `tls` mode `ActiveMTLSBackend`. `ProvidedTLS`: kuma-dp serves the backend
over TLS with the certificate and key it is given (KUMA_DATAPLANE_RUNTIME_METRICS_CERT_PATH / _KEY_PATH) and
MADS gives Prometheus the `https` scheme.
"""

from __future__ import annotations

from typing import Any

from controlplane.resources.base import Resource, ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations
from controlplane.resources.fields import check_address
from controlplane.xds.generate.targeting import (
    TOP_LEVEL_KINDS,
    TargetRef,
    check_top_level,
    merge_confs,
)

from ._checks import check_duration, check_regex, check_type_blocks, parse_go_duration, seen_before
from ._collectors import check_endpoint

POLICY = "MeshMetric"
DEFAULT_PORT = 5670  # Kuma's default Prometheus backend port
DEFAULT_PATH = "/metrics"
MIN_REFRESH_NS = 1_000_000_000
PROFILES = ("All", "Basic", "None")
MATCH_TYPES = ("Regex", "Prefix", "Exact", "Contains")


def not_supported(field: str) -> str:
    return f"not supported by kuma-vm yet: {field} (remove it)"


class Profile(Spec):
    name: str

    def check(self, v: Violations, path: str) -> None:
        if self.name not in PROFILES:
            v.add(f"{path}.name", f"unknown profile {self.name!r}: use one of {', '.join(PROFILES)}")


class MetricMatch(Spec):
    type: str
    match: str

    def check(self, v: Violations, path: str) -> None:
        if self.type not in MATCH_TYPES:
            v.add(f"{path}.type", f"unknown match type {self.type!r}: use one of {', '.join(MATCH_TYPES)}")
        if not self.match:
            v.add(f"{path}.match", "cannot be empty: name the metrics to match")
        elif self.type == "Regex":
            # RE2 as in Kuma; check_regex parses with Python's re, which kuma-dp matches with
            check_regex(v, f"{path}.match", self.match)


class Profiles(Spec):
    append_profiles: list[Profile] | None = None
    exclude: list[MetricMatch] | None = None
    include: list[MetricMatch] | None = None

    def check(self, v: Violations, path: str) -> None:
        for i, p in enumerate(self.append_profiles or ()):
            p.check(v, f"{path}.appendProfiles[{i}]")
        for field in ("exclude", "include"):
            for i, m in enumerate(getattr(self, field) or ()):
                m.check(v, f"{path}.{field}[{i}]")


class Sidecar(Spec):
    include_unused: bool | None = None
    profiles: Profiles | None = None
    # Kuma 2.6's deprecated `regex`/`usedOnly` are not accepted: profiles say the same


class PrometheusTls(Spec):
    mode: str = "Disabled"

    def check(self, v: Violations, path: str) -> None:
        if self.mode == "ActiveMTLSBackend":
            v.add(f"{path}.mode", not_supported(f"tls mode {self.mode}") + ": use ProvidedTLS or Disabled")
        elif self.mode not in ("Disabled", "ProvidedTLS"):
            v.add(f"{path}.mode", f"unknown TLS mode {self.mode!r}: use Disabled or ProvidedTLS (ActiveMTLSBackend "
                                  "is not supported by kuma-vm yet)")


class PrometheusBackend(Spec):
    client_id: str | None = None
    port: int | None = None
    path: str | None = None
    tls: PrometheusTls | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            v.add(f"{path}.port", f"{self.port} is not a port: use 1-65535 (Kuma's default is {DEFAULT_PORT})")
        if self.path is not None and (not self.path.startswith("/") or any(c in self.path for c in " ?#")):
            v.add(f"{path}.path", f"{self.path!r} is not an HTTP path: start it with '/', no spaces, '?' or '#'")
        if self.tls is not None:
            self.tls.check(v, f"{path}.tls")


class OpenTelemetryBackend(Spec):
    endpoint: str
    refresh_interval: str | None = None

    def check(self, v: Violations, path: str) -> None:
        if "://" in self.endpoint:
            v.add(f"{path}.endpoint", "give host:port: kuma-dp pushes metrics to an OpenTelemetry collector over "
                                      "OTLP/gRPC (e.g. otel-collector:4317), not to a URL")
        else:
            check_endpoint(v, f"{path}.endpoint", self.endpoint, "otel-collector:4317")
        if self.refresh_interval is not None:
            ns = check_duration(v, f"{path}.refreshInterval", self.refresh_interval, allow_zero=False)
            if ns is not None and ns < MIN_REFRESH_NS:
                v.add(f"{path}.refreshInterval", f"{self.refresh_interval} is too often: push at most every second")


class Backend(Spec):
    type: str
    prometheus: PrometheusBackend | None = None
    open_telemetry: OpenTelemetryBackend | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.type not in ("Prometheus", "OpenTelemetry"):
            v.add(f"{path}.type", f"unknown backend type {self.type!r}: use Prometheus or OpenTelemetry")
        check_type_blocks(v, path, self.type, {
            "Prometheus": ("prometheus", self.prometheus, "give at least {} (port 5670, path /metrics)"),
            "OpenTelemetry": ("openTelemetry", self.open_telemetry, "give at least 'endpoint'")})


DEFAULT_APPLICATION_PATH = "/metrics/prometheus"  # Kuma's default
DEFAULT_APPLICATION_ADDRESS = "127.0.0.1"


class Application(Spec):
    name: str | None = None
    path: str | None = None
    address: str | None = None
    port: int

    def check(self, v: Violations, path: str) -> None:
        if not 1 <= self.port <= 65535:
            v.add(f"{path}.port", f"{self.port} is not a port: give the port the application serves metrics on")
        if self.path is not None and (not self.path.startswith("/") or any(c in self.path for c in " ?#")):
            v.add(f"{path}.path", f"{self.path!r} is not an HTTP path: start it with '/', no spaces, '?' or '#'")
        if self.address is not None:
            check_address(v, f"{path}.address", self.address)


class Conf(Spec):
    sidecar: Sidecar | None = None
    applications: list[Application] | None = None
    backends: list[Backend] | None = None

    def check(self, v: Violations, path: str) -> None:
        if self.sidecar is not None and self.sidecar.profiles is not None:
            self.sidecar.profiles.check(v, f"{path}.sidecar.profiles")
        apps: dict[tuple[str, int, str], int] = {}
        for i, app in enumerate(self.applications or ()):
            app.check(v, f"{path}.applications[{i}]")
            endpoint = (app.address or DEFAULT_APPLICATION_ADDRESS, app.port, app.path or DEFAULT_APPLICATION_PATH)
            if (earlier := seen_before(apps, endpoint, i)) is not None:
                v.add(f"{path}.applications[{i}]", f"scrapes the same endpoint as applications[{earlier}]: "
                                                   "remove one")
        seen: dict[tuple[str | None, int], int] = {}
        for i, b in enumerate(self.backends or ()):
            b.check(v, f"{path}.backends[{i}]")
            if b.prometheus is not None:
                key = (b.prometheus.client_id, b.prometheus.port or DEFAULT_PORT)
                if (earlier := seen_before(seen, key, i)) is not None:
                    v.add(f"{path}.backends[{i}].prometheus", f"same clientId and port as backends[{earlier}]: "
                                                              "give each Prometheus backend its own clientId")


class MeshMetricSpec(Spec):
    target_ref: TargetRef | None = None
    default: Conf | None = None

    def check(self, v: Violations, path: str) -> None:
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_LEVEL_KINDS, policy=POLICY)
        if self.default is None:
            v.add(f"{path}.default", "required: say which metrics to publish (sidecar) and where (backends)")
        else:
            self.default.check(v, f"{path}.default")


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshmetrics", singular="meshmetric", scope=Scope.MESH, spec_cls=MeshMetricSpec,
    flat=False, is_policy=True,
    description="Which Envoy stats a dataplane publishes and where Prometheus scrapes them.",
))


# --- the merged conf of one dataplane (read by the dp-server for kuma-dp and by MADS) ----------------

def merged_conf(policies: list[Resource]) -> dict[str, Any] | None:
    """The `default`s of the MeshMetrics selecting a dataplane (lowest precedence first), merged."""
    return merge_confs(p.spec.default.to_wire() for p in policies
                       if isinstance(p.spec, MeshMetricSpec) and p.spec.default is not None)


def opentelemetry_backends(conf: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The OpenTelemetry backends of a merged conf: {endpoint, interval (seconds)} (Kuma's 1m by default)."""
    out = []
    for backend in (conf or {}).get("backends") or ():
        otel = backend.get("openTelemetry")
        if backend.get("type") != "OpenTelemetry" or not otel:
            continue
        interval = parse_go_duration(otel["refreshInterval"]) / 1e9 if otel.get("refreshInterval") else 60.0
        out.append({"endpoint": otel["endpoint"], "interval": interval})
    return out


def prometheus_backends(conf: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The Prometheus backends of a merged conf, with Kuma's defaults filled in (port 5670, /metrics)."""
    out = []
    for backend in (conf or {}).get("backends") or ():
        if backend.get("type") != "Prometheus":
            continue
        prom = dict(backend.get("prometheus") or {})
        prom.setdefault("port", DEFAULT_PORT)
        prom.setdefault("path", DEFAULT_PATH)
        out.append(prom)
    return out

