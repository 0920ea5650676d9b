"""Read views computed from the store: mesh insights and the dataplane overview.

Online/offline comes from DataplaneInsight, which the xDS server writes, and the heartbeats of the instances
that wrote its subscriptions (ControlPlaneInstance records; on global, those synced from the zones); until a
dataplane's Envoy has connected, it is reported offline, which is the truth.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controlplane.resources.base import Registry
from controlplane.resources.codec import to_wire
from controlplane.resources.insights import DataplaneInsightSpec, ZoneIngressInsightSpec
from controlplane.resources.mesh import MeshSpec
from controlplane.resources.zone import ZoneIngressSpec
from controlplane.store.base import ListQuery, NotFound, ResourceStore
from controlplane.xds.liveness import instance_heartbeats, online

from .errors import ApiError
from .resources import DEFAULT_PAGE, MAX_PAGE, int_param, next_page_url


class InsightsApi:
    def __init__(self, store: ResourceStore, registry: Registry, *, heartbeat: float = 10.0) -> None:
        self.store, self.registry = store, registry
        # Of the instances writing subscriptions: an instance whose ControlPlaneInstance record is older than a
        # few heartbeats is dead, and its open subscriptions with it (controlplane/xds/liveness.py).
        self.heartbeat = heartbeat

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/mesh-insights", self.mesh_insights)
        app.router.add_get("/mesh-insights/{mesh}", self.mesh_insight)
        app.router.add_get("/meshes/{mesh}/dataplanes/_overview", self.dataplanes_overview)
        app.router.add_get("/zoneingresses/_overview", self.zone_ingresses_overview)

    def _t(self, name: str) -> Any:
        rtype = self.registry.by_name(name)
        assert rtype is not None, name
        return rtype

    async def _insight(self, mesh: Any) -> dict[str, Any]:
        name = mesh.meta.name
        dps = await self.store.list(self._t("Dataplane"), ListQuery(mesh=name))
        online_names = await self._online(name)
        online = sum(1 for dp in dps.items if dp.meta.name in online_names)
        policies: dict[str, dict[str, int]] = {}
        for rtype in self.registry.all():
            if rtype.is_policy:
                total = (await self.store.list(rtype, ListQuery(mesh=name, size=0))).total
                if total:
                    policies[rtype.name] = {"total": total}
        mtls = mesh.spec.mtls.enabled() if mesh.spec.mtls else None
        return {
            "type": "MeshInsight", "name": name,
            "dataplanes": {"total": dps.total, "online": online, "offline": dps.total - online},
            "policies": policies,
            "mTLS": {"enabledBackend": mtls.name if mtls else None, "type": mtls.type if mtls else None},
        }

    async def _online(self, mesh: str) -> set[str]:
        """Names of the mesh's dataplanes whose newest subscription is open and kept fresh by a live instance
        (controlplane/xds/liveness.py): one list, not one read per dataplane."""
        insights = await self.store.list(self._t("DataplaneInsight"), ListQuery(mesh=mesh))
        beats = await instance_heartbeats(self.store)
        return {i.meta.name for i in insights.items
                if isinstance(i.spec, DataplaneInsightSpec) and online(i.spec, self.heartbeat, beats)}

    async def mesh_insights(self, request: web.Request) -> web.Response:
        meshes = await self.store.list(self._t("Mesh"))
        items = [await self._insight(m) for m in meshes.items]
        return web.json_response({"total": len(items), "items": items, "next": None})

    async def mesh_insight(self, request: web.Request) -> web.Response:
        try:
            mesh = await self.store.get(self._t("Mesh"), request.match_info["mesh"])
        except NotFound:
            raise ApiError(404, "Not found", f"mesh {request.match_info['mesh']!r} does not exist") from None
        return web.json_response(await self._insight(mesh))

    async def dataplanes_overview(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        try:
            await self.store.get(self._t("Mesh"), mesh)
        except NotFound:
            raise ApiError(404, "Not found", f"mesh {mesh!r} does not exist") from None
        size = int_param(request.query, "size", DEFAULT_PAGE, 1, MAX_PAGE)
        offset = int_param(request.query, "offset", 0, 0, None)
        dps = await self.store.list(self._t("Dataplane"), ListQuery(mesh=mesh, offset=offset, size=size))
        online = await self._online(mesh)
        items = [{"type": "DataplaneOverview", "mesh": mesh, "name": dp.meta.name, "dataplane": to_wire(dp),
                  "status": "online" if dp.meta.name in online else "offline"} for dp in dps.items]
        return web.json_response({"total": dps.total, "items": items,
                                  "next": next_page_url(request, dps.next_offset, size)})

    async def zone_ingresses_overview(self, request: web.Request) -> web.Response:
        """Kuma's `GET /zoneingresses/_overview`: each ZoneIngress with its insight and status. An ingress is
        online while its newest subscription is open and fresh; another zone's ingress synced here has no
        insight in this zone (its own zone keeps it), so its status is `remote`."""
        size = int_param(request.query, "size", DEFAULT_PAGE, 1, MAX_PAGE)
        offset = int_param(request.query, "offset", 0, 0, None)
        ingresses = await self.store.list(self._t("ZoneIngress"), ListQuery(offset=offset, size=size))
        insights = {i.meta.name: i for i in (await self.store.list(self._t("ZoneIngressInsight"))).items}
        beats = await instance_heartbeats(self.store)
        # Cross-zone traffic is routed by the TLS SNI, so a mesh without mTLS gets none: say which.
        no_mtls = sorted(m.meta.name for m in (await self.store.list(self._t("Mesh"))).items
                         if isinstance(m.spec, MeshSpec) and not (m.spec.mtls and m.spec.mtls.enabled()))
        items = []
        for ingress in ingresses.items:
            insight = insights.get(ingress.meta.name)
            spec = insight.spec if insight is not None else None
            if isinstance(spec, ZoneIngressInsightSpec):
                status = "online" if online(spec, self.heartbeat, beats) else "offline"
            else:
                status = "offline" if ingress.meta.labels.get("kuma.io/origin") is None else "remote"
            assert isinstance(ingress.spec, ZoneIngressSpec)
            meshes = {s.mesh for s in ingress.spec.available_services}
            items.append({"type": "ZoneIngressOverview", "name": ingress.meta.name, "zoneIngress": to_wire(ingress),
                          "zoneIngressInsight": to_wire(insight) if insight is not None else None,
                          "status": status, "meshesWithoutMtls": [m for m in no_mtls if m in meshes]})
        return web.json_response({"total": ingresses.total, "items": items,
                                  "next": next_page_url(request, ingresses.next_offset, size)})
