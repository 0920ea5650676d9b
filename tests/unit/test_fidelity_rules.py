"""Kuma 2.14's `rules[]` form of MeshTimeout and MeshCircuitBreaker: inbound configuration for all of a proxy's
traffic, in place of `from[]`. kuma-vm merges each rule as a `from` entry of kind Mesh, so a policy written
either way gives the same Envoy config; verdicts follow Kuma's validators (rules exclude from/to, a rule's
`matches` are not supported yet). Golden files and the real-Envoy check cover policy_examples/*/rules.yaml."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.resources import ResourceValidationError, from_wire, load_all
from controlplane.xds.resources import TYPE_ORDER
from tests.unit.test_policy_plugins import LISTENER, as_dict, snapshots

REGISTRY = load_all()
FRONTEND = {"kind": "MeshService", "name": "frontend"}
TIMEOUT = {"idleTimeout": "20m", "http": {"requestTimeout": "7s", "streamIdleTimeout": "45s"}}
PER_CALLER = {"http": {"requestTimeout": "7s", "streamIdleTimeout": "45s"}}
WEB_ID = {"spiffeID": {"type": "Exact", "value": "spiffe://default/web"}}
BREAKER = {"connectionLimits": {"maxConnections": 512},
           "outlierDetection": {"detectors": {"totalFailures": {"consecutive": 7}}}}


def policy(kind: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"type": kind, "mesh": "default", "name": name, "spec": spec}


def config(snap: Any) -> dict[str, dict[str, Any]]:
    return {t: {n: as_dict(r) for n, r in snap.of_type(t).items()} for t in TYPE_ORDER}


@pytest.mark.parametrize("kind, default", [("MeshTimeout", TIMEOUT), ("MeshCircuitBreaker", BREAKER)])
def test_rules_give_the_config_of_a_from_entry_of_kind_mesh(kind: str, default: dict[str, Any]) -> None:
    rules = from_wire(policy(kind, {"targetRef": FRONTEND, "rules": [{"default": default}]}), REGISTRY)
    from_ = from_wire(policy(kind, {"targetRef": FRONTEND, "from": [{"targetRef": {"kind": "Mesh"},
                                                                     "default": default}]}), REGISTRY)
    base, by_rules, by_from = snapshots([]), snapshots([rules]), snapshots([from_])
    assert config(by_rules["frontend-1"]) == config(by_from["frontend-1"]) != config(base["frontend-1"])
    assert config(by_rules["cache-client-1"]) == config(base["cache-client-1"])  # not selected


def test_a_more_specific_rule_wins_over_a_mesh_wide_from_entry() -> None:
    mesh_wide = from_wire(policy("MeshTimeout", {"targetRef": {"kind": "Mesh"}, "from": [
        {"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "3s"}}}]}, "mesh-wide"), REGISTRY)
    rule = from_wire(policy("MeshTimeout", {"targetRef": FRONTEND, "rules": [
        {"default": {"http": {"requestTimeout": "9s"}}}]}, "frontend"), REGISTRY)
    listener = as_dict(snapshots([mesh_wide, rule])["frontend-1"].of_type(LISTENER)["inbound:127.0.0.1:10001"])
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert {r["route"]["timeout"] for r in routes} == {"9s"}


RULE_CASES: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("timeout-rules", "MeshTimeout", {"targetRef": FRONTEND, "rules": [{"default": TIMEOUT}]}, None),
    ("breaker-rules", "MeshCircuitBreaker", {"targetRef": FRONTEND, "rules": [{"default": BREAKER}]}, None),
    ("timeout-rules-and-to", "MeshTimeout", {"rules": [{"default": TIMEOUT}], "to": [
        {"targetRef": {"kind": "Mesh"}, "default": TIMEOUT}]}, "spec"),
    ("breaker-rules-and-from", "MeshCircuitBreaker", {"rules": [{"default": BREAKER}], "from": [
        {"targetRef": {"kind": "Mesh"}, "default": BREAKER}]}, "spec"),
    ("timeout-rules-empty", "MeshTimeout", {"rules": []}, "spec"),
    ("breaker-rules-empty", "MeshCircuitBreaker", {"rules": []}, "spec"),
    ("timeout-rule-bad-default", "MeshTimeout", {"rules": [{"default": {"idleTimeout": "-1s"}}]},
     "spec.rules[0].default.idleTimeout"),
    ("timeout-rule-empty-default", "MeshTimeout", {"rules": [{"default": {}}]}, "spec.rules[0].default"),
    ("breaker-rule-bad-default", "MeshCircuitBreaker", {"rules": [{"default": {"connectionLimits": {
        "maxConnections": 0}}}]}, "spec.rules[0].default.connectionLimits.maxConnections"),
    ("timeout-rule-under-route", "MeshTimeout", {"targetRef": {"kind": "MeshHTTPRoute", "name": "r"},
                                                 "rules": [{"default": TIMEOUT}]}, "spec.rules"),
    # Kuma 2.14: a rule's matches narrow it to callers; with a spiffeID match only per-request timeouts
    ("timeout-rule-matches", "MeshTimeout", {"rules": [{"matches": [WEB_ID], "default": PER_CALLER}]}, None),
    ("timeout-rule-matches-empty", "MeshTimeout", {"rules": [{"matches": [], "default": TIMEOUT}]}, None),
    ("timeout-rule-matches-bad-id", "MeshTimeout", {"rules": [{"matches": [
        {"spiffeID": {"type": "Exact", "value": "x"}}], "default": PER_CALLER}]},
     "spec.rules[0].matches[0].spiffeID.value"),
    ("timeout-rule-matches-idle", "MeshTimeout", {"rules": [{"matches": [WEB_ID], "default": TIMEOUT}]},
     "spec.rules[0].default.idleTimeout"),
    ("timeout-rule-matches-connect", "MeshTimeout", {"rules": [{"matches": [WEB_ID], "default": {
        "connectionTimeout": "1s"}}]}, "spec.rules[0].default.connectionTimeout"),
    ("timeout-rule-matches-headers", "MeshTimeout", {"rules": [{"matches": [WEB_ID], "default": {"http": {
        "requestHeadersTimeout": "1s"}}}]}, "spec.rules[0].default.http.requestHeadersTimeout"),
    ("timeout-rule-matches-max-stream", "MeshTimeout", {"rules": [{"matches": [WEB_ID], "default": {"http": {
        "maxStreamDuration": "1s"}}}]}, "spec.rules[0].default.http.maxStreamDuration"),
    ("timeout-rule-matches-max-conn", "MeshTimeout", {"rules": [{"matches": [WEB_ID], "default": {"http": {
        "maxConnectionDuration": "1s"}}}]}, "spec.rules[0].default.http.maxConnectionDuration"),
    ("timeout-rule-matches-no-matcher", "MeshTimeout", {"rules": [{"matches": [{}], "default": PER_CALLER}]},
     "spec.rules[0].matches[0].spiffeID"),
    ("timeout-rule-matches-sni", "MeshTimeout", {"rules": [{"matches": [{"sni": {"type": "Exact", "value": "a.b"}}],
                                                            "default": TIMEOUT}]}, "spec.rules[0].matches[0].sni"),
    ("breaker-rule-typo", "MeshCircuitBreaker", {"rules": [{"defaults": BREAKER}]}, "spec.rules[0].defaults"),
]


@pytest.mark.parametrize("kind, spec, field", [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_rules_verdicts_match_kuma(kind: str, spec: dict[str, Any], field: str | None) -> None:
    doc = policy(kind, spec)
    if field is None:
        from_wire(doc, REGISTRY)
        return
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc, REGISTRY)
    assert field in {p.field for p in e.value.invalid}, e.value.invalid


SPIFFE = {"spiffeID": {"type": "Exact", "value": "spiffe://default/frontend"}}
MTP_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("rules", {"rules": [{"default": {"allow": [SPIFFE]}}]}, None),
    ("rules-and-empty-from", {"from": [], "rules": [{"default": {"allow": [SPIFFE]}}]}, None),
    ("rules-and-from", {"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}],
                        "rules": [{"default": {"allow": [SPIFFE]}}]}, "spec"),
    ("rules-empty-default", {"rules": [{"default": {}}]}, "spec.rules[0].default"),
    ("rules-sni", {"rules": [{"default": {"allow": [{"sni": {"type": "Exact", "value": "a.b"}}]}}]},
     "spec.rules[0].default.allow[0].sni"),
    ("rules-bad-spiffe", {"rules": [{"default": {"deny": [{"spiffeID": {"type": "Exact", "value": "x"}}]}}]},
     "spec.rules[0].default.deny[0].spiffeID.value"),
]


@pytest.mark.parametrize("spec, field", [c[1:] for c in MTP_CASES], ids=[c[0] for c in MTP_CASES])
def test_traffic_permission_rules_verdicts_match_kuma(spec: dict[str, Any], field: str | None) -> None:
    doc = policy("MeshTrafficPermission", {"targetRef": {"kind": "Mesh"}, **spec})
    if field is None:
        from_wire(doc, REGISTRY)
        return
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc, REGISTRY)
    found = {p.field: p.reason for p in e.value.invalid}
    assert field in found, found
    if field.endswith(".sni"):
        assert found[field].startswith("a Kuma field kuma-vm does not support yet: sni")


def test_meshretry_under_a_top_level_route_equals_a_to_entry_for_that_route() -> None:
    from tests.unit.test_policy_plugins import EXAMPLES, load

    route = load(EXAMPLES / "meshhttproute" / "traffic-split.yaml")  # MeshHTTPRoute backend-canary
    retry = {"http": {"numRetries": 2, "retryOn": ["ConnectFailure", "502"]}}
    top = from_wire(policy("MeshRetry", {"targetRef": {"kind": "MeshHTTPRoute", "name": "backend-canary"},
                                         "to": [{"targetRef": {"kind": "Mesh"}, "default": retry}]}), REGISTRY)
    entry = from_wire(policy("MeshRetry", {"targetRef": {"kind": "Mesh"}, "to": [
        {"targetRef": {"kind": "MeshHTTPRoute", "name": "backend-canary"}, "default": retry}]}), REGISTRY)
    by_top, by_entry, base = snapshots([route, top]), snapshots([route, entry]), snapshots([route])
    assert config(by_top["frontend-1"]) == config(by_entry["frontend-1"]) != config(base["frontend-1"])


@pytest.mark.parametrize("to_kind, field", [("Mesh", None), ("MeshExternalService", None),
                                            ("MeshService", "spec.to[0].targetRef.kind")])
def test_meshretry_to_kinds_under_a_top_level_route(to_kind: str, field: str | None) -> None:
    doc = policy("MeshRetry", {"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "to": [
        {"targetRef": {"kind": to_kind, "name": "x"} if to_kind != "Mesh" else {"kind": "Mesh"},
         "default": {"http": {"numRetries": 1}}}]})
    if field is None:
        from_wire(doc, REGISTRY)
        return
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc, REGISTRY)
    assert "under a top-level MeshHTTPRoute" in {p.field: p.reason for p in e.value.invalid}[field]
