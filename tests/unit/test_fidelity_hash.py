"""MeshLoadBalancingStrategy hash policies as Kuma 2.14 has them: `default.hashPolicies` at the root (winning
over those inside loadBalancer.ringHash/maglev) and per MeshHTTPRoute (`to[].targetRef.kind: MeshHTTPRoute`),
rendered on the outbound routes' `hash_policy`. Golden files and the real-Envoy check cover the examples
(policy_examples/meshloadbalancingstrategy/root-hash-policies.yaml, on-route.yaml)."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.resources import ResourceValidationError, from_wire, load_all
from tests.unit.test_policy_plugins import EXAMPLES, load, routes_of, snapshots

REGISTRY = load_all()
HEADER_A = {"type": "Header", "header": {"name": "x-a"}}
RING_B = {"type": "RingHash", "ringHash": {"hashPolicies": [{"type": "Header", "header": {"name": "x-b"}}]}}


def mlbs(name: str, to: list[dict[str, Any]], top: dict[str, Any] | None = None) -> Any:
    return from_wire({"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": name,
                      "spec": {"targetRef": top or {"kind": "Mesh"}, "to": to}}, REGISTRY)


def backend(default: dict[str, Any]) -> dict[str, Any]:
    return {"targetRef": {"kind": "MeshService", "name": "backend"}, "default": default}


def header_names(route: dict[str, Any]) -> list[str]:
    return [hp["header"]["header_name"] for hp in route["route"].get("hash_policy", [])]


def test_root_hash_policies_go_on_every_route_of_the_destination() -> None:
    routes = routes_of(snapshots([mlbs("root", [backend({"hashPolicies": [HEADER_A]})])])["frontend-1"], "backend")
    assert routes and all(header_names(r) == ["x-a"] for r in routes)


def test_root_hash_policies_win_over_the_load_balancers_own() -> None:
    # Two policies: one gives RingHash with its own list, a more specific one (MeshSubset) the root list.
    ring = mlbs("ring", [backend({"loadBalancer": RING_B})])
    root = mlbs("root", [backend({"hashPolicies": [HEADER_A]})],
                top={"kind": "MeshSubset", "tags": {"kuma.io/service": "frontend"}})
    assert all(header_names(r) == ["x-b"] for r in routes_of(snapshots([ring])["frontend-1"], "backend"))
    assert all(header_names(r) == ["x-a"] for r in routes_of(snapshots([ring, root])["frontend-1"], "backend"))


def test_route_hash_policies_apply_to_that_routes_requests_only() -> None:
    policies = [load(EXAMPLES / "meshhttproute" / "traffic-split.yaml"),
                load(EXAMPLES / "meshloadbalancingstrategy" / "on-route.yaml"),
                mlbs("root", [backend({"hashPolicies": [HEADER_A]})])]
    routes = routes_of(snapshots(policies)["frontend-1"], "backend")
    names = [header_names(r) for r in routes if "route" in r]
    assert ["x-session"] in names and ["x-a"] in names  # the canary route's, and the catch-all's


def test_an_empty_root_list_switches_inherited_hashing_off() -> None:
    ring = mlbs("ring", [backend({"loadBalancer": RING_B})])
    frontend = {"kind": "MeshSubset", "tags": {"kuma.io/service": "frontend"}}
    off = mlbs("off", [backend({"hashPolicies": []})], top=frontend)
    routes = routes_of(snapshots([ring, off])["frontend-1"], "backend")
    assert routes and all("hash_policy" not in r["route"] for r in routes)


def test_source_ip_is_kumas_old_name_for_connection() -> None:
    source_ip = mlbs("sip", [backend({"hashPolicies": [{"type": "SourceIP", "connection": {"sourceIP": True}}]})])
    routes = routes_of(snapshots([source_ip])["frontend-1"], "backend")
    assert all(r["route"]["hash_policy"] == [{"connection_properties": {"source_ip": True}}] for r in routes)


@pytest.mark.parametrize("default, field", [
    ({"hashPolicies": [HEADER_A]}, None),
    ({"hashPolicies": [HEADER_A], "loadBalancer": RING_B}, "loadBalancer.ringHash.hashPolicies"),
    ({"hashPolicies": [HEADER_A], "loadBalancer": {"type": "Maglev", "maglev": {"hashPolicies": [HEADER_A]}}},
     "loadBalancer.maglev.hashPolicies"),
    ({"hashPolicies": []}, None),
    ({"loadBalancer": {"type": "RingHash", "ringHash": {"hashPolicies": []}}}, None),
    ({"hashPolicies": [{"type": "SourceIP", "connection": {"sourceIP": True}}]}, None),
    ({"hashPolicies": [{"type": "SourceIP"}]}, "hashPolicies[0].connection"),
    ({"hashPolicies": [{"type": "Cookie"}]}, "hashPolicies[0].cookie"),
], ids=["root-only", "root-and-ring", "root-and-maglev", "root-empty", "ring-empty", "source-ip", "source-ip-no-block",
     "root-incomplete"])
def test_root_hash_policy_verdicts(default: dict[str, Any], field: str | None) -> None:
    if field is None:
        mlbs("p", [backend(default)])
        return
    with pytest.raises(ResourceValidationError) as e:
        mlbs("p", [backend(default)])
    assert f"spec.to[0].default.{field}" in {p.field for p in e.value.invalid}


@pytest.mark.parametrize("default, field", [
    ({"hashPolicies": [HEADER_A]}, None),
    ({"hashPolicies": [HEADER_A], "loadBalancer": {"type": "RoundRobin"}}, "loadBalancer"),
    ({"localityAwareness": {"disabled": True}}, "localityAwareness"),
], ids=["hash-only", "with-load-balancer", "with-locality"])
def test_route_entries_take_hash_policies_only(default: dict[str, Any], field: str | None) -> None:
    item = {"targetRef": {"kind": "MeshHTTPRoute", "name": "backend-canary"}, "default": default}
    if field is None:
        mlbs("p", [item])
        return
    with pytest.raises(ResourceValidationError) as e:
        mlbs("p", [item])
    assert {p.field: p.reason for p in e.value.invalid}[f"spec.to[0].default.{field}"].endswith(
        "only hashPolicies apply to a route's requests")
