"""`GET /zones/_overview` and `GET /zones/{name}/_overview` (Kuma's paths): each zone global knows, with its
ZoneInsight (KDS connection history and what flowed per type) and, a kuma-vm addition, its status
(Online/Offline, controlplane/kds/zone_insights.py). Only a global knows zones."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controlplane.kds.zone_insights import zone_status
from controlplane.resources.codec import to_wire
from controlplane.resources.zone import ZONE, ZONE_INSIGHT, ZoneInsightSpec
from controlplane.store.base import ListQuery, NotFound, ResourceStore

from .errors import ApiError


class ZonesApi:
    def __init__(self, store: ResourceStore, *, mode: str, flush: float, grace: float) -> None:
        self.store, self.mode, self.flush, self.grace = store, mode, flush, grace

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/zones/_overview", self.overviews)
        app.router.add_get("/zones/{name}/_overview", self.overview)

    def _global_only(self) -> None:
        if self.mode != "global":
            raise ApiError(400, "Bad Request", "zones are known to the global control plane: ask it (this is a "
                                               "zone control plane; its own link to global is in GET /)")

    def _item(self, zone: Any, insight: Any) -> dict[str, Any]:
        spec = insight.spec if insight is not None and isinstance(insight.spec, ZoneInsightSpec) else None
        return {"type": "ZoneOverview", "name": zone.meta.name, "zone": to_wire(zone),
                "zoneInsight": to_wire(insight) if insight is not None else {},
                "status": zone_status(spec, flush=self.flush, grace=self.grace)}

    async def overviews(self, request: web.Request) -> web.Response:
        self._global_only()
        zones = (await self.store.list(ZONE, ListQuery())).items
        insights = {i.meta.name: i for i in (await self.store.list(ZONE_INSIGHT, ListQuery())).items}
        items = [self._item(z, insights.get(z.meta.name)) for z in zones]
        return web.json_response({"total": len(items), "items": items, "next": None})

    async def overview(self, request: web.Request) -> web.Response:
        self._global_only()
        name = request.match_info["name"]
        try:
            zone = await self.store.get(ZONE, name)
        except NotFound:
            raise ApiError(404, "Not found", f"zone {name!r} does not exist (it appears on its first connection)") \
                from None
        try:
            insight = await self.store.get(ZONE_INSIGHT, name)
        except NotFound:
            insight = None
        return web.json_response(self._item(zone, insight))
