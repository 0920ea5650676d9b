"""Specs Kuma defines in protobuf, converted between our camelCase wire dict and Kuma's messages.

Kuma sends Mesh, Dataplane, ZoneIngress, Secret and GlobalSecret as their protobuf messages in `KumaResource.spec`
(`pkg/core/resources/model.ToAny`: a deterministic `anypb.New`), and the targetRef policies as JSON. Our pydantic
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
- proto3 scalars have no presence: an empty string, a zero port or an empty list reads back as unset (Kuma gives
  them the same meaning).

Reading a message never drops a field silently: fields Kuma has and kuma-vm does not implement are declared in the
.proto (as `Unsupported` stand-ins where their shape does not matter) and reach our model, which refuses them
with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from controlplane.resources.fields import parse_duration

from . import kuma_mesh_specs_pb2 as mesh_pb
from . import kuma_system_specs_pb2 as system_pb

# Resource type name -> the message Kuma sends its spec as.
SPEC_MESSAGES: dict[str, type[Message]] = {
    "Mesh": mesh_pb.Mesh,
    "Dataplane": mesh_pb.Dataplane,
    "ZoneIngress": mesh_pb.ZoneIngress,
    "Secret": system_pb.Secret,
    "GlobalSecret": system_pb.Secret,
}

_DURATION = "google.protobuf.Duration"
_STRUCT = "google.protobuf.Struct"
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
    cls = SPEC_MESSAGES[type_name]
    data = _walk(cls.DESCRIPTOR, wire, _encode_value, "")
    msg = cls()
    try:
        json_format.ParseDict(data, msg)
    except json_format.ParseError as e:
        raise ProtoSpecError(f"spec does not fit {cls.DESCRIPTOR.full_name}: {e}") from None
    return msg


def from_proto(msg: Message) -> dict[str, Any]:
    """Kuma's message as our spec's wire dict (validated afterwards by the resource model)."""
    data = json_format.MessageToDict(msg)
    out = _walk(msg.DESCRIPTOR, data, _decode_value, "")
    assert isinstance(out, dict)
    return out


def _encode_value(field: FieldDescriptor, value: Any, path: str) -> Any:
    if field.message_type is not None and field.message_type.full_name == _DURATION and isinstance(value, str):
        try:
            micros = round(parse_duration(value).total_seconds() * 1_000_000)
        except ValueError as e:
            raise ProtoSpecError(f"{path}: {e}") from None
        seconds, frac = divmod(micros, 1_000_000)
        return f"{seconds}.{frac:06d}s" if frac else f"{seconds}s"
    return value


def _decode_value(field: FieldDescriptor, value: Any, path: str) -> Any:
    if field.message_type is not None and field.message_type.full_name == _STRUCT:
        return _integral_floats_as_ints(value)
    if field.message_type is not None and field.message_type.full_name == _DURATION and isinstance(value, str):
        return go_duration(value)
    return value


def go_duration(seconds_text: str) -> str:
    """Protobuf JSON's '5400s' / '0.500s' as Go-style text without zero parts ('1h30m', '500ms'), so what an
    operator usually writes ('1m', '10s', '1h30m', '500ms') reads back exactly as written."""
    micros = round(float(seconds_text.removesuffix("s")) * 1_000_000)
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


def _walk(desc: Descriptor, data: Any, fix: Callable[[FieldDescriptor, Any, str], Any], path: str) -> Any:
    """A copy of `data` (the JSON form of a `desc` message) with `fix` applied to every field value, nested
    messages first. Keys that are not fields of `desc` are kept: ParseDict refuses them, naming them."""
    if not isinstance(data, dict):
        return data
    if fix is _decode_value and desc.full_name in _PROTO3_ZEROS:
        data = {**_PROTO3_ZEROS[desc.full_name], **data}
    by_json = {f.json_name: f for f in desc.fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = by_json.get(key)
        if field is None:
            out[key] = value
            continue
        where = f"{path}.{key}" if path else key
        sub = field.message_type
        nested = sub is not None and not sub.GetOptions().map_entry and sub.full_name.startswith("kuma.")
        if field.is_repeated and isinstance(value, list):
            items = [_walk(sub, v, fix, f"{where}[{i}]") if nested and sub else v for i, v in enumerate(value)]
            out[key] = [fix(field, v, f"{where}[{i}]") for i, v in enumerate(items)]
        else:
            out[key] = fix(field, _walk(sub, value, fix, where) if nested and sub else value, where)
    return out
