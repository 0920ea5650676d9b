"""Prometheus metrics: Envoy's `/stats/prometheus` merged with kuma-dp's own (Kuma's "metrics hijacker").

kuma-dp's own series (prefix `kuma_dp_`) say what Envoy cannot say about itself: whether Envoy is up, how
often kuma-dp restarted it, whether the dataplane is ready and connected, the bootstrap attempts, Envoy's
resident memory, plus `process_*` for kuma-dp itself. Served on the readiness port's `/metrics` (loopback)
and, with `--metrics-port`, on a listener of its own for a Prometheus elsewhere.

With a MeshMetric selecting the dataplane (`MetricsPolicy`, from the control plane: agent/metrics_watch.py),
Envoy's series are filtered as its `sidecar` says and labelled with the dataplane's service, zone and mesh,
then served on each Prometheus backend's port and path, followed by each of its `applications`' own metrics
(fetched from the application on every scrape and passed on unchanged, as Kuma's metrics hijacker does; an
application that does not answer leaves a comment saying so, and the rest is served). Filtering, as in
Kuma: a metric family is kept when an `include` matches it, else dropped when an `exclude` matches it, else
kept when an appended profile keeps it (`All`; `Basic`, the default when no profile is named; `None`).
Matching is on the Prometheus family name (`envoy_cluster_upstream_rq_total`); a Regex matches anywhere in
it, as Go's MatchString does in Kuma.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.envoy.admin import AdminClient, AdminError
from agent.readiness import DpState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Info

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger("kuma-dp.metrics")


class LazyCounter:
    """A counter that is a number until kuma-dp's registry exists, then the Prometheus counter it names."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self.pending = 0.0
        self.counter: Counter | None = None

    def inc(self, amount: float = 1.0) -> None:
        if self.counter is None:
            self.pending += amount
        else:
            self.counter.inc(amount)

    def attach(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter

        self.counter = Counter(self.name, self.documentation, registry=registry)
        if self.pending:
            self.counter.inc(self.pending)


class LazyInfo:
    """kuma-dp's info series: its labels until the registry exists, then the Prometheus Info."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self.labels: dict[str, str] | None = None
        self.metric: Info | None = None

    def info(self, labels: dict[str, str]) -> None:
        self.labels = labels
        if self.metric is not None:
            self.metric.info(labels)

    def attach(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Info

        self.metric = Info(self.name, self.documentation, registry=registry)
        if self.labels is not None:
            self.metric.info(self.labels)


class DpMetrics:
    """kuma-dp's own series. prometheus_client (~20 ms of imports) loads on the first scrape, not at start:
    what is counted before then (bootstrap attempts, the info labels) is kept and handed over."""

    def __init__(self, state: DpState) -> None:
        self.state = state
        self._registry: CollectorRegistry | None = None
        self.info = LazyInfo("kuma_dp", "kuma-dp build and the dataplane it runs")
        self.envoy_restarts = LazyCounter("kuma_dp_envoy_restarts", "Envoy restarts after an unexpected exit")
        self.bootstrap_attempts = LazyCounter("kuma_dp_bootstrap_attempts", "bootstrap calls to the control plane")
        self.cp_disconnects = LazyCounter("kuma_dp_control_plane_disconnects", "times Envoy lost its ADS stream")

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, disable_created_metrics

            disable_created_metrics()  # no `*_created` series: they double the output and nobody scrapes them here
            state = self.state
            r = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=r)
            self.info.attach(r)
            for counter in (self.envoy_restarts, self.bootstrap_attempts, self.cp_disconnects):
                counter.attach(r)
            Gauge("kuma_dp_envoy_up", "1 while the Envoy child process runs", registry=r).set_function(
                lambda: 1.0 if state.envoy_pid is not None else 0.0)
            Gauge("kuma_dp_ready", "1 while /ready answers 200", registry=r).set_function(
                lambda: 1.0 if state.ready()[0] else 0.0)
            Gauge("kuma_dp_control_plane_connected", "1 while Envoy's ADS stream is up", registry=r).set_function(
                lambda: 1.0 if state.cp_connected else 0.0)
            Gauge("kuma_dp_envoy_resident_memory_bytes", "Envoy's resident memory", registry=r).set_function(
                self._envoy_rss)
            self._registry = r
        return self._registry

    def _envoy_rss(self) -> float:
        import psutil

        pid = self.state.envoy_pid
        if pid is None:
            return 0.0
        try:
            return float(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return 0.0

    def own(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    async def merged(self, admin: AdminClient | None, policy: MetricsPolicy | None = None) -> bytes:
        """Envoy's series (filtered and labelled as `policy` says) followed by kuma-dp's; when Envoy cannot
        answer, kuma-dp's alone (and a comment)."""
        envoy = b""
        if admin is not None and self.state.envoy_pid is not None:
            try:
                r = await admin.get(policy.stats_path if policy else "/stats/prometheus", timeout=5.0)
                if r.status == 200 and policy is not None:
                    envoy = policy.apply(r.body)
                elif r.status == 200:
                    envoy = r.body if r.body.endswith(b"\n") or not r.body else r.body + b"\n"
                else:
                    envoy = f"# Envoy admin /stats/prometheus answered {r.status}\n".encode()
            except AdminError as e:
                envoy = f"# Envoy stats unavailable: {e}\n".encode()
        else:
            envoy = b"# Envoy is not running\n"
        apps = b""
        if policy is not None and policy.applications:
            apps = b"".join(await asyncio.gather(*(scrape(app) for app in policy.applications)))
        return envoy + apps + self.own()


# --- MeshMetric: which Envoy families are published, with which labels --------------------------------

# Kuma's Basic profile (kuma-dp's profiles.go): the golden signals, what Kuma's dashboards chart, and DNS stats.
# A family is kept when its name contains, starts with or equals one of these.
BASIC_CONTAINS = (
    "rq_time", "cx_length_ms", "cx_count", "_rq", "bytes", "timeout", "health_check", "lb_healthy_panic",
    "cx_destroy", "error", "fail", "reset", "eject", "overflow", "cancelled", "max_duration_reached", "no_cluster",
    "no_route", "no_filter_chain", "reject", "denied", "days_until_first_cert_expiring", "rbac", "cx_active",
    "cx_connect", "circuit_breakers", "cx_total", "ssl_handshake", "ssl_context_update_by_sds",
)
BASIC_PREFIXES = ("envoy_server", "envoy_control_plane", "envoy_dns_filter", "envoy_dns_cares", "kuma_dp_dns")
BASIC_EXACT = frozenset({"envoy_cluster_membership_degraded", "envoy_cluster_membership_healthy",
                         "envoy_cluster_ssl_handshake", "envoy_cluster_membership_total"})


@dataclass(frozen=True)
class Application:
    """An application endpoint kuma-dp scrapes (MeshMetric `applications`)."""

    name: str
    address: str
    port: int
    path: str

    @property
    def where(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{self.path}"


APPLICATION_TIMEOUT = 5.0  # a Prometheus scrape times out after 10 s by default


async def scrape(app: Application) -> bytes:
    """The application's metrics text, or a comment saying why there is none (the scrape goes on)."""
    try:
        r = await AdminClient(app.address, app.port).get(app.path, timeout=APPLICATION_TIMEOUT)
    except AdminError as e:
        log.warning("application metrics unavailable", extra={"application": app.name, "url": app.where,
                                                               "error": str(e)})
        return f"# application {app.name or app.where} metrics unavailable: {e}\n".encode()
    if r.status != 200:
        log.warning("application metrics unavailable", extra={"application": app.name, "url": app.where,
                                                               "status": r.status})
        return f"# application {app.name or app.where} answered {r.status}\n".encode()
    return r.body if r.body.endswith(b"\n") or not r.body else r.body + b"\n"


def in_basic_profile(family: str) -> bool:
    return family in BASIC_EXACT or family.startswith(BASIC_PREFIXES) or any(c in family for c in BASIC_CONTAINS)


def _matcher(entry: Mapping[str, Any]) -> Callable[[str], bool]:
    kind, text = str(entry.get("type", "")), str(entry.get("match", ""))
    if kind == "Regex":
        pattern = re.compile(text)
        return lambda name: pattern.search(name) is not None  # Go's MatchString: anywhere in the name
    if kind == "Prefix":
        return lambda name: name.startswith(text)
    if kind == "Exact":
        return lambda name: name == text
    return lambda name: text in name  # Contains


@dataclass
class MetricsPolicy:
    """What kuma-dp publishes of Envoy's stats: the merged MeshMetric of its dataplane (the control plane's
    `/kuma.vm.dp.v1.Metrics/Get` answer)."""

    profiles: tuple[str, ...] = ("Basic",)
    include: list[Callable[[str], bool]] = field(default_factory=list)
    exclude: list[Callable[[str], bool]] = field(default_factory=list)
    include_unused: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    applications: tuple[Application, ...] = ()
    _kept: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> MetricsPolicy:
        conf = answer.get("conf") or {}
        sidecar = conf.get("sidecar") or {}
        profiles = sidecar.get("profiles") or {}
        names = tuple(str(p.get("name")) for p in profiles.get("appendProfiles") or ()) or ("Basic",)
        labels = {"mesh": str(answer.get("mesh", "")), "kuma_io_service": str(answer.get("service", "")),
                  "kuma_io_zone": str(answer.get("zone", ""))}
        apps = tuple(Application(str(a.get("name") or ""), str(a.get("address") or "127.0.0.1"), int(a["port"]),
                                 str(a.get("path") or "/metrics/prometheus"))
                     for a in conf.get("applications") or ())
        return cls(profiles=names, include=[_matcher(e) for e in profiles.get("include") or ()],
                   exclude=[_matcher(e) for e in profiles.get("exclude") or ()],
                   include_unused=bool(sidecar.get("includeUnused", False)),
                   labels={k: v for k, v in labels.items() if v}, applications=apps)

    def keeps(self, family: str) -> bool:
        found = self._kept.get(family)
        if found is None:
            if any(m(family) for m in self.include):
                found = True
            elif any(m(family) for m in self.exclude):
                found = False
            else:
                found = "All" in self.profiles or ("Basic" in self.profiles and in_basic_profile(family))
            self._kept[family] = found
        return found

    @property
    def stats_path(self) -> str:
        return "/stats/prometheus" if self.include_unused else "/stats/prometheus?usedonly"

    def apply(self, text: bytes) -> bytes:
        """Envoy's Prometheus text with only the kept families, each sample labelled."""
        extra = [(k, f'{k}="{_escape(v)}"') for k, v in sorted(self.labels.items())]
        out: list[str] = []
        family = ""
        for line in text.decode("utf-8", "replace").splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("TYPE", "HELP"):
                    family = parts[2]
                    if self.keeps(family):
                        out.append(line)
                continue
            name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
            name = line[:name_end]
            if not (family and name.startswith(family)):
                family = name
            if self.keeps(family):
                out.append(_with_labels(line, name_end, extra) if extra else line)
        return ("\n".join(out) + "\n").encode() if out else b""


_LABEL_NAME = re.compile(r'(?:^|,)\s*([a-zA-Z_][a-zA-Z0-9_]*)="')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _with_labels(line: str, name_end: int, labels: list[tuple[str, str]]) -> str:
    """`name{a="b"} 1` -> `name{a="b",extra} 1`; `name 1` -> `name{extra} 1` (quotes in values respected)."""
    if name_end >= len(line) or line[name_end] != "{":
        return f"{line[:name_end]}{{{','.join(text for _n, text in labels)}}}{line[name_end:]}"
    i, quoted = name_end + 1, False
    while i < len(line):
        c = line[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "}" and not quoted:
            break
        i += 1
    inner = line[name_end + 1:i]
    present = set(_LABEL_NAME.findall(inner))  # a label Envoy set (its `mesh` stats tag) is kept, not doubled
    extra = ",".join(text for name, text in labels if name not in present)
    if not extra:
        return line
    joined = f"{inner},{extra}" if inner.strip() else extra
    return f"{line[:name_end]}{{{joined}}}{line[i + 1:]}"
