"""Table columns per resource type (as the API returns resources: Kuma's universal form)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from controlplane.resources.base import ResourceType, Scope

from .output import age, render_table

Column = tuple[str, Callable[[Mapping[str, Any]], Any]]


def _get(doc: Any, *path: str | int) -> Any:
    for key in path:
        if isinstance(key, int):
            doc = doc[key] if isinstance(doc, list) and len(doc) > key else None
        else:
            doc = doc.get(key) if isinstance(doc, Mapping) else None
    return doc


def dataplane_services(dp: Mapping[str, Any]) -> str:
    networking = dp.get("networking") or {}
    gateway = networking.get("gateway")
    if isinstance(gateway, Mapping):
        return str(_get(gateway, "tags", "kuma.io/service") or "")
    inbounds = networking.get("inbound") or []
    if not inbounds:  # an outbound-only proxy (Kuma 2.14) serves nothing; its workload label names it
        workload = _get(dp, "labels", "kuma.io/workload")
        return f"(outbound only: {workload})" if workload else "(outbound only)"
    services = []
    for inbound in inbounds:
        service = _get(inbound, "tags", "kuma.io/service")
        if service and service not in services:
            services.append(str(service))
    return ",".join(services)


def dataplane_address(dp: Mapping[str, Any]) -> str:
    return str(_get(dp, "networking", "address") or "")


def mesh_mtls(mesh: Mapping[str, Any]) -> str:
    enabled = _get(mesh, "mtls", "enabledBackend")
    if not enabled:
        return "off"
    backend = next((b for b in _get(mesh, "mtls", "backends") or [] if _get(b, "name") == enabled), None)
    kind = _get(backend, "type")
    return f"{kind}/{enabled}" if kind else str(enabled)


def _enabled(zone: Mapping[str, Any]) -> str:
    return "false" if zone.get("enabled") is False else "true"


def _target(kind_or_name: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda doc: _get(doc, "spec", "targetRef", kind_or_name) or ""


def columns(rtype: ResourceType) -> list[Column]:
    """MESH (mesh-scoped types), NAME, what matters for the type, AGE."""
    lead: list[Column] = [("MESH", lambda d: d.get("mesh", ""))] if rtype.scope is Scope.MESH else []
    lead.append(("NAME", lambda d: d.get("name", "")))
    middle: list[Column] = []
    if rtype.name == "Dataplane":
        middle = [("ADDRESS", dataplane_address), ("SERVICES", dataplane_services)]
    elif rtype.name == "Mesh":
        middle = [("mTLS", mesh_mtls)]
    elif rtype.name == "Zone":
        middle = [("ENABLED", _enabled)]
    elif rtype.name == "ZoneIngress":
        middle = [("ZONE", lambda d: d.get("zone") or ""),
                  ("ADDRESS", lambda d: _address(d.get("networking") or {}, "address", "port")),
                  ("ADVERTISED", lambda d: _address(d.get("networking") or {}, "advertisedAddress",
                                                    "advertisedPort"))]
    elif rtype.is_policy or not rtype.flat:
        middle = [("TARGETREF KIND", _target("kind")), ("TARGETREF NAME", _target("name"))]
    return [*lead, *middle]


def _address(networking: Mapping[str, Any], addr: str, port: str) -> str:
    a, p = networking.get(addr), networking.get(port)
    return f"{a}:{p}" if a and p else str(a or "")


def resource_table(rtype: ResourceType, items: Sequence[Mapping[str, Any]], now: datetime | None = None) -> str:
    cols = columns(rtype)
    headers = [h for h, _ in cols] + ["AGE"]
    rows = [[fn(item) for _, fn in cols] + [age(item.get("creationTime"), now)] for item in items]
    return render_table(headers, rows)


# --- inspect ---------------------------------------------------------------------------------------------------


def mesh_insights_table(items: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for it in items:
        dps = it.get("dataplanes") or {}
        policies = it.get("policies") or {}
        count = sum(int(_get(p, "total") or 0) for p in policies.values()) if isinstance(policies, Mapping) else 0
        mtls = it.get("mTLS") or {}
        backend, kind = mtls.get("enabledBackend"), mtls.get("type")
        mtls_text = "off" if not backend else (f"{kind}/{backend}" if kind else str(backend))
        rows.append([it.get("name", ""), f"{dps.get('online', 0)}/{dps.get('total', 0)}", count, mtls_text])
    return render_table(["NAME", "DATAPLANES", "POLICIES", "mTLS"], rows)


def dataplane_overview_table(items: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for it in items:
        dp = it.get("dataplane") or {}
        rows.append([it.get("mesh") or dp.get("mesh", ""), it.get("name") or dp.get("name", ""),
                     it.get("status") or "offline", dataplane_services(dp), dataplane_address(dp)])
    return render_table(["MESH", "NAME", "STATUS", "SERVICES", "ADDRESS"], rows)


def zone_overview_table(items: Sequence[Mapping[str, Any]]) -> str:
    """`kumactl inspect zones`: each zone's status, its last connection, what its newest connection synced
    (responses sent/ACKed/NACKed by the zone, and resources from the zone global rejected), version and
    environment."""
    rows = []
    for it in items:
        insight = it.get("zoneInsight") or {}
        subs = insight.get("subscriptions") or []
        newest = max(subs, key=lambda s: str(s.get("connectTime", ""))) if subs else {}
        total = _get(newest, "status", "total") or {}
        kds = (f"{total.get('responsesSent', 0)}/{total.get('responsesAcknowledged', 0)}/"
               f"{total.get('responsesRejected', 0)}/{total.get('resourcesRejected', 0)}") if newest else "-"
        enabled = _get(it, "zone", "enabled")
        status = it.get("status") or "Offline"
        if enabled is False:
            status += " (disabled)"
        rows.append([it.get("name", ""), status, newest.get("connectTime", "never"), kds,
                     _get(newest, "version", "kumaCp", "version") or "-", insight.get("environment") or "-"])
    return render_table(["NAME", "STATUS", "LAST CONNECTED", "KDS SENT/ACKED/NACKED/REJECTED", "VERSION",
                         "ENVIRONMENT"], rows)


def zones_table(zones: Sequence[Mapping[str, Any]], overviews: Mapping[str, Mapping[str, Any]],
                now: datetime | None = None) -> str:
    """`kumactl get zones` on global: the resource's columns with each zone's STATUS (from its overview)."""
    rows = [[z.get("name", ""), _enabled(z), (overviews.get(str(z.get("name"))) or {}).get("status") or "Offline",
             age(z.get("creationTime"), now)] for z in zones]
    return render_table(["NAME", "ENABLED", "STATUS", "AGE"], rows)


def zone_ingress_overview_table(items: Sequence[Mapping[str, Any]]) -> str:
    """`kumactl inspect zoneingresses`: NAME, ZONE, ADDRESS, ADVERTISED, STATUS, SERVICES (mesh/service list;
    those of a mesh without mTLS marked: cross-zone traffic needs it)."""
    rows = []
    for item in items:
        ingress = item.get("zoneIngress") or {}
        networking = ingress.get("networking") or {}
        plain = set(item.get("meshesWithoutMtls") or ())  # no SNI to route by: not reachable from other zones
        services = sorted({f"{s.get('mesh', '')}/{(s.get('tags') or {}).get('kuma.io/service', '')}"
                           + (" (mesh without mTLS: not routed)" if s.get("mesh") in plain else "")
                           for s in ingress.get("availableServices") or ()})
        rows.append([item.get("name", ""), ingress.get("zone") or "", _address(networking, "address", "port"),
                     _address(networking, "advertisedAddress", "advertisedPort"), item.get("status", ""),
                     ",".join(services)])
    return render_table(["NAME", "ZONE", "ADDRESS", "ADVERTISED", "STATUS", "SERVICES"], rows)
