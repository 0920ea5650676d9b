"""KDS wire form: encode/decode round trips, names and the zone hash suffix, errors naming the field, batching."""

from __future__ import annotations

import json

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from controlplane.kds import kds_pb2
from controlplane.kds.codec import KUMA_RESOURCE_TYPE_URL, KdsDecodeError, batch, decode, encode
from controlplane.kds.naming import (
    BadWireKey,
    fnv1a64,
    hash_suffix,
    parse_wire_key,
    wire_key,
    zone_labels,
    zone_qualified_name,
)
from controlplane.resources import from_wire, load_all
from controlplane.resources.base import REGISTRY
from controlplane.resources.mesh import MESH
from controlplane.resources.zone import ZONE_INGRESS

load_all()
MESH_TIMEOUT = REGISTRY.by_name("MeshTimeout")
DATAPLANE = REGISTRY.by_name("Dataplane")


def timeout(name: str = "t1", mesh: str = "default", idle: str = "5s") -> object:
    return from_wire({"type": "MeshTimeout", "name": name, "mesh": mesh, "labels": {"team": "a"},
                      "spec": {"targetRef": {"kind": "Mesh"},
                               "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": idle}}]}})


def dataplane(name: str = "backend-1.ns") -> object:
    return from_wire({"type": "Dataplane", "name": name, "mesh": "default",
                      "networking": {"address": "10.0.0.1",
                                     "inbound": [{"port": 8080, "tags": {"kuma.io/service": "backend"}}]}})


def test_policy_round_trip_with_json_spec_and_kuma_resource_any() -> None:
    r = timeout()
    w = encode(r)
    assert w.key == "t1.default" and w.message.name == "t1.default" and w.message.version == w.version
    assert w.message.resource.type_url == KUMA_RESOURCE_TYPE_URL
    kr = kds_pb2.KumaResource.FromString(w.message.resource.value)
    assert kr.spec.type_url == ""  # targetRef policies travel as JSON, as Kuma sends them
    assert json.loads(kr.spec.value)["to"][0]["default"] == {"idleTimeout": "5s"}
    assert (kr.meta.name, kr.meta.mesh, dict(kr.meta.labels)) == ("t1", "default", {"team": "a"})
    back = decode(MESH_TIMEOUT, w.message)
    assert back.key == r.key and back.spec == r.spec and dict(back.meta.labels) == {"team": "a"}


def test_flat_and_global_scoped_types_round_trip_with_kubernetes_names() -> None:
    dp = dataplane("backend-1.kuma-demo")  # a Kubernetes zone's name.namespace
    w = encode(dp)
    assert w.key == "backend-1.kuma-demo.default"
    back = decode(DATAPLANE, w.message)
    assert (back.meta.name, back.meta.mesh) == ("backend-1.kuma-demo", "default") and back.spec == dp.spec
    mesh = from_wire({"type": "Mesh", "name": "payments"})
    wm = encode(mesh)
    assert wm.key == "payments."
    assert decode(MESH, wm.message).meta.name == "payments"


def test_version_is_the_content_hash_and_ignores_the_store_version() -> None:
    a = encode(timeout())
    assert encode(timeout().with_meta(version=7)).version == a.version  # same content, other store version
    assert encode(timeout(idle="6s")).version != a.version
    assert encode(timeout().with_meta(labels={"team": "b"})).version != a.version


def test_decode_errors_name_the_resource_and_the_field() -> None:
    w = encode(timeout(idle="5s"))
    kr = kds_pb2.KumaResource.FromString(w.message.resource.value)
    kr.spec.value = json.dumps({"targetRef": {"kind": "Mesh"},
                                "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "soon"}}]}).encode()
    bad = discovery_pb2.Resource(name=w.key, version="x", resource=any_pb2.Any(
        type_url=KUMA_RESOURCE_TYPE_URL, value=kr.SerializeToString()))
    with pytest.raises(KdsDecodeError) as e:
        decode(MESH_TIMEOUT, bad)
    assert "MeshTimeout 't1.default'" in str(e.value) and "spec.to[0].default.idleTimeout" in str(e.value)
    assert e.value.key == "t1.default"


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda m: setattr(m, "name", "other.default"), "the Delta key says otherwise"),
    (lambda m: setattr(m, "name", "nodot"), "is not '<name>.<mesh>'"),
    (lambda m: setattr(m.resource, "type_url", "type.googleapis.com/x.Y"), "expected 'type.googleapis.com/kuma"),
    (lambda m: setattr(m.resource, "value", b"\xff\xff"), "not a valid KumaResource"),
])
def test_decode_refuses_malformed_envelopes(mutate: object, expected: str) -> None:
    m = discovery_pb2.Resource()
    m.CopyFrom(encode(timeout()).message)
    mutate(m)  # type: ignore[operator]
    with pytest.raises(KdsDecodeError, match="MeshTimeout") as e:
        decode(MESH_TIMEOUT, m)
    assert expected in str(e.value)


def test_decode_refuses_a_protobuf_spec_for_a_json_type_with_a_reason() -> None:
    w = encode(timeout())
    kr = kds_pb2.KumaResource.FromString(w.message.resource.value)
    kr.spec.type_url = "type.googleapis.com/kuma.mesh.v1alpha1.MeshTimeout"
    w.message.resource.value = kr.SerializeToString()
    with pytest.raises(KdsDecodeError, match=r"protobuf message .* must be JSON with an empty type URL"):
        decode(MESH_TIMEOUT, w.message)


def test_wire_keys() -> None:
    assert wire_key(ZONE_INGRESS, "zi-1", "") == "zi-1."
    assert parse_wire_key(ZONE_INGRESS, "zi-1.ns.") == ("zi-1.ns", "")
    assert parse_wire_key(DATAPLANE, "a.b.mesh-1") == ("a.b", "mesh-1")
    with pytest.raises(BadWireKey, match="names no mesh"):
        parse_wire_key(DATAPLANE, "a.")
    with pytest.raises(BadWireKey, match="is not part of a mesh"):
        parse_wire_key(ZONE_INGRESS, "a.default")


def test_zone_hash_suffix_is_kumas() -> None:
    # FNV-1a-64 reference vectors
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    # hex of 0xaf63dc4c8601ec8c, each digit's code point mod 27 into the alphabet
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    expected = "".join(alphabet[ord(c) % 27] for c in "af63dc4c8601ec8c")
    assert hash_suffix("a") == expected
    name = zone_qualified_name("backend-1", "default", "zone-1")
    assert name == f"backend-1-{hash_suffix('default', 'backend-1', 'zone-1', '')}" and len(name) == 9 + 17
    assert zone_qualified_name("backend-1", "default", "zone-2") != name
    assert zone_qualified_name("backend-1", "default", "zone-1", "ns") != name
    long = zone_qualified_name("x" * 300, "default", "zone-1")
    assert len(long) == 253 and long.startswith("x" * 236 + "-")
    labels = zone_labels({"a": "b"}, "backend-1", "zone-1")
    assert labels == {"a": "b", "kuma.io/origin": "zone", "kuma.io/zone": "zone-1",
                      "kuma.io/display-name": "backend-1"}
    spoofed = zone_labels({"kuma.io/origin": "global", "kuma.io/zone": "zone-2", "kuma.io/display-name": "x"},
                          "backend-1", "zone-1")
    assert spoofed == {"kuma.io/origin": "zone", "kuma.io/zone": "zone-1", "kuma.io/display-name": "backend-1"}


def test_batching_splits_one_type_under_the_cap() -> None:
    items = [encode(timeout(name=f"t{i:03d}", idle=f"{i + 1}s")) for i in range(200)]
    size = items[0].message.ByteSize()
    cap = size * 20 + 600
    removals = [f"gone{i}.default" for i in range(50)]
    responses, too_big = batch("MeshTimeout", items, removals, max_bytes=cap)
    assert not too_big and len(responses) > 10
    assert all(r.ByteSize() <= cap for r in responses)
    assert all(r.type_url == "MeshTimeout" for r in responses)
    assert [x.name for r in responses for x in r.resources] == [w.key for w in items]
    assert [k for r in responses for k in r.removed_resources] == removals
    one, _ = batch("MeshTimeout", items, removals)  # the default 4 MiB holds all of them
    assert len(one) == 1


def test_batching_reports_a_resource_over_the_cap_and_sends_the_rest() -> None:
    small = encode(timeout(name="small"))
    big = encode(timeout(name="big" + "x" * 200))
    responses, too_big = batch("MeshTimeout", [small, big], [], max_bytes=small.message.ByteSize() + 560)
    assert too_big == [big]
    assert [x.name for r in responses for x in r.resources] == ["small.default"]


def test_an_empty_change_is_one_empty_response() -> None:
    responses, too_big = batch("Mesh", [], [])
    assert len(responses) == 1 and not responses[0].resources and not too_big


@pytest.mark.parametrize(("value", "expected"), [
    (b'{"targetRef":' * 150 + b"{}" + b"}" * 150, "nested deeper than 100 levels"),
    (b'{"targetRef": ', "not valid JSON"),
    (b'{"a": "\xff"}', "not UTF-8"),
])
def test_json_specs_too_deep_or_broken_are_refused_with_the_reason(value: bytes, expected: str) -> None:
    w = encode(timeout())
    kr = kds_pb2.KumaResource.FromString(w.message.resource.value)
    kr.spec.value = value
    w.message.resource.value = kr.SerializeToString()
    with pytest.raises(KdsDecodeError, match=expected):
        decode(MESH_TIMEOUT, w.message)
