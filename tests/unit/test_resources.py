"""The resource model: Kuma's universal forms, validation naming field paths, the registry."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controlplane.resources import REGISTRY, ResourceValidationError, from_wire, load_all, to_wire
from controlplane.resources.fields import parse_duration


def doc(text: str) -> Any:
    return yaml.safe_load(text)


def fields_of(text: str | dict[str, Any], **kw: Any) -> dict[str, str]:
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc(text) if isinstance(text, str) else text, **kw)
    return {p.field: p.reason for p in e.value.invalid}


DP = """
type: Dataplane
mesh: default
name: web-1
labels: {team: payments}
networking:
  address: 10.0.0.5
  advertisedAddress: 192.0.2.5
  inbound:
  - port: 10001
    servicePort: 8080
    serviceAddress: 127.0.0.1
    tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1}
    serviceProbe: {interval: 10s, timeout: 2s, unhealthyThreshold: 3, healthyThreshold: 1, tcp: {}}
  outbound:
  - port: 33033
    tags: {kuma.io/service: backend}
"""


def test_dataplane_round_trip() -> None:
    r = from_wire(doc(DP))
    assert r.meta.name == "web-1" and r.meta.mesh == "default" and r.meta.labels == {"team": "payments"}
    inbound = r.spec.networking.inbound[0]
    assert inbound.service == "web" and inbound.workload_port == 8080
    wire = to_wire(r)
    assert wire["type"] == "Dataplane" and wire["networking"]["inbound"][0]["servicePort"] == 8080
    assert "spec" not in wire  # Kuma's older types are flat
    again = from_wire({k: v for k, v in wire.items() if k not in ("creationTime", "modificationTime")})
    assert again.spec == r.spec


def test_unknown_fields_and_wrong_types_are_named() -> None:
    problems = fields_of("""
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.5
  inbound:
  - port: "80"
    tags: {kuma.io/service: web}
    colour: red
""")
    assert "networking.inbound[0].port" in problems and "valid integer" in problems["networking.inbound[0].port"]
    assert "unknown field" in problems["networking.inbound[0].colour"]


def test_ranges_required_tags_protocols_addresses() -> None:
    problems = fields_of("""
type: Dataplane
mesh: default
name: web-1
networking:
  address: "not an address!"
  inbound:
  - port: 70000
    tags: {kuma.io/protocol: smtp, version: ""}
  - port: 70000
    tags: {kuma.io/service: web}
  outbound:
  - port: 0
    tags: {}
""")
    assert "port 70000 must be in the range [1, 65535]" in problems["networking.inbound[0].port"]
    assert problems['networking.inbound[0].tags["kuma.io/service"]'] == "mandatory tag 'kuma.io/service' is missing"
    assert "not a known protocol" in problems['networking.inbound[0].tags["kuma.io/protocol"]']
    assert "must be non-empty" in problems['networking.inbound[0].tags["version"]']
    assert "not a valid IP address or hostname" in problems["networking.address"]
    assert "networking.outbound[0].port" in problems
    assert problems['networking.outbound[0].tags["kuma.io/service"]'] == "mandatory tag 'kuma.io/service' is missing"


def test_dataplane_without_inbounds_is_outbound_only() -> None:
    # Kuma 2.14 dropped its "at least one inbound or gateway" rule: an outbound-only proxy is valid.
    dp = from_wire({"type": "Dataplane", "mesh": "default", "name": "x", "networking": {"address": "10.0.0.1"}})
    assert dp.spec.networking.inbound == [] and dp.spec.services() == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "ok"), [
    ("web-1", True), ("web.prod", True), ("Web", False), ("-web", False), ("web_1", False), ("a" * 254, False),
])
def test_names_are_dns_1123(name: str, ok: bool) -> None:
    d = {"type": "GlobalSecret", "name": name, "data": "eA=="}
    if ok:
        assert from_wire(d).meta.name == name
    else:
        assert "name" in fields_of(d)


def test_mesh_names_are_dns_labels() -> None:
    assert "name" in fields_of({"type": "Mesh", "name": "prod.eu"})
    assert "mesh" in fields_of({"type": "Secret", "name": "s", "mesh": "a.b", "data": "eA=="})


def test_scope_rules() -> None:
    assert fields_of({"type": "Dataplane", "name": "x", "networking": {"address": "1.2.3.4"}})["mesh"].startswith(
        "field is required")
    assert "not part of a mesh" in fields_of({"type": "Zone", "name": "z", "mesh": "default"})["mesh"]


def test_unknown_type_and_missing_type() -> None:
    assert "unknown resource type 'Meshh'" in fields_of({"type": "Meshh", "name": "x"})["type"]
    assert "field is required" in fields_of({"name": "x"})["type"]


def test_path_must_agree_with_document() -> None:
    mesh_type = REGISTRY.by_name("Mesh")
    problems = fields_of({"type": "Mesh", "name": "a"}, rtype=mesh_type, name="b")
    assert "must match" in problems["name"]
    dp_type = REGISTRY.by_name("Dataplane")
    problems = fields_of(doc(DP), rtype=dp_type, name="web-1", mesh="other")
    assert "must match" in problems["mesh"]


def test_mesh_mtls_backends() -> None:
    r = from_wire(doc("""
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    dpCert: {rotation: {expiration: 1d}}
    conf: {caCert: {RSAbits: 2048, expiration: 10y}}
"""))
    assert r.spec.mtls.enabled().builtin_conf().ca_cert.rsa_bits == 2048
    problems = fields_of("""
type: Mesh
name: default
mtls:
  enabledBackend: ca-9
  backends:
  - name: ca-1
    type: builtin
    mode: LAX
    conf: {caCert: {RSAbits: 1024, expiration: soon}, extra: 1}
  - name: ca-1
    type: provided
""")
    assert "mtls.backends[0].mode" in problems
    problems = fields_of("""
type: Mesh
name: default
mtls:
  enabledBackend: ca-9
  backends:
  - name: ca-1
    type: builtin
    conf: {caCert: {RSAbits: 1024, expiration: soon}}
  - name: ca-1
    type: provided
  - name: ca-3
    type: builtin
    conf: {extra: 1}
""")
    assert problems["mtls.backends[0].conf.caCert.RSAbits"] == "must be 2048, 3072 or 4096"
    assert "not a duration" in problems["mtls.backends[0].conf.caCert.expiration"]
    assert "unknown field" in problems["mtls.backends[2].conf.extra"]
    assert "used twice" in problems["mtls.backends[1].name"]
    assert "is required for a provided CA" in problems["mtls.backends[1].conf"]
    assert "not among mtls.backends" in problems["mtls.enabledBackend"]


def test_provided_ca_needs_one_data_source() -> None:
    problems = fields_of("""
type: Mesh
name: default
mtls:
  backends:
  - name: ca-1
    type: provided
    conf:
      cert: {secret: a, file: /b}
      key: {inline: "!!notbase64"}
""")
    assert "exactly one of" in problems["mtls.backends[0].conf.cert"]
    assert "base64" in problems["mtls.backends[0].conf.key.inline"]


def test_secret_data_is_base64_and_redacted() -> None:
    r = from_wire({"type": "Secret", "name": "s", "mesh": "default", "data": "aGVsbG8="})
    assert r.spec.value() == b"hello"
    assert to_wire(r, redact=True)["data"] == "***"
    assert to_wire(r)["data"] == "aGVsbG8="
    assert "base64" in fields_of({"type": "GlobalSecret", "name": "s", "data": "not base64!"})["data"]


def test_zone_ingress() -> None:
    r = from_wire(doc("""
type: ZoneIngress
name: zi-1
zone: east
networking: {address: 10.0.0.1, port: 10001, advertisedAddress: 203.0.113.1, advertisedPort: 10000}
availableServices:
- {tags: {kuma.io/service: web}, instances: 2, mesh: default}
"""))
    assert r.spec.available_services[0].instances == 2
    problems = fields_of("""
type: ZoneIngress
name: zi-1
networking: {address: 10.0.0.1, port: 10001, advertisedAddress: 203.0.113.1}
availableServices:
- {tags: {}, instances: -1, mesh: Default}
""")
    assert "go together" in problems["networking.advertisedPort"]
    assert "availableServices[0].instances" in problems
    assert "availableServices[0].mesh" in problems


def test_labels_are_checked() -> None:
    problems = fields_of({"type": "Zone", "name": "z", "labels": {"bad key!": "v"}})
    assert any(k.startswith("labels") for k in problems)
    assert fields_of({"type": "Zone", "name": "z", "labels": {"a": 1}})["labels"] == \
        "must be a map of strings to strings"


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("1h30m", 5400), ("500ms", 0.5), ("1d", 86400),
                                                ("10y", 10 * 365 * 86400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "10", "s", "10 s", "1x", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_registry_knows_every_type_by_every_spelling() -> None:
    reg = load_all()
    for word in ("dataplane", "dataplanes", "Dataplane", "DATAPLANE"):
        assert reg.lookup(word) is reg.by_name("Dataplane")
    names = {t.name for t in reg.all()}
    assert {"Mesh", "Dataplane", "ZoneIngress", "Zone", "Secret", "GlobalSecret"} <= names
