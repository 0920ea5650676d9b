"""Who a dp-server caller is: the dataplane token, checked against the Dataplane it claims to be.

Used twice with the same rules: by the bootstrap call (kuma-dp, before Envoy starts) and by every ADS stream
(Envoy, with the token kuma-dp put in its bootstrap as `authorization` metadata).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import grpc
from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import json_format

from controlplane.resources import REGISTRY, Resource, ResourceValidationError, from_wire
from controlplane.resources.dataplane import DataplaneSpec
from controlplane.store.base import NotFound, ResourceStore
from controlplane.tokens.errors import TokenError
from controlplane.tokens.service import TokenService
from controlplane.tokens.validator import verify_dataplane_identity

from .bootstrap import DATAPLANE_METADATA, VIP_LISTENERS_METADATA, split_node_id
from .callbacks import XdsAuthError

log = logging.getLogger("kuma.xds")


@dataclass(frozen=True)
class Caller:
    mesh: str
    name: str
    dataplane: Resource
    registering: bool  # the caller sent its own Dataplane definition (kuma-dp --dataplane-file)
    vip_listeners: bool = False  # the caller owns its host's `.mesh` VIP listeners


def bearer(metadata: Mapping[str, str]) -> str:
    raw = metadata.get("authorization", "").strip()
    scheme, _, rest = raw.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else raw
    if not token:
        raise XdsAuthError(grpc.StatusCode.UNAUTHENTICATED,
                           "no dataplane token: pass --dataplane-token-file to kuma-dp "
                           "(kumactl generate dataplane-token --mesh M --name N)")
    return token


def parse_dataplane(doc: object, mesh: str, name: str) -> Resource:
    try:
        return from_wire(doc, REGISTRY, rtype=REGISTRY.by_name("Dataplane"), name=name, mesh=mesh)
    except ResourceValidationError as e:
        raise XdsAuthError(grpc.StatusCode.INVALID_ARGUMENT, f"the Dataplane definition is not valid: {e.details}")\
            from None


class DataplaneAuthenticator:
    def __init__(self, store: ResourceStore, tokens: TokenService) -> None:
        self.store, self.tokens = store, tokens
        # The caller of each authenticated node id, for the lifecycle (which registers the Dataplane when
        # the stream opens). Entries are replaced on reconnect and removed by the lifecycle.
        self.callers: dict[str, Caller] = {}

    async def identify(self, mesh: str, name: str, token: str, definition: object | None) -> Caller:
        """Validate the token for `mesh`, find the Dataplane (sent, or stored) and check the token may speak
        for it. Raises XdsAuthError with a message that says what to fix."""
        try:
            claims = await self.tokens.validate_dataplane_token(token, mesh)
        except TokenError as e:
            raise XdsAuthError(grpc.StatusCode.UNAUTHENTICATED, f"dataplane token rejected: {e}") from None
        if definition is not None:
            dataplane = parse_dataplane(definition, mesh, name)
        else:
            dp_type = REGISTRY.by_name("Dataplane")
            assert dp_type is not None
            try:
                dataplane = await self.store.get(dp_type, name, mesh)
            except NotFound:
                raise XdsAuthError(grpc.StatusCode.NOT_FOUND,
                                   f"Dataplane {name!r} does not exist in mesh {mesh!r}: pass its definition to "
                                   "kuma-dp (--dataplane-file) or create it with kumactl apply") from None
        spec = dataplane.spec
        assert isinstance(spec, DataplaneSpec)
        try:
            verify_dataplane_identity(claims, mesh, name, spec.tags())
        except TokenError as e:
            raise XdsAuthError(grpc.StatusCode.PERMISSION_DENIED, str(e)) from None
        return Caller(mesh, name, dataplane, definition is not None)

    async def authenticate(self, node: Node, metadata: Mapping[str, str], peer: str) -> str:
        """ADS: the node id is `<mesh>.<name>`; a registering kuma-dp put its Dataplane in node metadata."""
        try:
            mesh, name = split_node_id(node.id)
        except ValueError as e:
            raise XdsAuthError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        definition = None
        meta = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
        raw = meta.get(DATAPLANE_METADATA)
        if raw is not None:
            try:
                definition = json.loads(raw) if isinstance(raw, str) else raw
            except ValueError:
                raise XdsAuthError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"node metadata {DATAPLANE_METADATA} is not JSON") from None
        caller = await self.identify(mesh, name, bearer(metadata), definition)
        caller = replace(caller, vip_listeners=meta.get(VIP_LISTENERS_METADATA) is True)
        self.callers[node.id] = caller
        log.info("dataplane authenticated", extra={"mesh": mesh, "dataplane": name, "peer": peer,
                                                   "registering": caller.registering})
        return node.id
