"""kuma-dp's reports to its control plane, on the dp-server port: `/kuma.vm.dp.v1.Status/Report` (unary, JSON).

What kuma-dp sees on its host and the control plane cannot: today, whether the host's resolver still points at
the DNS stub (another program may rewrite /etc/resolv.conf; agent/dns/guard.py notices). The report lands in
the dataplane's insight (`hostDns`), so `kumactl inspect dataplanes` and the GUI show why `.mesh` names stopped
resolving on a host. The caller proves it speaks for the dataplane with its token (checked as on the ADS stream).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc

from controlplane.resources.insights import HOST_DNS_STATES

from .auth import DataplaneAuthenticator
from .bootstrap import node_id
from .callbacks import XdsAuthError
from .insights import InsightsRecorder

log = logging.getLogger("kuma.xds")

MAX_MESSAGE = 2000


class StatusService:
    def __init__(self, auth: DataplaneAuthenticator, insights: InsightsRecorder) -> None:
        self.auth, self.insights = auth, insights

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self.report)
        return grpc.method_handlers_generic_handler("kuma.vm.dp.v1.Status", {"Report": method})

    async def report(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            req = json.loads(raw)
            mesh, name, token = str(req["mesh"]), str(req["name"]), str(req["dataplaneToken"])
            host_dns = req["hostDns"]
            state, message = str(host_dns["state"]), str(host_dns["message"])
        except (ValueError, KeyError, TypeError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                'a status report must be JSON {"mesh", "name", "dataplaneToken", '
                                '"hostDns": {"state", "message"}}')
        if state not in HOST_DNS_STATES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"hostDns.state {state!r} is not one of {', '.join(HOST_DNS_STATES)}")
        try:
            await self.auth.identify(mesh, name, token, None)
        except XdsAuthError as e:
            await context.abort(e.code, e.message)
        self.insights.on_host_dns(node_id(mesh, name), state, message[:MAX_MESSAGE])
        log.info("host DNS reported", extra={"mesh": mesh, "dataplane": name, "state": state})
        return b"{}"
