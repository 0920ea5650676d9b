"""Specs Kuma defines in protobuf, converted between our camelCase wire dict and Kuma's messages.

Kuma sends Mesh, Dataplane, ZoneIngress, DataplaneInsight, ZoneIngressInsight, Secret and GlobalSecret as their
protobuf messages in `KumaResource.spec` (`pkg/core/resources/model.ToAny`: a deterministic `anypb.New`), and the
targetRef policies as JSON. kuma-vm's ControlPlaneInstance (a zone instance's heartbeat, which Kuma does not
have) travels as a message of ours beside Secret (kuma_system_specs.proto). Our pydantic
specs' wire dicts have the shape of Kuma's protobuf JSON (camelCase json names), so the conversion is the protobuf
JSON mapping plus the few places where our model and proto3 disagree:

- Durations: ours are Go-style text ('1m', '500ms'); protobuf JSON wants seconds ('60s'). Sent as the exact
  Duration (microsecond precision, as our durations are parsed); read back as Go-style text without zero parts
  ('1h30m', '500ms'): the same duration, the same bytes when sent again, and the text an operator usually writes
  ('1d' reads back as '24h', '90s' as '1m30s').
- Struct (a CA backend's `conf`): protobuf keeps every number as a double; integral ones are read back as ints
  (our conf models are typed strictly: `RSAbits: 2048`).
- Defaults: our inbound `health.ready` defaults to true and an available service's `instances` to 1, where
  proto3 has false and 0; a message read without them means proto3's zero, as Kuma reads it.
- Times: ours are RFC 3339 text (`wire_time`), Kuma's insights hold Timestamps; read back as `wire_time` writes
  them. A subscription's `kumaDpVersion`/`envoyVersion` are Kuma's `version.kumaDp.version`/`version.envoy.version`.
- proto3 scalars have no presence: an empty string, a zero port or an empty list reads back as unset (Kuma gives
  them the same meaning).

Reading a message never drops a configuration field silently: fields Kuma has and kuma-vm does not implement are
declared in the .proto (as `Unsupported` stand-ins where their shape does not matter) and reach our model, which
refuses them with a message naming the field. Only the insights drop what kuma-vm's summary of them does not keep
(`_INSIGHT_EXTRAS`). Fields kuma-vm adds (numbered from 1001) are kept as unknown fields by a Kuma peer.
"""

from __future__ import annotations

import base64
import functools
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from controlplane.resources.codec import wire_time
from controlplane.resources.fields import parse_duration

from . import kuma_mesh_specs_pb2 as mesh_pb
from . import kuma_system_specs_pb2 as system_pb

# Resource type name -> the message Kuma sends its spec as.
SPEC_MESSAGES: dict[str, type[Message]] = {
    "Mesh": mesh_pb.Mesh,
    "Dataplane": mesh_pb.Dataplane,
    "ZoneIngress": mesh_pb.ZoneIngress,
    "DataplaneInsight": mesh_pb.DataplaneInsight,
    "ZoneIngressInsight": mesh_pb.ZoneIngressInsight,
    "Secret": system_pb.Secret,
    "GlobalSecret": system_pb.Secret,
    # kuma-vm's own (Kuma has no such type): a zone instance's heartbeat, a Timestamp like the insights' times.
    "ControlPlaneInstance": system_pb.ControlPlaneInstance,
}

_DURATION = "google.protobuf.Duration"
_STRUCT = "google.protobuf.Struct"
_TIMESTAMP = "google.protobuf.Timestamp"
_BYTES_VALUE = "google.protobuf.BytesValue"
_WRAPPERS = "google.protobuf."  # the other wrappers (BoolValue, UInt32Value): {value: ...}
_SUBSCRIPTION = "kuma.mesh.v1alpha1.DiscoverySubscription"
# Parts of Kuma's insights kuma-vm's summary does not keep: dropped on reading rather than refused (an insight
# is the zone's report of its proxies, not configuration).
_INSIGHT_EXTRAS: dict[str, tuple[str, ...]] = {
    "kuma.mesh.v1alpha1.DataplaneInsight": ("metadata", "openTelemetry"),
    "kuma.mesh.v1alpha1.DataplaneInsight.MTLS": ("issuedBackend", "supportedBackends"),
    "kuma.mesh.v1alpha1.ZoneIngressInsight": ("metadata",),
    _SUBSCRIPTION: ("generation",),
}
# proto3 scalars whose zero value our model's default is not: a message read without them means the zero value.
_PROTO3_ZEROS: dict[str, dict[str, Any]] = {
    "kuma.mesh.v1alpha1.Dataplane.Networking.Inbound.Health": {"ready": False},
    "kuma.mesh.v1alpha1.ZoneIngress.AvailableService": {"instances": 0},
}


class ProtoSpecError(ValueError):
    """A spec that does not fit the message; the text names the field."""


def type_url(message: type[Message]) -> str:
    return f"type.googleapis.com/{message.DESCRIPTOR.full_name}"


def spec_message(type_name: str) -> type[Message] | None:
    return SPEC_MESSAGES.get(type_name)


def to_proto(type_name: str, wire: dict[str, Any]) -> Message:
    """Our spec's wire dict (spec.to_wire()) as Kuma's message for `type_name`."""
    msg = SPEC_MESSAGES[type_name]()
    _fill(msg, wire, "")
    return msg


def from_proto(msg: Message) -> dict[str, Any]:
    """Kuma's message as our spec's wire dict (validated afterwards by the resource model)."""
    try:
        return _read(msg)
    except (ValueError, OverflowError, json_format.Error) as e:  # a Timestamp past 9999, a NaN in a Struct
        raise ProtoSpecError(f"spec does not convert from {msg.DESCRIPTOR.full_name}: {e}") from None


# Built by hand rather than with json_format.ParseDict/MessageToDict, which follow the same JSON mapping but
# cost several times more: every Dataplane a zone syncs goes through here.

def _fill(msg: Message, data: Any, path: str) -> None:
    desc = msg.DESCRIPTOR
    if not isinstance(data, dict):
        raise ProtoSpecError(f"{path or 'spec'}: must be an object for {desc.full_name}")
    fields = _json_fields(desc)
    if desc.full_name == _SUBSCRIPTION:
        data = _versions_nested(data)
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        field = fields.get(key)
        if field is None:
            raise ProtoSpecError(f"{where}: {desc.full_name} has no such field")
        try:
            if _is_map(field):
                getattr(msg, field.name).update(value)
            elif field.is_repeated:
                target = getattr(msg, field.name)
                if field.message_type is None:
                    target.extend(value)
                else:
                    for i, item in enumerate(value):
                        _fill_message(target.add(), item, f"{where}[{i}]")
            elif field.message_type is not None:
                _fill_message(getattr(msg, field.name), value, where)
            elif field.enum_type is not None:
                setattr(msg, field.name, field.enum_type.values_by_name[value].number)
            else:
                setattr(msg, field.name, value)
        except (TypeError, ValueError, KeyError) as e:
            raise ProtoSpecError(f"{where}: {value!r} does not fit {desc.full_name}.{field.name}: {e}") from None


def _fill_message(sub: Message, value: Any, where: str) -> None:
    sub.SetInParent()  # present even when empty (`tcp: {}`) or zero (`passthrough: false`)
    name = sub.DESCRIPTOR.full_name
    if name == _DURATION:
        try:
            micros = round(parse_duration(value).total_seconds() * 1_000_000)
        except (ValueError, AttributeError) as e:
            raise ProtoSpecError(f"{where}: {e}") from None
        sub.FromNanoseconds(micros * 1000)
    elif name == _TIMESTAMP:
        try:
            sub.FromDatetime(datetime.fromisoformat(value))
        except (TypeError, ValueError) as e:
            raise ProtoSpecError(f"{where}: {value!r} is not an RFC 3339 time: {e}") from None
    elif name == _STRUCT:
        sub.update(value)
    elif name == _BYTES_VALUE:
        sub.value = base64.b64decode(value, validate=True)
    elif name.startswith(_WRAPPERS):
        sub.value = value
    else:
        _fill(sub, value, where)


def _read(msg: Message) -> dict[str, Any]:
    desc = msg.DESCRIPTOR
    out: dict[str, Any] = dict(_PROTO3_ZEROS.get(desc.full_name, {}))
    for field, value in msg.ListFields():  # what is set: proto3 defaults are left out, as MessageToDict does
        if _is_map(field):
            out[field.json_name] = dict(value)
        elif field.is_repeated:
            out[field.json_name] = [_read_value(field, v) for v in value]
        else:
            out[field.json_name] = _read_value(field, value)
    for extra in _INSIGHT_EXTRAS.get(desc.full_name, ()):
        out.pop(extra, None)
    return _versions_flat(out) if desc.full_name == _SUBSCRIPTION else out


def _read_value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is None:
        if field.enum_type is not None:
            known = field.enum_type.values_by_number.get(value)
            return known.name if known is not None else value  # an unknown number: the model refuses it
        return value
    name = field.message_type.full_name
    if name == _DURATION:
        return go_duration(value.ToNanoseconds())
    if name == _TIMESTAMP:
        return wire_time(value.ToDatetime(tzinfo=UTC))
    if name == _STRUCT:
        return _integral_floats_as_ints(json_format.MessageToDict(value))
    if name == _BYTES_VALUE:
        return base64.b64encode(value.value).decode()
    if name.startswith(_WRAPPERS):
        return value.value
    return _read(value)


def _versions_nested(sub: dict[str, Any]) -> dict[str, Any]:
    """Our subscription's `kumaDpVersion` and `envoyVersion` as Kuma's `version: {kumaDp: {version}, envoy:
    {version}}`."""
    if "kumaDpVersion" not in sub and "envoyVersion" not in sub:
        return sub
    out = {k: v for k, v in sub.items() if k not in ("kumaDpVersion", "envoyVersion")}
    version: dict[str, Any] = {}
    if "kumaDpVersion" in sub:
        version["kumaDp"] = {"version": sub["kumaDpVersion"]}
    if "envoyVersion" in sub:
        version["envoy"] = {"version": sub["envoyVersion"]}
    out["version"] = version
    return out


def _versions_flat(sub: dict[str, Any]) -> dict[str, Any]:
    """Kuma's `version` of a subscription as our `kumaDpVersion` and `envoyVersion` (the rest is dropped)."""
    version = sub.pop("version", None) or {}
    if "version" in version.get("kumaDp", {}):
        sub["kumaDpVersion"] = version["kumaDp"]["version"]
    if "version" in version.get("envoy", {}):
        sub["envoyVersion"] = version["envoy"]["version"]
    return sub


@functools.cache
def _json_fields(desc: Descriptor) -> dict[str, FieldDescriptor]:
    return {f.json_name: f for f in desc.fields}


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def go_duration(nanos: int) -> str:
    """A Duration as Go-style text without zero parts ('1h30m', '500ms'), so what an operator usually writes
    ('1m', '10s', '1h30m', '500ms') reads back exactly as written."""
    micros = round(nanos / 1000)
    if micros == 0:
        return "0s"
    if micros < 1_000_000:
        return f"{micros // 1000}ms" if micros % 1000 == 0 else f"{micros}us"
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    secs, frac = divmod(rest, 1_000_000)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if frac:
        out += f"{secs}.{frac:06d}".rstrip("0") + "s"
    elif secs:
        out += f"{secs}s"
    return out


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value
