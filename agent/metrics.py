"""Prometheus metrics: Envoy's `/stats/prometheus` merged with kuma-dp's own (Kuma's "metrics hijacker").

kuma-dp's own series (prefix `kuma_dp_`) say what Envoy cannot say about itself: whether Envoy is up, how
often kuma-dp restarted it, whether the dataplane is ready and connected, the bootstrap attempts, Envoy's
resident memory, plus `process_*` for kuma-dp itself. Served on the readiness port's `/metrics` (loopback)
and, with `--metrics-port`, on a listener of its own for a Prometheus elsewhere.
"""

from __future__ import annotations

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from agent.envoy.admin import AdminClient, AdminError
from agent.readiness import DpState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # no `*_created` series: they double the output and nobody scrapes them here


class DpMetrics:
    def __init__(self, state: DpState) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.info = Info("kuma_dp", "kuma-dp build and the dataplane it runs", registry=r)
        self.envoy_restarts = Counter("kuma_dp_envoy_restarts", "Envoy restarts after an unexpected exit",
                                      registry=r)
        self.bootstrap_attempts = Counter("kuma_dp_bootstrap_attempts", "bootstrap calls to the control plane",
                                          registry=r)
        self.cp_disconnects = Counter("kuma_dp_control_plane_disconnects", "times Envoy lost its ADS stream",
                                      registry=r)
        Gauge("kuma_dp_envoy_up", "1 while the Envoy child process runs", registry=r).set_function(
            lambda: 1.0 if state.envoy_pid is not None else 0.0)
        Gauge("kuma_dp_ready", "1 while /ready answers 200", registry=r).set_function(
            lambda: 1.0 if state.ready()[0] else 0.0)
        Gauge("kuma_dp_control_plane_connected", "1 while Envoy's ADS stream is up", registry=r).set_function(
            lambda: 1.0 if state.cp_connected else 0.0)
        Gauge("kuma_dp_envoy_resident_memory_bytes", "Envoy's resident memory", registry=r).set_function(
            self._envoy_rss)

    def _envoy_rss(self) -> float:
        pid = self.state.envoy_pid
        if pid is None:
            return 0.0
        try:
            return float(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return 0.0

    def own(self) -> bytes:
        return generate_latest(self.registry)

    async def merged(self, admin: AdminClient | None) -> bytes:
        """Envoy's series followed by kuma-dp's; when Envoy cannot answer, kuma-dp's alone (and a comment)."""
        envoy = b""
        if admin is not None and self.state.envoy_pid is not None:
            try:
                r = await admin.get("/stats/prometheus", timeout=5.0)
                if r.status == 200:
                    envoy = r.body if r.body.endswith(b"\n") or not r.body else r.body + b"\n"
                else:
                    envoy = f"# Envoy admin /stats/prometheus answered {r.status}\n".encode()
            except AdminError as e:
                envoy = f"# Envoy stats unavailable: {e}\n".encode()
        else:
            envoy = b"# Envoy is not running\n"
        return envoy + self.own()
