"""Our `Resource` <-> the KDS wire form (`KumaResource` in a Delta `Resource`), and batching under a byte cap.

Spec encoding, as Kuma's `model.ToAny`: the specs Kuma defines in protobuf (Mesh, Dataplane, ZoneIngress, the
insights, Secret, GlobalSecret) travel as those messages in `KumaResource.spec` (type URL
`type.googleapis.com/kuma.mesh.v1alpha1.Mesh`, ...; see proto_specs.py), every other spec (the targetRef policies)
as its camelCase JSON in `Any.value` with an empty type URL. A spec that arrives as JSON is read whatever its type
(what kuma-vm releases before the protobuf forms sent). Everything is encoded from a spec's wire dict: a model's
`to_wire()` (`encode`) or a stored row's JSON (`encode_raw`, the sender's listings: same bytes, no model built).

Version. A Delta `Resource.version` is a hash of the deterministic serialisation of its KumaResource, so equal
content has an equal version in every process and a reconnecting peer is re-sent only what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from controlplane.resources.base import Meta, Resource, ResourceType
from controlplane.resources.codec import from_wire
from controlplane.resources.documents import MAX_DEPTH, DocumentError, load_json
from controlplane.resources.errors import ResourceValidationError
from controlplane.store.base import RawResource
from kuma_shared.logs import ErrorLog

from . import kds_pb2
from .naming import BadWireKey, parse_wire_key, wire_key
from .proto_specs import ProtoSpecError, from_proto, spec_message, to_proto, type_url

log = logging.getLogger("kuma.kds")
_unfit = ErrorLog(log)

KUMA_RESOURCE_TYPE_URL = "type.googleapis.com/kuma.mesh.v1alpha1.KumaResource"
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# What a DeltaDiscoveryResponse costs beyond its resources (type URL, nonce, system version, field tags).
_RESPONSE_OVERHEAD = 512


class KdsDecodeError(ValueError):
    """A resource from a peer that cannot be stored; the message names the resource and the field."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class WireResource:
    """One resource ready to send: its Delta key, content version and encoded Delta `Resource`."""

    key: str
    version: str
    message: discovery_pb2.Resource


def spec_json(spec: Mapping[str, Any]) -> bytes:
    """A spec's wire dict as it travels in JSON: keys sorted, compact (the same bytes in every process)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()


def spec_any(rtype: ResourceType, meta: Meta, spec: dict[str, Any]) -> any_pb2.Any:
    """The spec (its wire dict) as Kuma packs it: its protobuf message where Kuma has one, else JSON with an
    empty type URL."""
    message = spec_message(rtype.name)
    if message is not None:
        try:
            packed = to_proto(rtype.name, spec)
            return any_pb2.Any(type_url=type_url(message), value=packed.SerializeToString(deterministic=True))
        except ProtoSpecError as e:
            # Stored before a rule our model now has (an insight's time written another way, say): sent as JSON,
            # which kuma-vm peers read for every type, rather than not at all.
            _unfit.report((rtype.name, meta.mesh, meta.name),
                          "KDS resource does not fit Kuma's protobuf message; sent as JSON", level=logging.WARNING,
                          traceback=False, error=e, extra={"type": rtype.name, "mesh": meta.mesh,
                                                           "resource": meta.name})
    return any_pb2.Any(type_url="", value=spec_json(spec))


def _kuma_resource(rtype: ResourceType, meta: Meta, spec: dict[str, Any]) -> kds_pb2.KumaResource:
    """Without its store version (set by the caller once the content version is taken)."""
    return kds_pb2.KumaResource(
        meta=kds_pb2.KumaResource.Meta(name=meta.name, mesh=meta.mesh, labels=dict(meta.labels)),
        spec=spec_any(rtype, meta, spec),
    )


def encode(resource: Resource) -> WireResource:
    """A resource (its model) as sent."""
    return encode_spec(resource.type, resource.meta, resource.spec.to_wire())


def encode_raw(raw: RawResource) -> WireResource:
    """A stored row as sent, without building its spec model: the stored JSON is the spec's wire form, so these
    are the bytes `encode` makes of the same resource read as a model (tests/unit/test_kds_raw.py shows it for
    every type). A first sync of thousands of resources does not parse and dump each one to pydantic."""
    return encode_spec(raw.type, raw.meta, json.loads(raw.spec_json))


def encode_spec(rtype: ResourceType, meta: Meta, spec: dict[str, Any]) -> WireResource:
    """A resource given as its metadata and its spec's wire dict, as sent. Its content version hashes what a peer
    would store: the KumaResource without the origin's store version, so the same content written again (or read
    back after a restart) has the same version and is not re-sent."""
    kr = _kuma_resource(rtype, meta, spec)
    version = hashlib.blake2b(kr.SerializeToString(deterministic=True), digest_size=10).hexdigest()
    kr.meta.version = str(meta.version)
    key = wire_key(rtype, meta.name, meta.mesh)
    packed = any_pb2.Any(type_url=KUMA_RESOURCE_TYPE_URL, value=kr.SerializeToString(deterministic=True))
    return WireResource(key, version, discovery_pb2.Resource(name=key, version=version, resource=packed))


def decode(rtype: ResourceType, res: discovery_pb2.Resource) -> Resource:
    """A peer's Delta `Resource` as a validated `Resource` (version 0: not stored here yet).
    Raises KdsDecodeError naming the resource and the field."""
    key = res.name
    where = f"{rtype.name} {key!r}"
    try:
        key_name, key_mesh = parse_wire_key(rtype, key)
    except BadWireKey as e:
        raise KdsDecodeError(key, str(e)) from None
    if res.resource.type_url != KUMA_RESOURCE_TYPE_URL:
        raise KdsDecodeError(key, f"{where}: resource has type URL {res.resource.type_url!r}, "
                                  f"expected {KUMA_RESOURCE_TYPE_URL!r}")
    kr = kds_pb2.KumaResource()
    try:
        kr.ParseFromString(res.resource.value)
    except DecodeError as e:
        raise KdsDecodeError(key, f"{where}: resource is not a valid KumaResource message: {e}") from None
    if (kr.meta.name, kr.meta.mesh) != (key_name, key_mesh):
        raise KdsDecodeError(key, f"{where}: meta names {kr.meta.name!r} in mesh {kr.meta.mesh!r}, but the "
                                  "Delta key says otherwise: the two must agree")
    spec = _spec_of(rtype, key, where, kr.spec)
    if not isinstance(spec, Mapping):
        raise KdsDecodeError(key, f"{where}: spec must be a JSON object")
    doc: dict[str, object] = {"type": rtype.name, "name": kr.meta.name, "labels": dict(kr.meta.labels)}
    if rtype.mesh_scoped:
        doc["mesh"] = kr.meta.mesh
    if rtype.flat:
        clash = [k for k in spec if k in doc or k in ("creationTime", "modificationTime")]
        if clash:
            raise KdsDecodeError(key, f"{where}: spec has field {clash[0]!r}, which is resource metadata")
        doc.update(spec)
    else:
        doc["spec"] = spec
    try:
        return from_wire(doc, rtype=rtype)
    except ResourceValidationError as e:
        problems = "; ".join(f"{p.field or '(resource)'}: {p.reason}" for p in e.invalid)
        raise KdsDecodeError(key, f"{where} is not valid: {problems}") from None


def _spec_of(rtype: ResourceType, key: str, where: str, packed: any_pb2.Any) -> object:
    """The spec in our wire-dict form, from Kuma's protobuf message or from JSON (empty type URL)."""
    if not packed.type_url:
        raw = packed.value or b"{}"
        try:
            if raw.count(b"{") + raw.count(b"[") < MAX_DEPTH:
                # It cannot nest deeper than it has brackets: the depth walk, on every resource of a first
                # sync, is skipped.
                with contextlib.suppress(ValueError):  # not JSON: load_json says why
                    return json.loads(raw)
            return load_json(raw)  # bounded depth, as API bodies
        except DocumentError as e:
            raise KdsDecodeError(key, f"{where}: spec is {e}") from None
    message = spec_message(rtype.name)
    if message is None or packed.type_url != type_url(message):
        expected = repr(type_url(message)) if message else "JSON with an empty type URL"
        raise KdsDecodeError(key, f"{where}: spec is the protobuf message {packed.type_url!r}; a {rtype.name} "
                                  f"spec must be {expected}")
    msg = message()
    try:
        msg.ParseFromString(packed.value)
    except DecodeError as e:
        raise KdsDecodeError(key, f"{where}: spec is not a valid {message.DESCRIPTOR.full_name} message: {e}") \
            from None
    try:
        return from_proto(msg)
    except ProtoSpecError as e:
        raise KdsDecodeError(key, f"{where}: {e}") from None


def batch(type_url: str, upserts: Iterable[WireResource], removals: Iterable[str], *,
          max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[list[discovery_pb2.DeltaDiscoveryResponse],
                                                               list[WireResource]]:
    """One type's changes as Delta responses, each under `max_bytes` serialised. Returns (responses, too_big):
    a resource that alone exceeds the cap cannot be sent at all; the caller reports it. Nonces are the caller's.
    Removals go first so a peer that applies in order never holds a deleted and a new resource at once."""
    budget = max_bytes - _RESPONSE_OVERHEAD - len(type_url)
    out: list[discovery_pb2.DeltaDiscoveryResponse] = []
    too_big: list[WireResource] = []
    current = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url)
    used = 0

    def room(cost: int) -> None:
        nonlocal current, used
        if used + cost > budget and used > 0:
            out.append(current)
            current = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url)
            used = 0
        used += cost

    for key in removals:
        room(_field_cost(len(key.encode())))
        current.removed_resources.append(key)
    for w in upserts:
        cost = _field_cost(w.message.ByteSize())
        if cost > budget:
            too_big.append(w)
            continue
        room(cost)
        current.resources.append(w.message)
    if used > 0 or not out:
        out.append(current)
    return out, too_big


def _field_cost(size: int) -> int:
    """Bytes a length-delimited field of `size` takes: its tag, its length varint, the bytes."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size
