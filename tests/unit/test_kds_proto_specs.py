"""Specs Kuma sends as protobuf (Mesh, Dataplane, ZoneIngress, Secret, GlobalSecret): Kuma's names and numbers,
lossless round trips of every example resource, and a Kuma peer's fields we do not implement refused by name."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from controlplane.ca import CaManager
from controlplane.kds import kds_pb2
from controlplane.kds import kuma_mesh_specs_pb2 as mesh_pb
from controlplane.kds import kuma_system_specs_pb2 as system_pb
from controlplane.kds.codec import KdsDecodeError, decode, encode
from controlplane.kds.proto_specs import SPEC_MESSAGES, go_duration
from controlplane.kds.types import summarise_insight
from controlplane.resources import from_wire, load_all
from controlplane.resources.base import REGISTRY, Resource
from controlplane.resources.mesh import MESH
from controlplane.resources.secret import SECRET
from controlplane.store.base import ListQuery
from controlplane.store.memory import MemoryStore
from tests.unit import xds_fixtures

load_all()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

RICH: list[dict[str, Any]] = [
    {"type": "Mesh", "name": "all-fields",
     "mtls": {"enabledBackend": "ca-1", "backends": [
         {"name": "ca-1", "type": "builtin", "mode": "PERMISSIVE",
          "dpCert": {"rotation": {"expiration": "1d"}, "requestTimeout": "1m"},
          "conf": {"caCert": {"RSAbits": 2048, "expiration": "10y"}}}]},
     "networking": {"outbound": {"passthrough": False}},
     "routing": {"localityAwareLoadBalancing": True, "zoneEgress": True,
                 "defaultForbidMeshExternalServiceAccess": True},
     "constraints": {"dataplaneProxy": {"requirements": [{"tags": {"kuma.io/zone": "zone-1"}}],
                                        "restrictions": [{"tags": {"team": "*"}}, {"tags": {"env": "dev"}}]}},
     "skipCreatingInitialPolicies": ["*"]},
    {"type": "Mesh", "name": "provided-ca",
     "mtls": {"enabledBackend": "ca-2", "backends": [
         {"name": "ca-2", "type": "provided",
          "conf": {"cert": {"secret": "ca-cert"}, "key": {"inline": base64.b64encode(b"pem").decode()}}}]},
     "constraints": {"dataplaneProxy": {"requirements": [{"tags": {"kuma.io/service": "*"}}]}}},
    {"type": "Mesh", "name": "passthrough-on", "networking": {"outbound": {"passthrough": True}}},
    {"type": "Dataplane", "name": "backend-1.kuma-demo", "mesh": "default", "labels": {"team": "a"},
     "networking": {
         "address": "10.0.0.1", "advertisedAddress": "198.18.0.9",
         "inbound": [
             {"port": 8080, "servicePort": 9090, "serviceAddress": "127.0.0.2", "address": "10.0.0.2",
              "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http", "version": "v1"},
              "health": {"ready": False}, "state": "NotReady",
              "serviceProbe": {"interval": "1s", "timeout": "500ms", "healthyThreshold": 2,
                               "unhealthyThreshold": 3, "tcp": {}}},
             {"port": 8081, "tags": {"kuma.io/service": "backend-admin"}, "health": {"ready": True},
              "state": "Ignored", "serviceProbe": {"interval": "1h30m"}}],
         "outbound": [{"port": 10001, "tags": {"kuma.io/service": "db"}},
                      {"port": 80, "address": "127.0.0.5", "tags": {"kuma.io/service": "web"}}],
         "admin": {"port": 9901},
         "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001,
                                 "directAccessServices": ["*"]}}},
    {"type": "Dataplane", "name": "edge", "mesh": "default",
     "networking": {"address": "10.0.0.3", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}}},
    {"type": "Dataplane", "name": "delegated", "mesh": "default",
     "networking": {"address": "gw.example", "gateway": {"tags": {"kuma.io/service": "kong"}},
                    "outbound": [{"port": 10002, "tags": {"kuma.io/service": "web"}}]}},
    {"type": "ZoneIngress", "name": "ingress-1.kuma-system", "zone": "zone-1",
     "networking": {"address": "10.0.1.1", "port": 10001, "advertisedAddress": "198.18.0.1", "advertisedPort": 10001},
     "availableServices": [
         {"tags": {"kuma.io/service": "backend", "version": "v1"}, "instances": 2, "mesh": "default",
          "ports": [8080, 9090]},
         {"tags": {"kuma.io/service": "httpbin"}, "instances": 0, "mesh": "other", "externalService": True}]},
    {"type": "ZoneIngress", "name": "bare", "networking": {"address": "10.0.1.2", "port": 10002}},
    {"type": "Secret", "name": "ca-cert", "mesh": "default", "data": base64.b64encode(b"-----BEGIN").decode()},
    {"type": "Secret", "name": "empty", "mesh": "default", "data": ""},
    {"type": "GlobalSecret", "name": "zone-token-signing-key-1", "data": base64.b64encode(bytes(range(256))).decode()},
    {"type": "DataplaneInsight", "name": "backend-1.kuma-demo", "mesh": "default",
     "subscriptions": [
         {"id": "7", "controlPlaneInstanceId": "cp-1", "connectTime": "2026-06-01T12:00:00Z",
          "disconnectTime": "2026-06-01T12:05:00.250000Z",
          "status": {"lastUpdateTime": "2026-06-01T12:04:59.123456Z",
                     "total": {"responsesSent": 9, "responsesAcknowledged": 8, "responsesRejected": 1},
                     "cds": {"responsesSent": 2, "responsesAcknowledged": 2}, "sds": {"responsesSent": 4}},
          "configVersion": "CDS:a1,LDS:b2", "kumaDpVersion": "2.9.0", "envoyVersion": "1.31.2",
          "lastNack": {"type": "LDS", "version": "b3", "errorDetail": "bad listener",
                       "time": "2026-06-01T12:01:00.000001Z"}},
         {"id": "8", "controlPlaneInstanceId": "cp-2", "connectTime": "2026-06-01T12:06:00Z",
          "status": {"lastUpdateTime": "2026-06-01T12:06:01Z"}, "envoyVersion": "1.31.2"}],
     "mTLS": {"certificateExpirationTime": "2026-06-02T12:00:00Z",
              "lastCertificateRegeneration": "2026-06-01T12:00:00Z", "certificateRegenerations": 3},
     "hostDns": {"state": "configured", "message": "systemd-resolved: ~mesh", "time": "2026-06-01T12:00:01Z"}},
    {"type": "DataplaneInsight", "name": "empty", "mesh": "default"},
    {"type": "DataplaneInsight", "name": "no-certs-yet", "mesh": "default", "mTLS": {"certificateRegenerations": 0},
     "subscriptions": [{"id": "1", "controlPlaneInstanceId": "cp-1", "connectTime": "2026-06-01T12:00:00Z"}]},
    {"type": "ZoneIngressInsight", "name": "ingress-1",
     "subscriptions": [{"id": "1", "controlPlaneInstanceId": "cp-1", "connectTime": "2026-06-01T12:00:00Z",
                        "status": {"total": {"responsesSent": 1}}, "kumaDpVersion": "2.9.0"}]},
    {"type": "ControlPlaneInstance", "name": "cp-host.example-1a2b3c4d", "mode": "zone", "zone": "zone-1",
     "version": "0.1.0", "startTime": "2026-06-01T12:00:00Z", "lastHeartbeatTime": "2026-06-01T12:04:59.123456Z"},
    {"type": "ControlPlaneInstance", "name": "standalone", "mode": "zone",  # no zone name: proto3's ""
     "startTime": "2026-06-01T12:00:00Z", "lastHeartbeatTime": "2026-06-01T12:00:00Z"},
]


def _examples() -> list[Resource]:
    """The resources the repository's examples and test fixtures define, and one of every field."""
    out = [from_wire(doc) for doc in RICH]
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        text = path.read_text().replace("{{ name }}", path.stem).replace("{{ address }}", "10.9.9.9")
        out += [from_wire(d) for d in yaml.safe_load_all(text) if d and d.get("type") in SPEC_MESSAGES]
    out += [summarise_insight(r) for r in out if r.type.name.endswith("Insight")]  # what a zone sends
    out += [xds_fixtures.mesh(), xds_fixtures.mesh("m2", mtls="STRICT"),
            xds_fixtures.dataplane("web-1", "web", port=15001, service_port=18001, protocol="http",
                                   outbounds=[(10002, "backend")], extra_tags={"version": "v2"})]
    return out


EXAMPLE_RESOURCES = _examples()


@pytest.mark.parametrize("resource", EXAMPLE_RESOURCES, ids=lambda r: f"{r.type.name}-{r.meta.name}")
def test_round_trip_is_lossless_and_travels_as_kumas_message(resource: Resource) -> None:
    w = encode(resource)
    kr = kds_pb2.KumaResource.FromString(w.message.resource.value)
    message = SPEC_MESSAGES[resource.type.name]
    assert kr.spec.type_url == f"type.googleapis.com/{message.DESCRIPTOR.full_name}"
    message.FromString(kr.spec.value)  # Kuma's message parses it
    back = decode(resource.type, w.message)
    assert back.spec == resource.spec and dict(back.meta.labels) == dict(resource.meta.labels)
    assert encode(back).version == w.version  # what a reconnecting peer declares matches: nothing re-sent


async def test_a_builtin_ca_and_its_secrets_round_trip() -> None:
    store = MemoryStore()
    await store.start()
    mesh = await store.create(xds_fixtures.mesh(mtls="STRICT"))
    await CaManager(store).ensure_backends(mesh)
    secrets = (await store.list(SECRET, ListQuery())).items
    assert secrets
    for r in [mesh, *secrets]:
        assert decode(r.type, encode(r).message).spec == r.spec


def test_names_and_numbers_are_kumas() -> None:
    assert {t: m.DESCRIPTOR.full_name for t, m in SPEC_MESSAGES.items()} == {
        "Mesh": "kuma.mesh.v1alpha1.Mesh", "Dataplane": "kuma.mesh.v1alpha1.Dataplane",
        "ZoneIngress": "kuma.mesh.v1alpha1.ZoneIngress", "Secret": "kuma.system.v1alpha1.Secret",
        "DataplaneInsight": "kuma.mesh.v1alpha1.DataplaneInsight",
        "ZoneIngressInsight": "kuma.mesh.v1alpha1.ZoneIngressInsight",
        "GlobalSecret": "kuma.system.v1alpha1.Secret",
        "ControlPlaneInstance": "kuma.system.v1alpha1.ControlPlaneInstance"}  # kuma-vm's own

    def numbers(desc: Any) -> dict[str, int]:
        return {f.name: f.number for f in desc.fields}
    assert numbers(mesh_pb.Mesh.DESCRIPTOR) == {
        "mtls": 1, "tracing": 2, "logging": 3, "metrics": 4, "networking": 5, "routing": 6, "constraints": 7,
        "skipCreatingInitialPolicies": 8, "meshServices": 9}
    assert numbers(mesh_pb.CertificateAuthorityBackend.DESCRIPTOR) == {
        "name": 1, "type": 2, "dpCert": 3, "conf": 4, "mode": 5, "rootChain": 6}
    assert numbers(mesh_pb.Dataplane.Networking.DESCRIPTOR) == {
        "address": 5, "advertisedAddress": 7, "gateway": 3, "inbound": 1, "outbound": 2, "transparent_proxying": 4,
        "admin": 8, "listeners": 9}
    assert numbers(mesh_pb.Dataplane.Networking.Inbound.DESCRIPTOR) == {
        "port": 3, "servicePort": 4, "serviceAddress": 6, "address": 5, "tags": 2, "health": 7, "serviceProbe": 8,
        "state": 9, "name": 10, "protocol": 11}
    assert numbers(mesh_pb.Dataplane.Networking.Outbound.DESCRIPTOR) == {
        "address": 3, "port": 4, "tags": 5, "backendRef": 6}
    assert numbers(mesh_pb.ZoneIngress.DESCRIPTOR) == {"zone": 1, "networking": 2, "availableServices": 3}
    assert numbers(mesh_pb.ZoneIngress.AvailableService.DESCRIPTOR) == {
        "tags": 1, "instances": 2, "mesh": 3, "externalService": 4, "ports": 1001}  # 1001: kuma-vm's own
    assert numbers(system_pb.Secret.DESCRIPTOR) == {"data": 1}
    assert numbers(mesh_pb.DataplaneInsight.DESCRIPTOR) == {
        "subscriptions": 1, "mTLS": 2, "metadata": 3, "openTelemetry": 4, "hostDns": 1001}
    assert numbers(mesh_pb.ZoneIngressInsight.DESCRIPTOR) == {"subscriptions": 1, "metadata": 2}
    assert numbers(mesh_pb.DiscoverySubscription.DESCRIPTOR) == {
        "id": 1, "control_plane_instance_id": 2, "connect_time": 3, "disconnect_time": 4, "status": 5, "version": 6,
        "generation": 7, "configVersion": 1001, "lastNack": 1002}
    assert numbers(mesh_pb.DiscoverySubscriptionStatus.DESCRIPTOR) == {
        "last_update_time": 1, "total": 2, "cds": 3, "eds": 4, "lds": 5, "rds": 6, "sds": 1001}
    assert numbers(mesh_pb.DiscoveryServiceStats.DESCRIPTOR) == {
        "responses_sent": 1, "responses_acknowledged": 2, "responses_rejected": 3}


def test_bytes_are_kumas() -> None:
    """Hand-assembled bytes as Kuma's Go code writes them (tag = number << 3 | wire type)."""
    mesh = from_wire({"type": "Mesh", "name": "m", "mtls": {"enabledBackend": "c", "backends": [
        {"name": "c", "type": "builtin"}]}})
    kr = kds_pb2.KumaResource.FromString(encode(mesh).message.resource.value)
    backend = b"\x0a\x01c" + b"\x12\x07builtin"
    mtls = b"\x0a\x01c" + b"\x12" + bytes([len(backend)]) + backend
    assert kr.spec.value == b"\x0a" + bytes([len(mtls)]) + mtls
    secret = from_wire({"type": "Secret", "name": "s", "mesh": "m", "data": base64.b64encode(b"hi").decode()})
    kr = kds_pb2.KumaResource.FromString(encode(secret).message.resource.value)
    assert kr.spec.value == b"\x0a\x04\x0a\x02hi"  # BytesValue{value=1: "hi"} in field 1


def _kuma_peer_sends(rtype_name: str, msg: Any, name: str = "x", mesh: str = "") -> Resource:
    """Decode a spec as a Kuma peer would pack it."""
    rtype = REGISTRY.by_name(rtype_name)
    assert rtype is not None
    kr = kds_pb2.KumaResource(meta=kds_pb2.KumaResource.Meta(name=name, mesh=mesh),
                              spec=any_pb2.Any(type_url=f"type.googleapis.com/{msg.DESCRIPTOR.full_name}",
                                               value=msg.SerializeToString()))
    res = discovery_pb2.Resource(name=f"{name}.{mesh}", resource=any_pb2.Any(
        type_url="type.googleapis.com/kuma.mesh.v1alpha1.KumaResource", value=kr.SerializeToString()))
    return decode(rtype, res)


def test_a_kuma_peers_message_is_read() -> None:
    inbound = mesh_pb.Dataplane.Networking.Inbound(port=8080, tags={"kuma.io/service": "b"}, health={})
    dp = mesh_pb.Dataplane(networking=mesh_pb.Dataplane.Networking(address="10.0.0.1", inbound=[inbound]))
    got = _kuma_peer_sends("Dataplane", dp, "b-1.ns", "default").spec.to_wire()
    # An empty Health message is Kuma's "ready: false" (proto3 default), not our model's default true.
    assert got["networking"]["inbound"][0]["health"] == {"ready": False}
    probe = mesh_pb.Dataplane.Networking.Inbound.ServiceProbe()
    probe.interval.FromSeconds(90)
    inbound = mesh_pb.Dataplane.Networking.Inbound(port=8080, tags={"kuma.io/service": "b"}, serviceProbe=probe)
    dp = mesh_pb.Dataplane(networking=mesh_pb.Dataplane.Networking(address="10.0.0.1", inbound=[inbound]))
    got = _kuma_peer_sends("Dataplane", dp, "b-1", "default").spec.to_wire()
    assert got["networking"]["inbound"][0]["serviceProbe"] == {"interval": "1m30s"}


def test_a_kuma_zones_insight_is_read_keeping_what_our_summary_holds() -> None:
    sub = mesh_pb.DiscoverySubscription(id="s1", control_plane_instance_id="cp", generation=4)
    sub.connect_time.FromSeconds(1_780_000_000)
    sub.version.kumaDp.version, sub.version.kumaDp.gitTag = "2.9.0", "v2.9.0"
    sub.version.envoy.version = "1.31.2"
    sub.status.total.responses_sent = 70_000  # uint64 counters are numbers
    insight = mesh_pb.DataplaneInsight(subscriptions=[sub])
    insight.metadata.update({"from": "kuma"})
    insight.mTLS.issuedBackend = "ca-1"
    got = _kuma_peer_sends("DataplaneInsight", insight, "b-1.ns", "default").spec.to_wire()
    [s] = got["subscriptions"]
    assert s["kumaDpVersion"] == "2.9.0" and s["envoyVersion"] == "1.31.2" and "generation" not in s
    assert s["connectTime"] == "2026-05-28T20:26:40Z" and s["status"]["total"]["responsesSent"] == 70_000
    assert "metadata" not in got and got["mTLS"] == {"certificateRegenerations": 0}


@pytest.mark.parametrize("seconds", [2**62, -(2**62)])
def test_a_peers_impossible_time_is_refused_not_a_crash(seconds: int) -> None:
    sub = mesh_pb.DiscoverySubscription(id="s1", control_plane_instance_id="cp")
    sub.connect_time.seconds = seconds
    with pytest.raises(KdsDecodeError, match=r"does not convert from kuma\.mesh\.v1alpha1\.ZoneIngressInsight"):
        _kuma_peer_sends("ZoneIngressInsight", mesh_pb.ZoneIngressInsight(subscriptions=[sub]), "zi")


def test_a_peers_nan_in_a_ca_conf_is_refused_not_a_crash() -> None:
    backend = mesh_pb.CertificateAuthorityBackend(name="ca-1", type="builtin")
    backend.conf.update({"caCert": {"RSAbits": float("nan")}})
    with pytest.raises(KdsDecodeError, match="Mesh"):
        _kuma_peer_sends("Mesh", mesh_pb.Mesh(mtls=mesh_pb.Mesh.Mtls(backends=[backend])), "m")


def test_a_spec_that_does_not_fit_kumas_message_is_sent_as_json() -> None:
    r = from_wire({"type": "ZoneIngressInsight", "name": "zi",
                   "subscriptions": [{"id": "1", "controlPlaneInstanceId": "cp", "connectTime": "yesterday"}]})
    kr = kds_pb2.KumaResource.FromString(encode(r).message.resource.value)
    assert kr.spec.type_url == ""
    assert decode(r.type, encode(r).message).spec == r.spec


@pytest.mark.parametrize(("rtype", "msg", "field"), [
    ("Mesh", mesh_pb.Mesh(tracing=mesh_pb.Unsupported()), "tracing"),
    ("Mesh", mesh_pb.Mesh(mtls=mesh_pb.Mesh.Mtls(skipValidation=True)), "skipValidation"),
    ("Dataplane", mesh_pb.Dataplane(networking=mesh_pb.Dataplane.Networking(
        address="10.0.0.1", listeners=[mesh_pb.Unsupported()])), "listeners"),
    ("Dataplane", mesh_pb.Dataplane(networking=mesh_pb.Dataplane.Networking(
        address="10.0.0.1", inbound=[mesh_pb.Dataplane.Networking.Inbound(
            port=1, name="http", tags={"kuma.io/service": "a"})])), "name"),
    ("ZoneIngress", mesh_pb.ZoneIngress(networking=mesh_pb.ZoneIngress.Networking(
        address="10.0.0.1", port=1, admin=mesh_pb.EnvoyAdmin(port=9901))), "admin"),
])
def test_kuma_fields_kuma_vm_lacks_are_refused_by_name(rtype: str, msg: Any, field: str) -> None:
    with pytest.raises(KdsDecodeError, match=field):
        _kuma_peer_sends(rtype, msg, "x", "default" if rtype == "Dataplane" else "")


def test_wrong_spec_message_and_garbage_are_refused() -> None:
    with pytest.raises(KdsDecodeError, match=r"must be 'type.googleapis.com/kuma.mesh.v1alpha1.Mesh'"):
        _kuma_peer_sends("Mesh", mesh_pb.ZoneIngress())
    w = encode(from_wire({"type": "Mesh", "name": "m"}))
    kr = kds_pb2.KumaResource.FromString(w.message.resource.value)
    kr.spec.value = b"\xff\xff"
    w.message.resource.value = kr.SerializeToString()
    with pytest.raises(KdsDecodeError, match=r"not a valid kuma\.mesh\.v1alpha1\.Mesh message"):
        decode(MESH, w.message)


def test_json_specs_from_older_peers_are_still_read() -> None:
    mesh = from_wire({"type": "Mesh", "name": "m", "routing": {"zoneEgress": False}})
    w = encode(mesh)
    kr = kds_pb2.KumaResource.FromString(w.message.resource.value)
    kr.spec.CopyFrom(any_pb2.Any(type_url="", value=b'{"routing":{"zoneEgress":false}}'))
    w.message.resource.value = kr.SerializeToString()
    assert decode(mesh.type, w.message).spec == mesh.spec


@pytest.mark.parametrize(("seconds", "go"), [(60, "1m"), (0.5, "500ms"), (5400, "1h30m"), (61.5, "1m1.5s"),
                                             (0.000001, "1us"), (86400, "24h"), (0, "0s")])
def test_durations_read_back_as_go_text(seconds: float, go: str) -> None:
    assert go_duration(round(seconds * 1e9)) == go
