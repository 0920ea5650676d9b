"""Kuma fidelity of validation: accept/refuse verdicts with the field paths, per resource type, written from
Kuma's documented rules (kumahq/kuma validators, kuma.io docs); structural and range problems in one
answer; unknown fields told apart from Kuma fields kuma-vm lacks."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.resources import ResourceValidationError, from_wire, load_all

REGISTRY = load_all()


def problems(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc, REGISTRY)
    return {p.field: p.reason for p in e.value.invalid}


def dataplane(networking: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": "dp-1", "networking": networking, **extra}


# --- structural and range problems in one answer (issue item 6) ---------------------------------------------


def test_dataplane_reports_type_and_range_errors_together() -> None:
    found = problems(dataplane({"address": "10.0.0.1", "inbound": [
        {"port": "80", "tags": {"kuma.io/service": "a"}},                       # type: cut, not checked
        {"port": 70000, "tags": {"kuma.io/service": "b"}},                      # range
        {"port": 81},                                                           # missing tags
        {"port": 80000, "tags": {"kuma.io/service": "c", "v": ""}, "colour": 1},  # unknown field + range
    ], "admin": {"port": "x"}}))
    assert set(found) == {
        "networking.inbound[0].port", "networking.inbound[1].port", "networking.inbound[2].tags",
        "networking.inbound[3].colour", "networking.inbound[3].port", 'networking.inbound[3].tags["v"]',
        "networking.admin.port",
    }
    assert "valid integer" in found["networking.inbound[0].port"]
    assert "[1, 65535]" in found["networking.inbound[1].port"] and "[1, 65535]" in found["networking.inbound[3].port"]


def test_findings_about_what_was_cut_are_not_reported() -> None:
    # The only inbound is refused structurally; "a dataplane needs at least one inbound" would describe the
    # trimmed copy, not the user's document.
    found = problems(dataplane({"address": "10.0.0.1", "inbound": [{"port": "80", "tags": {"kuma.io/service": "a"}}],
                                "outbound": [{"port": 0, "tags": {"kuma.io/service": "b"}}]}))
    assert set(found) == {"networking.inbound[0].port", "networking.outbound[0].port"}


def test_policy_reports_type_range_and_unknown_field_together() -> None:
    found = problems({"type": "MeshTimeout", "mesh": "default", "name": "t", "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": 5}},
               {"targetRef": {"kind": "MeshService", "name": "b"},
                "default": {"connectionTimeout": "-1s", "idleTimout": "1s"}}]}})
    assert set(found) == {"spec.to[0].default.idleTimeout", "spec.to[1].default.idleTimout",
                          "spec.to[1].default.connectionTimeout"}
    assert "did you mean 'idleTimeout'" in found["spec.to[1].default.idleTimout"]
    assert "negative" in found["spec.to[1].default.connectionTimeout"]


def test_positions_after_a_cut_element_keep_their_original_index() -> None:
    found = problems({"type": "MeshRetry", "mesh": "default", "name": "r", "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}},                                  # missing default: cut
               {"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": -1}}}]}})
    assert "spec.to[1].default.http.numRetries" in found and "spec.to[0].default" in found


def test_a_missing_required_top_field_reports_what_it_can() -> None:
    found = problems({"type": "Dataplane", "mesh": "default", "name": "dp-1", "networks": {}})
    assert found["networking"] == "field is required"
    assert "did you mean 'networking'" in found["networks"]


# --- Dataplane: Kuma's dataplane_validator.go rules (issue item 2) ------------------------------------------

SVC = {"kuma.io/service": "web"}


def inbound(port: int = 10001, **fields: Any) -> dict[str, Any]:
    return {"port": port, "tags": dict(SVC), **fields}


def net(address: str = "10.0.0.1", inbounds: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    return {"address": address, "inbound": [inbound()] if inbounds is None else inbounds, **fields}


GATEWAY = {"tags": {"kuma.io/service": "edge"}}

# (case id, networking, None to accept or the field path Kuma names)
DATAPLANE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("plain", net(), None),
    ("hostname-address", net("web-1.dc1.internal"), None),
    ("ipv6-address", net("fd00::1"), None),
    ("wildcard-v4-address", net("0.0.0.0"), "networking.address"),
    ("wildcard-v6-address", net("::"), "networking.address"),
    ("not-an-address", net("web 1!"), "networking.address"),
    ("empty-address", net(""), "networking.address"),
    # admin port: Envoy's admin is on 127.0.0.1
    ("admin-elsewhere", net(admin={"port": 9901}), None),
    ("admin-on-workload-port", net(inbounds=[inbound(10001, servicePort=9901)], admin={"port": 9901}),
     "networking.admin.port"),
    ("admin-on-loopback-inbound", net(inbounds=[inbound(9901, address="127.0.0.1", servicePort=8080)],
                                      admin={"port": 9901}), "networking.admin.port"),
    ("admin-same-port-other-ip", net(inbounds=[inbound(9901, servicePort=8080)], admin={"port": 9901}), None),
    ("admin-on-outbound", net(outbound=[{"port": 9901, "tags": {"kuma.io/service": "db"}}], admin={"port": 9901}),
     "networking.admin.port"),
    ("admin-outbound-other-ip", net(outbound=[{"port": 9901, "address": "127.0.0.2",
                                               "tags": {"kuma.io/service": "db"}}], admin={"port": 9901}), None),
    ("admin-port-range", net(admin={"port": 70000}), "networking.admin.port"),
    # an inbound that points at itself
    ("loop-default-port", net(inbounds=[inbound(10001, serviceAddress="10.0.0.1")]),
     "networking.inbound[0].serviceAddress"),
    ("loop-same-port", net(inbounds=[inbound(10001, serviceAddress="10.0.0.1", servicePort=10001)]),
     "networking.inbound[0].serviceAddress"),
    ("loop-inbound-address", net(inbounds=[inbound(10001, address="10.0.0.7", serviceAddress="10.0.0.7")]),
     "networking.inbound[0].serviceAddress"),
    ("no-loop-other-port", net(inbounds=[inbound(10001, serviceAddress="10.0.0.1", servicePort=8080)]), None),
    ("no-loop-other-ip", net(inbounds=[inbound(10001, serviceAddress="10.0.0.2")]), None),
    ("service-address-hostname", net(inbounds=[inbound(serviceAddress="app.local")]),
     "networking.inbound[0].serviceAddress"),
    # ports
    ("port-zero", net(inbounds=[inbound(0)]), "networking.inbound[0].port"),
    ("service-port-zero-is-unset", net(inbounds=[inbound(servicePort=0)]), None),
    # Kuma 2.14 accepts an inbound without tags only in its MeshService mode; kuma-vm refuses it (test below)
    ("inbound-without-tags", net(inbounds=[inbound(tags={})]), "networking.inbound[0].tags"),
    # outbound-only dataplanes (Kuma 2.14 accepts them: no "at least one inbound" rule any more)
    ("no-inbounds", net(inbounds=[]), None),
    ("outbound-only", net(inbounds=[], outbound=[{"port": 33033, "tags": {"kuma.io/service": "db"}}]), None),
    ("outbound-only-transparent-proxy", net(inbounds=[], outbound=[{"port": 33033, "tags": {"kuma.io/service": "db"}}],
                                            transparentProxying={"redirectPortInbound": 15006,
                                                                 "redirectPortOutbound": 15001}), None),
    ("outbound-only-bad-outbound", net(inbounds=[], outbound=[{"port": 33033, "tags": {"version": "v1"}}]),
     'networking.outbound[0].tags["kuma.io/service"]'),
    ("outbound-only-admin-on-outbound", net(inbounds=[], outbound=[{"port": 9901, "tags": {"kuma.io/service": "db"}}],
                                            admin={"port": 9901}), "networking.admin.port"),
    ("outbound-only-wildcard-address", net("0.0.0.0", inbounds=[]), "networking.address"),
    ("port-too-big", net(inbounds=[inbound(65536)]), "networking.inbound[0].port"),
    ("service-port-too-big", net(inbounds=[inbound(servicePort=65536)]), "networking.inbound[0].servicePort"),
    ("outbound-port-zero", net(outbound=[{"port": 0, "tags": {"kuma.io/service": "db"}}]),
     "networking.outbound[0].port"),
    # tags: Kuma's character sets, the same as the policies' tag matchers
    ("tag-value-colon", net(inbounds=[inbound(tags={**SVC, "version": "v1:beta"})]), None),
    ("tag-key-colon-slash", net(inbounds=[inbound(tags={**SVC, "team.io/x:y": "a"})]), None),
    ("tag-key-uppercase-prefix", net(inbounds=[inbound(tags={**SVC, "Team.IO/Owner": "a"})]), None),
    ("tag-value-slash", net(inbounds=[inbound(tags={**SVC, "version": "v1/beta"})]),
     'networking.inbound[0].tags["version"]'),
    ("tag-value-space", net(inbounds=[inbound(tags={**SVC, "version": "v 1"})]),
     'networking.inbound[0].tags["version"]'),
    ("tag-value-star", net(inbounds=[inbound(tags={**SVC, "version": "*"})]),
     'networking.inbound[0].tags["version"]'),
    ("tag-value-empty", net(inbounds=[inbound(tags={**SVC, "version": ""})]),
     'networking.inbound[0].tags["version"]'),
    ("tag-key-space", net(inbounds=[inbound(tags={**SVC, "my tag": "a"})]),
     'networking.inbound[0].tags["my tag"]'),
    ("service-value-slash", net(inbounds=[inbound(tags={"kuma.io/service": "web/v1"})]),
     'networking.inbound[0].tags["kuma.io/service"]'),
    ("service-missing", net(inbounds=[inbound(tags={"version": "v1"})]),
     'networking.inbound[0].tags["kuma.io/service"]'),
    ("protocol-unknown", net(inbounds=[inbound(tags={**SVC, "kuma.io/protocol": "udp"})]),
     'networking.inbound[0].tags["kuma.io/protocol"]'),
    ("protocol-grpc", net(inbounds=[inbound(tags={**SVC, "kuma.io/protocol": "grpc"})]), None),
    # gateways
    ("delegated-gateway", net(inbounds=[], gateway=GATEWAY), None),
    ("delegated-gateway-with-outbound", net(inbounds=[], gateway=GATEWAY,
                                            outbound=[{"port": 33033, "tags": {"kuma.io/service": "db"}}]), None),
    ("gateway-with-inbound", net(gateway=GATEWAY), "networking.inbound"),
    ("builtin-gateway-with-outbound", net(inbounds=[], gateway={**GATEWAY, "type": "BUILTIN"},
                                          outbound=[{"port": 33033, "tags": {"kuma.io/service": "db"}}]),
     "networking.outbound"),
    ("gateway-protocol-tcp", net(inbounds=[], gateway={"tags": {**GATEWAY["tags"], "kuma.io/protocol": "tcp"}}),
     None),
    ("gateway-protocol-http", net(inbounds=[], gateway={"tags": {**GATEWAY["tags"], "kuma.io/protocol": "http"}}),
     'networking.gateway.tags["kuma.io/protocol"]'),
    # service probes (Kuma: durations and thresholds positive)
    ("probe", net(inbounds=[inbound(serviceProbe={"interval": "5s", "timeout": "1s", "healthyThreshold": 1,
                                                  "tcp": {}})]), None),
    ("probe-zero-threshold", net(inbounds=[inbound(serviceProbe={"unhealthyThreshold": 0})]),
     "networking.inbound[0].serviceProbe.unhealthyThreshold"),
    ("probe-zero-interval", net(inbounds=[inbound(serviceProbe={"interval": "0s"})]),
     "networking.inbound[0].serviceProbe.interval"),
]


@pytest.mark.parametrize("networking, field", [c[1:] for c in DATAPLANE_CASES], ids=[c[0] for c in DATAPLANE_CASES])
def test_dataplane_verdicts_match_kuma(networking: dict[str, Any], field: str | None) -> None:
    doc = dataplane(networking)
    if field is None:
        from_wire(doc, REGISTRY)
    else:
        found = problems(doc)
        assert field in found, found


def test_an_inbound_without_tags_says_why_kuma_vm_refuses_it() -> None:
    found = problems(dataplane(net(inbounds=[inbound(tags={})])))
    reason = found["networking.inbound[0].tags"]
    assert set(found) == {"networking.inbound[0].tags"}
    assert "not supported by kuma-vm yet" in reason and "MeshService" in reason and "kuma.io/service" in reason


TAG_PAIRS = [("version", "v1"), ("version", "v1:beta"), ("version", "v1/beta"), ("version", "v 1"), ("version", ""),
             ("version", "*"), ("team.io/x:y", "a"), ("my tag", "a"), ("Team.IO/Owner", "a"), ("ver", "ü")]


@pytest.mark.parametrize("key, value", TAG_PAIRS)
def test_a_dataplane_tag_is_valid_exactly_when_a_policy_can_select_it(key: str, value: str) -> None:
    def accepted(doc: dict[str, Any]) -> bool:
        try:
            from_wire(doc, REGISTRY)
        except ResourceValidationError:
            return False
        return True

    dp = dataplane(net(inbounds=[inbound(tags={**SVC, key: value})]))
    policy = {"type": "MeshTimeout", "mesh": "default", "name": "t", "spec": {
        "targetRef": {"kind": "MeshSubset", "tags": {key: value}},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1s"}}]}}
    assert accepted(dp) == accepted(policy)


# --- unknown fields: Kuma fields kuma-vm lacks vs typos (issue item 4) --------------------------------------

NOT_YET = "a Kuma field kuma-vm does not support yet: "

UNSUPPORTED_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("dataplane-probes", {**dataplane(net()), "probes": {"port": 9000}}, "probes", "probes"),
    ("dataplane-metrics", {**dataplane(net()), "metrics": {"type": "prometheus"}}, "metrics", "metrics"),
    ("inbound-protocol", dataplane(net(inbounds=[inbound(protocol="http")])), "networking.inbound[0].protocol",
     "protocol"),
    ("inbound-name", dataplane(net(inbounds=[inbound(name="main")])), "networking.inbound[0].name", "name"),
    ("outbound-backend-ref", dataplane(net(outbound=[{"port": 8080, "backendRef": {"kind": "MeshService",
                                                                                   "name": "db"}}])),
     "networking.outbound[0].backendRef", "backendRef"),
    ("listeners", dataplane(net(listeners=[])), "networking.listeners", "listeners"),
    ("tproxy-reachable-backends", dataplane(net(transparentProxying={"reachableBackends": {"refs": []}})),
     "networking.transparentProxying.reachableBackends", "reachableBackends"),
    ("mesh-tracing", {"type": "Mesh", "name": "m", "tracing": {"backends": []}}, "tracing", "tracing"),
    ("mesh-logging", {"type": "Mesh", "name": "m", "logging": {"backends": []}}, "logging", "logging"),
    ("mesh-metrics", {"type": "Mesh", "name": "m", "metrics": {"backends": []}}, "metrics", "metrics"),
    ("mesh-mtls-skip-validation", {"type": "Mesh", "name": "m", "mtls": {"skipValidation": True}},
     "mtls.skipValidation", "skipValidation"),
    ("meshtimeout-rule-matches-sni", {"type": "MeshTimeout", "mesh": "default", "name": "t", "spec": {
        "targetRef": {"kind": "Mesh"}, "rules": [{"matches": [{"sni": {"type": "Exact", "value": "a.b"}}],
                                                  "default": {"idleTimeout": "1s"}}]}},
     "spec.rules[0].matches[0].sni", "sni"),
]


@pytest.mark.parametrize("doc, field, name", [c[1:] for c in UNSUPPORTED_CASES], ids=[c[0] for c in UNSUPPORTED_CASES])
def test_kuma_fields_we_lack_say_so(doc: dict[str, Any], field: str, name: str) -> None:
    found = problems(doc)
    assert found[field].startswith(NOT_YET + name), found


@pytest.mark.parametrize("doc, field, suggestion", [
    (dataplane(net(inbounds=[inbound(servicePrt=8080)])), "networking.inbound[0].servicePrt", "'servicePort'"),
    (dataplane(net(inbounds=[inbound(Port=8080)])), "networking.inbound[0].Port", "'port'"),
    (dataplane(net(adress="10.0.0.2")), "networking.adress", "'address'"),
    ({"type": "Mesh", "name": "m", "mtsl": {}}, "mtsl", "'mtls'"),
    ({"type": "Mesh", "name": "m", "colour": "red"}, "colour", None),
    ({"type": "Mesh", "name": "m", "loging": {}}, "loging", "'logging'? (a Kuma field kuma-vm does not support yet)"),
    ({"type": "MeshTimeout", "mesh": "default", "name": "t", "spec": {
        "targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimout": "1s"}}]}},
     "spec.to[0].default.idleTimout", "'idleTimeout'"),
])
def test_typos_are_not_fields_and_get_the_closest_name(doc: dict[str, Any], field: str,
                                                       suggestion: str | None) -> None:
    found = problems(doc)
    if suggestion is None:  # far from every field name: the valid ones are listed
        listed = "unknown field: not a field of this resource; valid fields here: constraints, mtls, "
        assert found[field].startswith(listed)
        return
    assert found[field].startswith("unknown field: not a field of this resource: did you mean " + suggestion), found


# --- policies: what Kuma accepts (issue item 1, the parts done) ----------------------------------------------

def policy(kind: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"type": kind, "mesh": "default", "name": name, "spec": spec}


MESH = {"kind": "Mesh"}
SERVICE_B = {"kind": "MeshService", "name": "b"}

POLICY_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # Kuma requires something in to/from (MeshTimeout, MeshCircuitBreaker) or from/rules (MeshTrafficPermission)
    ("timeout-to-empty", policy("MeshTimeout", {"targetRef": MESH, "to": []}), "spec"),
    ("mtp-from-empty", policy("MeshTrafficPermission", {"targetRef": MESH, "from": []}), "spec.from"),
    ("cb-nothing", policy("MeshCircuitBreaker", {"targetRef": MESH}), "spec"),
    # ... but not in these: a policy with an empty `to` is valid and does nothing
    ("retry-to-empty", policy("MeshRetry", {"targetRef": MESH, "to": []}), None),
    ("faults-from-empty", policy("MeshFaultInjection", {"targetRef": MESH, "from": []}), None),
    ("faults-nothing", policy("MeshFaultInjection", {"targetRef": MESH}), None),
    ("rate-limit-from-empty", policy("MeshRateLimit", {"targetRef": MESH, "from": []}), None),
    ("healthcheck-no-to", policy("MeshHealthCheck", {"targetRef": MESH}), None),
    ("mlbs-to-empty", policy("MeshLoadBalancingStrategy", {"targetRef": MESH, "to": []}), None),
    ("httproute-to-empty", policy("MeshHTTPRoute", {"targetRef": MESH, "to": []}), None),
    ("httproute-rules-empty", policy("MeshHTTPRoute", {"targetRef": MESH, "to": [{"targetRef": SERVICE_B,
                                                                                  "rules": []}]}), None),
    # MeshTCPRoute: `to` needs an item (schema minItems 1); at most one rule, none switches an inherited one off
    ("tcproute-to-empty", policy("MeshTCPRoute", {"targetRef": MESH, "to": []}), "spec.to"),
    ("tcproute-rules-empty", policy("MeshTCPRoute", {"targetRef": MESH, "to": [{"targetRef": SERVICE_B,
                                                                                "rules": []}]}), None),
    ("tcproute-to-without-rules", policy("MeshTCPRoute", {"targetRef": MESH, "to": [{"targetRef": SERVICE_B}]}),
     None),
    ("mlbs-gateway-listener-tags", policy("MeshLoadBalancingStrategy", {
        "targetRef": {"kind": "MeshGateway", "name": "edge", "tags": {"port": "8080"}},
        "to": [{"targetRef": MESH, "default": {"loadBalancer": {"type": "Random"}}}]}), None),
    ("tcproute-two-rules", policy("MeshTCPRoute", {"targetRef": MESH, "to": [{"targetRef": SERVICE_B, "rules": [
        {"default": {"backendRefs": [SERVICE_B]}}, {"default": {"backendRefs": [SERVICE_B]}}]}]}),
     "spec.to[0].rules"),
    # empty objects
    ("cb-connection-limits-empty", policy("MeshCircuitBreaker", {"targetRef": MESH, "to": [
        {"targetRef": MESH, "default": {"connectionLimits": {}}}]}), None),
    ("cb-outlier-without-detectors", policy("MeshCircuitBreaker", {"targetRef": MESH, "to": [
        {"targetRef": MESH, "default": {"outlierDetection": {"disabled": True}}}]}),
     "spec.to[0].default.outlierDetection.detectors"),
    ("cb-connection-limit-zero", policy("MeshCircuitBreaker", {"targetRef": MESH, "to": [
        {"targetRef": MESH, "default": {"connectionLimits": {"maxConnections": 0}}}]}),
     "spec.to[0].default.connectionLimits.maxConnections"),
    ("retry-on-unquoted-status", policy("MeshRetry", {"targetRef": MESH, "to": [
        {"targetRef": MESH, "default": {"http": {"retryOn": [500, "409", "5xx"]}}}]}), None),
    ("retry-on-status-twice", policy("MeshRetry", {"targetRef": MESH, "to": [
        {"targetRef": MESH, "default": {"http": {"retryOn": [503, "503"]}}}]}), "spec.to[0].default.http.retryOn[1]"),
    ("retry-http-empty", policy("MeshRetry", {"targetRef": MESH, "to": [{"targetRef": MESH,
                                                                         "default": {"http": {}}}]}),
     "spec.to[0].default.http"),
]


@pytest.mark.parametrize("doc, field", [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES])
def test_policy_verdicts_match_kuma(doc: dict[str, Any], field: str | None) -> None:
    if field is None:
        from_wire(doc, REGISTRY)
    else:
        found = problems(doc)
        assert field in found, found


def test_empty_tcp_rules_switch_an_inherited_route_off() -> None:
    from tests.unit.test_policy_plugins import listener_of, snapshots

    route = from_wire(policy("MeshTCPRoute", {"targetRef": MESH, "to": [{"targetRef": {
        "kind": "MeshService", "name": "batch"}, "rules": [{"default": {"backendRefs": [
            {"kind": "MeshService", "name": "reports"}]}}]}]}, name="batch-to-reports"), REGISTRY)
    # More specific top level (MeshSubset beats Mesh), so it is merged over the route above: its empty rules
    # replace the inherited ones and the outbound goes to batch itself again.
    off = from_wire(policy("MeshTCPRoute", {"targetRef": {"kind": "MeshSubset", "tags": {
        "kuma.io/service": "frontend"}}, "to": [{"targetRef": {"kind": "MeshService", "name": "batch"},
                                                 "rules": []}]}, name="batch-default"), REGISTRY)

    def cluster(policies: list[Any]) -> str:
        f = listener_of(snapshots(policies)["frontend-1"], "batch")["filter_chains"][0]["filters"]
        return str(f[0]["typed_config"].get("cluster"))

    assert cluster([route]) == "reports"
    assert cluster([route, off]) == cluster([]) != "reports"


KIND_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("timeout-to-external", policy("MeshTimeout", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshExternalService", "name": "httpbin"}, "default": {"idleTimeout": "5s"}}]}), None),
    ("timeout-to-multizone", policy("MeshTimeout", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshMultiZoneService", "labels": {"app": "db"}}, "default": {"idleTimeout": "5s"}}]}),
     None),
    ("retry-to-external", policy("MeshRetry", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshExternalService", "name": "x"}, "default": {"tcp": {"maxConnectAttempt": 2}}}]}),
     None),
    ("cb-to-multizone", policy("MeshCircuitBreaker", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshMultiZoneService", "name": "x"}, "default": {"connectionLimits": {}}}]}), None),
    ("mlbs-to-multizone", policy("MeshLoadBalancingStrategy", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshMultiZoneService", "name": "x"}, "default": {
            "loadBalancer": {"type": "RoundRobin"}}}]}), None),
    ("mlbs-to-external", policy("MeshLoadBalancingStrategy", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshExternalService", "name": "x"}, "default": {
            "loadBalancer": {"type": "RoundRobin"}}}]}), "spec.to[0].targetRef.kind"),
    ("httproute-to-external", policy("MeshHTTPRoute", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshExternalService", "name": "x"}, "rules": []}]}), None),
    ("tcproute-to-multizone", policy("MeshTCPRoute", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshMultiZoneService", "name": "x"}, "rules": []}]}), None),
    ("external-needs-a-name", policy("MeshTimeout", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshExternalService"}, "default": {"idleTimeout": "5s"}}]}),
     "spec.to[0].targetRef.name"),
    ("external-with-section-name", policy("MeshTimeout", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshExternalService", "name": "x", "sectionName": "http"},
         "default": {"idleTimeout": "5s"}}]}), "spec.to[0].targetRef.sectionName"),
    ("route-with-section-name", policy("MeshTimeout", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshHTTPRoute", "name": "r", "sectionName": "http"},
         "default": {"http": {"requestTimeout": "5s"}}}]}), "spec.to[0].targetRef.sectionName"),
    ("service-with-section-name", policy("MeshTimeout", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": "MeshService", "name": "b", "sectionName": "http"},
         "default": {"idleTimeout": "5s"}}]}), None),
    ("external-at-top-level", policy("MeshTimeout", {"targetRef": {"kind": "MeshExternalService", "name": "x"},
                                                     "to": [{"targetRef": MESH, "default": {"idleTimeout": "5s"}}]}),
     "spec.targetRef.kind"),
    # Kuma 2.14: to[] kinds no longer narrowed under a top-level MeshGateway (MeshLoadBalancingStrategy: only
    # when the entry sets a loadBalancer)
    ("cb-gateway-to-service", policy("MeshCircuitBreaker", {"targetRef": {"kind": "MeshGateway", "name": "edge"},
                                                            "to": [{"targetRef": SERVICE_B,
                                                                    "default": {"connectionLimits": {}}}]}), None),
    ("hc-gateway-to-service", policy("MeshHealthCheck", {"targetRef": {"kind": "MeshGateway", "name": "edge"},
                                                         "to": [{"targetRef": SERVICE_B, "default": {"tcp": {}}}]}),
     None),
    ("mlbs-gateway-to-service-locality", policy("MeshLoadBalancingStrategy", {
        "targetRef": {"kind": "MeshGateway", "name": "edge"},
        "to": [{"targetRef": SERVICE_B, "default": {"localityAwareness": {"disabled": True}}}]}), None),
    ("mlbs-gateway-to-service-lb", policy("MeshLoadBalancingStrategy", {
        "targetRef": {"kind": "MeshGateway", "name": "edge"},
        "to": [{"targetRef": SERVICE_B, "default": {"loadBalancer": {"type": "Random"}}}]}),
     "spec.to[0].targetRef.kind"),
    ("hc-grpc-empty-authority", policy("MeshHealthCheck", {"targetRef": MESH, "to": [
        {"targetRef": SERVICE_B, "default": {"grpc": {"authority": ""}}}]}), None),
    ("external-in-mtp-from", policy("MeshTrafficPermission", {"targetRef": MESH, "from": [
        {"targetRef": {"kind": "MeshExternalService", "name": "x"}, "default": {"action": "Allow"}}]}),
     "spec.from[0].targetRef.kind"),
]


@pytest.mark.parametrize("doc, field", [c[1:] for c in KIND_CASES], ids=[c[0] for c in KIND_CASES])
def test_target_ref_kinds_match_kuma(doc: dict[str, Any], field: str | None) -> None:
    if field is None:
        from_wire(doc, REGISTRY)
    else:
        found = problems(doc)
        assert field in found, found


def test_kinds_without_a_resource_yet_select_nothing() -> None:
    from controlplane.xds.resources import TYPE_ORDER
    from tests.unit.test_policy_plugins import snapshots

    refs = [policy("MeshTimeout", {"targetRef": MESH, "to": [
        {"targetRef": {"kind": kind, "name": "backend"}, "default": {"idleTimeout": "7s", "connectionTimeout": "7s"}}
    ]}, name=f"t-{kind.lower()}") for kind in ("MeshExternalService", "MeshMultiZoneService")]
    base = snapshots([])
    with_refs = snapshots([from_wire(d, REGISTRY) for d in refs])
    for proxy, snap in base.items():
        assert all(with_refs[proxy].version(t) == snap.version(t) for t in TYPE_ORDER), proxy


@pytest.mark.parametrize("extra", [
    {"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "other.internal"}}]},
    {"backendRefs": [{"kind": "MeshService", "name": "reports"}]},
], ids=["with-rewrite", "with-backends"])
def test_redirect_next_to_a_rewrite_or_backends_is_accepted_and_wins(extra: dict[str, Any]) -> None:
    from tests.unit.test_policy_plugins import routes_of, snapshots

    redirect = {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}
    default = {**extra, "filters": [redirect, *extra.get("filters", [])]}
    route = from_wire(policy("MeshHTTPRoute", {"targetRef": MESH, "to": [{"targetRef": {
        "kind": "MeshService", "name": "backend"}, "rules": [{"matches": [{"path": {"type": "PathPrefix",
                                                                                   "value": "/old"}}],
                                                         "default": default}]}]}), REGISTRY)
    routes = routes_of(snapshots([route])["frontend-1"], "backend")
    old = next(r for r in routes if r["match"].get("path_separated_prefix") == "/old")
    assert old["redirect"]["scheme_redirect"] == "https" and "route" not in old


# --- Mesh (issue item 3, the rule done) -------------------------------------------------------------------

BUILTIN = {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}


@pytest.mark.parametrize("doc, field", [
    ({"type": "Mesh", "name": "m", "routing": {"zoneEgress": True}}, "mtls"),
    ({"type": "Mesh", "name": "m", "routing": {"zoneEgress": True}, "mtls": {"backends": BUILTIN["backends"]}},
     "mtls"),
    ({"type": "Mesh", "name": "m", "routing": {"zoneEgress": True}, "mtls": BUILTIN}, None),
    ({"type": "Mesh", "name": "m", "routing": {"zoneEgress": False, "localityAwareLoadBalancing": True}}, None),
], ids=["egress-without-mtls", "egress-mtls-not-enabled", "egress-with-mtls", "no-egress"])
def test_mesh_zone_egress_needs_mtls(doc: dict[str, Any], field: str | None) -> None:
    if field is None:
        from_wire(doc, REGISTRY)
    else:
        assert "zoneEgress" in problems(doc)[field]


# --- Mesh: Kuma 2.14's mesh_validator.go (issue item 3) ---------------------------------------------------

def mesh(**spec: Any) -> dict[str, Any]:
    return {"type": "Mesh", "name": "m", **spec}


CONSTRAINTS_OK = {"dataplaneProxy": {"requirements": [{"tags": {"kuma.io/zone": "east"}}],
                                     "restrictions": [{"tags": {"team": "*"}}]}}

MESH_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("one-backend", mesh(mtls=BUILTIN), None),
    ("two-backends", mesh(mtls={"enabledBackend": "ca-1", "backends": [
        {"name": "ca-1", "type": "builtin"}, {"name": "ca-2", "type": "builtin"}]}), "mtls.backends"),
    ("same-name-twice", mesh(mtls={"backends": [{"name": "ca-1", "type": "builtin"},
                                                {"name": "ca-1", "type": "builtin"}]}), "mtls.backends[1].name"),
    ("enabled-backend-unknown", mesh(mtls={"enabledBackend": "ca-2", "backends": BUILTIN["backends"]}),
     "mtls.enabledBackend"),
    ("backends-without-enabled", mesh(mtls={"backends": BUILTIN["backends"]}), None),
    ("constraints", mesh(constraints=CONSTRAINTS_OK), None),
    ("constraints-empty", mesh(constraints={}), None),
    ("constraints-dpp-empty", mesh(constraints={"dataplaneProxy": {}}), None),
    ("requirement-without-tags", mesh(constraints={"dataplaneProxy": {"requirements": [{"tags": {}}]}}),
     "constraints.dataplaneProxy.requirements[0].tags"),
    ("restriction-without-tags", mesh(constraints={"dataplaneProxy": {"restrictions": [{}]}}),
     "constraints.dataplaneProxy.restrictions[0].tags"),
    ("requirement-empty-value", mesh(constraints={"dataplaneProxy": {"requirements": [{"tags": {"team": ""}}]}}),
     'constraints.dataplaneProxy.requirements[0].tags["team"]'),
    ("requirement-bad-key", mesh(constraints={"dataplaneProxy": {"requirements": [{"tags": {"my team": "a"}}]}}),
     'constraints.dataplaneProxy.requirements[0].tags["my team"]'),
    ("requirement-slash-value", mesh(constraints={"dataplaneProxy": {"requirements": [{"tags": {"v": "a/b"}}]}}),
     None),
    ("requirement-space-value", mesh(constraints={"dataplaneProxy": {"restrictions": [{"tags": {"v": "a b"}}]}}),
     'constraints.dataplaneProxy.restrictions[0].tags["v"]'),
    ("constraints-typo", mesh(constraints={"dataplaneProxies": {}}), "constraints.dataplaneProxies"),
    ("egress-with-mtls", mesh(routing={"zoneEgress": True}, mtls=BUILTIN), None),
    ("egress-without-mtls", mesh(routing={"zoneEgress": True}), "mtls"),
]


@pytest.mark.parametrize("doc, field", [c[1:] for c in MESH_CASES], ids=[c[0] for c in MESH_CASES])
def test_mesh_verdicts_match_kuma(doc: dict[str, Any], field: str | None) -> None:
    if field is None:
        from_wire(doc, REGISTRY)
    else:
        found = problems(doc)
        assert field in found, found


def test_two_mtls_backends_say_kumas_limit() -> None:
    found = problems(mesh(mtls={"backends": [{"name": "a", "type": "builtin"}, {"name": "b", "type": "builtin"}]}))
    assert "cannot have more than 1 backend" in found["mtls.backends"]


@pytest.mark.parametrize("section, policy", [("logging", "MeshAccessLog"), ("tracing", "MeshTrace"),
                                             ("metrics", "MeshMetric")])
def test_old_mesh_observability_sections_name_the_policy_to_use(section: str, policy: str) -> None:
    reason = problems(mesh(**{section: {"backends": []}}))[section]
    assert reason.startswith(NOT_YET + section) and f"use a {policy} policy instead" in reason


# Kuma's membership validator: (tag sets of the dataplane, None to join or a word of the refusal)
MEMBERSHIP_CASES: list[tuple[str, dict[str, Any], list[dict[str, str]], str | None]] = [
    ("no-constraints", {}, [{"kuma.io/service": "web"}], None),
    ("meets-requirement", CONSTRAINTS_OK, [{"kuma.io/service": "web", "kuma.io/zone": "east"}], None),
    ("misses-requirement", CONSTRAINTS_OK, [{"kuma.io/service": "web", "kuma.io/zone": "west"}], "requirements"),
    ("one-inbound-misses", CONSTRAINTS_OK, [{"kuma.io/service": "web", "kuma.io/zone": "east"},
                                            {"kuma.io/service": "admin"}], "requirements"),
    ("restricted-by-wildcard", CONSTRAINTS_OK, [{"kuma.io/service": "web", "kuma.io/zone": "east",
                                                 "team": "x"}], "restricted"),
    ("any-requirement-will-do", {"dataplaneProxy": {"requirements": [{"tags": {"a": "1"}}, {"tags": {"b": "*"}}]}},
     [{"kuma.io/service": "web", "b": "2"}], None),
    ("restrictions-only", {"dataplaneProxy": {"restrictions": [{"tags": {"kuma.io/service": "legacy"}}]}},
     [{"kuma.io/service": "web"}], None),
    ("restricted-service", {"dataplaneProxy": {"restrictions": [{"tags": {"kuma.io/service": "legacy"}}]}},
     [{"kuma.io/service": "legacy"}], "restricted"),
]


@pytest.mark.parametrize("constraints, tag_sets, refusal", [c[1:] for c in MEMBERSHIP_CASES],
                         ids=[c[0] for c in MEMBERSHIP_CASES])
def test_dataplane_membership_follows_the_mesh_constraints(constraints: dict[str, Any],
                                                           tag_sets: list[dict[str, str]], refusal: str | None) -> None:
    from controlplane.resources.mesh import MeshSpec, membership_refusal

    resource = from_wire(mesh(constraints=constraints) if constraints else mesh(), REGISTRY)
    assert isinstance(resource.spec, MeshSpec)
    reason = membership_refusal(resource.spec, "m", tag_sets)
    if refusal is None:
        assert reason is None
    else:
        assert reason is not None and refusal in reason and "mesh 'm'" in reason


def test_unquoted_retry_status_codes_are_status_codes() -> None:
    from tests.unit.test_policy_plugins import routes_of, snapshots

    retry = from_wire(policy("MeshRetry", {"targetRef": MESH, "to": [{"targetRef": {"kind": "MeshService",
                                                                                    "name": "backend"},
                                                                     "default": {"http": {"retryOn": [503, 409]}}}]}),
                      REGISTRY)
    route = routes_of(snapshots([retry])["frontend-1"], "backend")[0]["route"]
    assert route["retry_policy"]["retriable_status_codes"] == [503, 409]


@pytest.mark.parametrize("key, ok", [("time", True), ("kuma.io/service", True), ('"', False), ("a\\b", False),
                                     ("tab\there", False)])
def test_access_log_json_keys_kuma_can_write(key: str, ok: bool) -> None:
    doc = policy("MeshAccessLog", {"targetRef": MESH, "from": [{"targetRef": MESH, "default": {"backends": [
        {"type": "File", "file": {"path": "/tmp/a.log", "format": {"type": "Json", "json": [
            {"key": key, "value": "%START_TIME%"}]}}}]}}]})
    if ok:
        from_wire(doc, REGISTRY)
    else:
        assert "valid JSON object" in problems(doc)["spec.from[0].default.backends[0].file.format.json[0].key"]


@pytest.mark.parametrize("kind", ["MeshFaultInjection", "MeshRateLimit"])
def test_an_inbound_policy_without_from_entries_configures_nothing(kind: str) -> None:
    from controlplane.xds.resources import TYPE_ORDER
    from tests.unit.test_policy_plugins import snapshots

    base = snapshots([])
    empty = snapshots([from_wire(policy(kind, {"targetRef": MESH, "from": []}), REGISTRY)])
    for proxy, snap in base.items():
        assert all(empty[proxy].version(t) == snap.version(t) for t in TYPE_ORDER), proxy


@pytest.mark.parametrize("kind, rules, field", [
    ("MeshHTTPRoute", [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                        "default": {"backendRefs": [{"kind": "MeshMultiZoneService", "name": "db", "port": 80}]}}],
     "spec.to[0].rules[0].default.backendRefs[0].kind"),
    ("MeshTCPRoute", [{"default": {"backendRefs": [{"kind": "MeshExternalService", "name": "db"}]}}],
     "spec.to[0].rules[0].default.backendRefs[0].kind"),
    ("MeshHTTPRoute", [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                        "default": {"filters": [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"kind": "MeshExternalService", "name": "shadow"}}}], "backendRefs": [SERVICE_B]}}],
     "spec.to[0].rules[0].default.filters[0].requestMirror.backendRef.kind"),
], ids=["http-multizone", "tcp-external", "mirror-external"])
def test_backends_without_a_resource_yet_are_not_supported_rather_than_not_allowed(
        kind: str, rules: list[dict[str, Any]], field: str) -> None:
    found = problems(policy(kind, {"targetRef": MESH, "to": [{"targetRef": SERVICE_B, "rules": rules}]}))
    assert set(found) == {field} and "not supported by kuma-vm yet" in found[field], found


def test_a_tcp_route_entry_without_rules_switches_an_inherited_route_off() -> None:
    from tests.unit.test_policy_plugins import listener_of, snapshots

    route = from_wire(policy("MeshTCPRoute", {"targetRef": MESH, "to": [{"targetRef": {
        "kind": "MeshService", "name": "batch"}, "rules": [{"default": {"backendRefs": [
            {"kind": "MeshService", "name": "reports"}]}}]}]}, name="batch-to-reports"), REGISTRY)
    off = from_wire(policy("MeshTCPRoute", {"targetRef": {"kind": "MeshSubset", "tags": {
        "kuma.io/service": "frontend"}}, "to": [{"targetRef": {"kind": "MeshService", "name": "batch"}}]},
        name="batch-default"), REGISTRY)

    def cluster(policies: list[Any]) -> str:
        f = listener_of(snapshots(policies)["frontend-1"], "batch")["filter_chains"][0]["filters"]
        return str(f[0]["typed_config"].get("cluster"))

    assert cluster([route, off]) == cluster([]) != cluster([route])
