"""The bootstrap call on the dp-server port: `/kuma.vm.dp.v1.Bootstrap/Get`, JSON in and out (see
bootstrap.py for why). Same checks as an ADS stream: token, Dataplane definition, identity."""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc

from controlplane.dns.vips import VipView
from controlplane.resources import REGISTRY, Resource
from controlplane.resources.codec import to_wire
from controlplane.resources.dataplane import DataplaneSpec, identifying_service, no_identity_reason
from controlplane.resources.mesh import MeshSpec, membership_refusal
from controlplane.store.base import NotFound, ResourceStore, StoreError

from .auth import DataplaneAuthenticator
from .bootstrap import BootstrapRequest, BootstrapRequestError, render
from .callbacks import XdsAuthError

log = logging.getLogger("kuma.xds")

METHOD = "/kuma.vm.dp.v1.Bootstrap/Get"


class BootstrapService:
    def __init__(self, store: ResourceStore, auth: DataplaneAuthenticator, ca_pem: bytes, *,
                 api_type: str = "delta", vips: VipView | None = None) -> None:
        self.store, self.auth, self.ca_pem, self.api_type, self.vips = store, auth, ca_pem, api_type, vips

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self.get)  # bytes in, bytes out (no (de)serializers)
        return grpc.method_handlers_generic_handler("kuma.vm.dp.v1.Bootstrap", {"Get": method})

    async def get(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            req = BootstrapRequest.from_json(raw, self.api_type)
        except BootstrapRequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bootstrap request: {e}")
            raise  # unreachable: abort raises
        if req.dataplane is not None and req.dataplane.get("name", req.name) != req.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the Dataplane definition names {req.dataplane.get('name')!r} but the request is "
                                f"for {req.name!r}")
        # The token first: before it is verified, nothing in the answer may depend on whether the mesh exists.
        try:
            caller = await self.auth.identify(req.mesh, req.name, req.token, req.dataplane,
                                              proxy_type=req.proxy_type)
        except XdsAuthError as e:
            log.warning("bootstrap refused", extra={"mesh": req.mesh, "dataplane": req.name, "reason": e.message})
            await context.abort(e.code, e.message)
            raise
        except StoreError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"control plane store unavailable: {e}")
            raise
        ingress = req.proxy_type == "ingress"  # a zone ingress belongs to no mesh and runs no DNS
        mesh = None if ingress else await self._mesh(req.mesh)
        if not ingress and mesh is None:  # a valid token for a mesh deleted since
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"mesh {req.mesh!r} does not exist: create it first (kumactl apply)")
        spec = caller.dataplane.spec
        if mesh is not None and isinstance(mesh.spec, MeshSpec) and isinstance(spec, DataplaneSpec):
            refusal = membership_refusal(mesh.spec, req.mesh, spec.tag_sets())  # Kuma: the mesh's constraints
            if refusal:
                log.warning("bootstrap refused", extra={"mesh": req.mesh, "dataplane": req.name, "reason": refusal})
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
            no_identity = no_identity_reason(caller.dataplane) if mesh.spec.mtls and mesh.spec.mtls.enabled() else None
            if no_identity:  # an outbound-only proxy in an mTLS mesh needs a kuma.io/workload label
                log.warning("bootstrap refused", extra={"mesh": req.mesh, "dataplane": req.name, "reason": no_identity})
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, no_identity)
        service = identifying_service(caller.dataplane) if isinstance(spec, DataplaneSpec) else req.name
        dataplane_json = json.dumps(to_wire(caller.dataplane)) if caller.registering else None
        bootstrap = render(req, ca_pem=self.ca_pem, service=service,
                           dataplane_json=dataplane_json)
        log.info("bootstrap served", extra={"mesh": caller.mesh, "dataplane": req.name, "proxyType": req.proxy_type,
                                            "api": req.api_type})
        answer: dict[str, Any] = {"nodeId": req.node_id, "bootstrap": bootstrap}
        if self.vips is not None and not ingress:
            # The DNS stub's first table, so `.mesh` names resolve before its VIP watch is connected.
            answer["vips"] = self.vips.mesh(req.mesh).to_json()
        return json.dumps(answer).encode()

    async def _mesh(self, mesh: str) -> Resource | None:
        mesh_type = REGISTRY.by_name("Mesh")
        assert mesh_type is not None
        try:
            return await self.store.get(mesh_type, mesh)
        except NotFound:
            return None
