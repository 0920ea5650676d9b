"""Who a dp-server caller is: the dataplane token, checked against the Dataplane it claims to be.

Used twice with the same rules: by the bootstrap call (kuma-dp, before Envoy starts) and by every ADS stream
(Envoy, with the token kuma-dp put in its bootstrap as `authorization` metadata). The token binds what it
names (Kuma's rules, `verify_dataplane_identity`): its mesh, its dataplane name if it has one, the tag values
it lists, and its proxy type (a dataplane token does not run an ingress, and back). It is checked against the
Dataplane the caller sends *and* against the one already stored under that name, so a token for
`kuma.io/service=web` cannot take over the Dataplane of another service by sending a definition of its own;
and a Dataplane an operator created (no `kuma.io/managed-by: kuma-dp` label) is replaced by a kuma-dp's own
definition only with a token bound to its name (a kuma-dp without a definition runs it as it is).

A token whose signature does not verify gets one answer whether or not the mesh has a signing key with the
token's `kid` (or exists at all): the dp-server is reachable without credentials and must not tell meshes apart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import grpc
from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import json_format

from controlplane.resources import REGISTRY, Resource, ResourceValidationError, from_wire
from controlplane.resources.dataplane import DataplaneSpec, with_zone_tag
from controlplane.resources.documents import DocumentError, load_json
from controlplane.resources.zone import ZONE_INGRESS, ZoneIngressSpec
from controlplane.store.base import NotFound, ResourceStore
from controlplane.tokens.errors import InvalidSignature, SigningKeyNotFound, TokenError
from controlplane.tokens.service import TokenService
from controlplane.tokens.validator import verify_dataplane_identity, verify_zone_identity

from .bootstrap import (
    DATAPLANE_METADATA,
    PROXY_TYPE_METADATA,
    PROXY_TYPES,
    VIP_LISTENERS_METADATA,
    ingress_name,
    split_node_id,
)
from .callbacks import XdsAuthError
from .remote_endpoints import ingress_zone

log = logging.getLogger("kuma.xds")


MANAGED_LABEL = "kuma.io/managed-by"
MANAGED_VALUE = "kuma-dp"


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
    def __init__(self, store: ResourceStore, tokens: TokenService, *, zone: str = "") -> None:
        self.store, self.tokens = store, tokens
        self.zone = zone  # the zone this control plane serves: the only zone its ingresses may belong to
        # The caller of each authenticated node id, for the lifecycle (which registers the Dataplane when
        # the stream opens). Entries are replaced on reconnect and removed by the lifecycle.
        self.callers: dict[str, Caller] = {}

    async def identify(self, mesh: str, name: str, token: str, definition: object | None, *,
                       proxy_type: str = "dataplane") -> Caller:
        """Validate the token for `mesh`, find the Dataplane (sent, or stored) and check the token may speak
        for it, and for the Dataplane stored under that name. Raises XdsAuthError saying what to fix."""
        if proxy_type == "ingress":
            return await self.identify_ingress(name, token, definition)
        try:
            claims = await self.tokens.validate_dataplane_token(token, mesh)
        except (InvalidSignature, SigningKeyNotFound):
            raise XdsAuthError(grpc.StatusCode.UNAUTHENTICATED,
                               f"dataplane token rejected: its signature does not verify with the signing keys of "
                               f"mesh {mesh!r} (altered, issued by another control plane or for another mesh, or "
                               f"its key was rotated): generate one with kumactl generate dataplane-token "
                               f"--mesh {mesh} --name {name}") from None
        except TokenError as e:
            raise XdsAuthError(grpc.StatusCode.UNAUTHENTICATED, f"dataplane token rejected: {e}") from None
        stored = await self._stored(mesh, name)
        if definition is not None:
            dataplane = with_zone_tag(parse_dataplane(definition, mesh, name), self.zone)
        elif stored is not None:
            dataplane = stored
        else:
            raise XdsAuthError(grpc.StatusCode.NOT_FOUND,
                               f"Dataplane {name!r} does not exist in mesh {mesh!r}: pass its definition to "
                               "kuma-dp (--dataplane-file) or create it with kumactl apply")
        checked = [dataplane] if stored is None or stored is dataplane else [stored, dataplane]
        for resource in checked:
            spec = resource.spec
            assert isinstance(spec, DataplaneSpec)
            try:
                verify_dataplane_identity(claims, mesh, name, spec.tags(), proxy_type=proxy_type)
            except TokenError as e:
                which = "the stored Dataplane" if resource is stored and len(checked) > 1 else "the Dataplane"
                raise XdsAuthError(grpc.StatusCode.PERMISSION_DENIED, f"{which} {mesh}/{name}: {e}") from None
        if (stored is not None and definition is not None and stored.meta.labels.get(MANAGED_LABEL) != MANAGED_VALUE
                and with_zone_tag(stored, self.zone).spec != dataplane.spec and claims.name != name):
            raise XdsAuthError(grpc.StatusCode.PERMISSION_DENIED,
                               f"Dataplane {mesh}/{name} was created by an operator, and this kuma-dp sends a "
                               f"different definition: only a token bound to its name may replace it (kumactl "
                               f"generate dataplane-token --mesh {mesh} --name {name}); or run kuma-dp without "
                               "--dataplane-file to use the stored one as it is")
        return Caller(mesh, name, dataplane, definition is not None)

    async def identify_ingress(self, name: str, token: str, definition: object | None) -> Caller:
        """A zone ingress proves its zone with a zone token of scope `ingress` issued by this zone's control plane
        (Kuma's zone token for zone proxies); the ZoneIngress (sent, or stored) must be of this zone."""
        fix = f"kumactl generate zone-token --zone {self.zone or 'ZONE'} --scope ingress"
        if not self.zone:
            raise XdsAuthError(grpc.StatusCode.FAILED_PRECONDITION,
                               "this control plane has no zone name, and a zone ingress is its zone's entry point: "
                               "set KUMA_MULTIZONE_ZONE_NAME (multizone.zone.name)")
        try:
            claims = await self.tokens.validate_zone_token(token)
        except (InvalidSignature, SigningKeyNotFound):
            raise XdsAuthError(grpc.StatusCode.UNAUTHENTICATED,
                               f"zone ingress token rejected: its signature does not verify with this zone control "
                               f"plane's zone signing keys (a dataplane token, altered, or issued elsewhere): generate "
                               f"one against this zone control plane with {fix}") from None
        except TokenError as e:
            raise XdsAuthError(grpc.StatusCode.UNAUTHENTICATED, f"zone ingress token rejected: {e}") from None
        try:
            verify_zone_identity(claims, self.zone, "ingress")
        except TokenError as e:
            raise XdsAuthError(grpc.StatusCode.PERMISSION_DENIED, f"zone ingress {name}: {e}") from None
        stored = await self._stored_ingress(name)
        if stored is not None and ingress_zone(stored) not in (None, self.zone):
            raise XdsAuthError(grpc.StatusCode.PERMISSION_DENIED,
                               f"ZoneIngress {name!r} here is zone {ingress_zone(stored)!r}'s (synced from global): "
                               "give this ingress another name")
        if definition is not None:
            try:
                ingress = from_wire(definition, REGISTRY, rtype=ZONE_INGRESS, name=name)
            except ResourceValidationError as e:
                raise XdsAuthError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"the ZoneIngress definition is not valid: {e.details}") from None
            spec = ingress.spec
            assert isinstance(spec, ZoneIngressSpec)
            if spec.zone not in (None, self.zone):
                raise XdsAuthError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"the ZoneIngress definition says zone {spec.zone!r}, but this control plane "
                                   f"serves zone {self.zone!r}: fix `zone` or connect to that zone's control plane")
            # The zone control plane owns `zone` and `availableServices` (ingress_services.py keeps them).
            ingress = replace(ingress, spec=spec.model_copy(update={"zone": self.zone, "available_services": []}))
        elif stored is not None:
            ingress = stored
        else:
            raise XdsAuthError(grpc.StatusCode.NOT_FOUND,
                               f"ZoneIngress {name!r} does not exist: pass its definition to kuma-dp "
                               "(--dataplane-file, type: ZoneIngress) or create it with kumactl apply")
        return Caller("", name, ingress, definition is not None)

    async def _stored_ingress(self, name: str) -> Resource | None:
        try:
            return await self.store.get(ZONE_INGRESS, name)
        except NotFound:
            return None

    async def _stored(self, mesh: str, name: str) -> Resource | None:
        dp_type = REGISTRY.by_name("Dataplane")
        assert dp_type is not None
        try:
            return await self.store.get(dp_type, name, mesh)
        except NotFound:
            return None

    async def authenticate(self, node: Node, metadata: Mapping[str, str], peer: str) -> str:
        """ADS: the node id is `<mesh>.<name>` (a zone ingress: `ingress:<name>`); a registering kuma-dp put its
        Dataplane (or ZoneIngress) in node metadata."""
        ingress = ingress_name(node.id)
        if ingress is not None:
            mesh, name = "", ingress
        else:
            try:
                mesh, name = split_node_id(node.id)
            except ValueError as e:
                raise XdsAuthError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        definition = None
        meta = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
        raw = meta.get(DATAPLANE_METADATA)
        if raw is not None:
            try:
                definition = load_json(raw) if isinstance(raw, str) else raw  # bounded depth, as API bodies
            except DocumentError as e:
                raise XdsAuthError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"node metadata {DATAPLANE_METADATA} is {e}") from None
        proxy_type = meta.get(PROXY_TYPE_METADATA, "dataplane")
        if proxy_type not in PROXY_TYPES:
            raise XdsAuthError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"node metadata {PROXY_TYPE_METADATA} must be one of {', '.join(PROXY_TYPES)}")
        if (proxy_type == "ingress") != (ingress is not None):
            raise XdsAuthError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"node id {node.id!r} and node metadata {PROXY_TYPE_METADATA}={proxy_type!r} disagree: "
                               "a zone ingress's node id is 'ingress:<name>', a dataplane's '<mesh>.<name>'")
        caller = await self.identify(mesh, name, bearer(metadata), definition, proxy_type=proxy_type)
        caller = replace(caller, vip_listeners=meta.get(VIP_LISTENERS_METADATA) is True)
        self.callers[node.id] = caller
        log.info("zone ingress authenticated" if ingress else "dataplane authenticated",
                 extra={"mesh": mesh, "dataplane": name, "peer": peer, "registering": caller.registering})
        return node.id
