"""Wire MeshMetric's control-plane side into a zone control plane: the shared assignments, the MADS HTTP
server for Prometheus, and the dp-server method kuma-dp reads its merged MeshMetric from."""

from __future__ import annotations

from controlplane.runtime import Runtime
from controlplane.xds.auth import DataplaneAuthenticator

from .assignments import Assignments
from .dp_config import MetricsConfigService
from .server import MadsServer


def add_mads(runtime: Runtime, auth: DataplaneAuthenticator) -> MetricsConfigService:
    cfg = runtime.config
    zone = cfg.multizone.zone.name
    assignments = Assignments(runtime.store, zone, runtime.supervisor)
    runtime.add(assignments)
    mads = cfg.monitoring_assignment_server
    runtime.add(MadsServer(assignments, mads.interface, mads.port, mads.default_fetch_timeout))
    return MetricsConfigService(assignments, auth, zone)
