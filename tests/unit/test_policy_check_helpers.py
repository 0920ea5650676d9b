"""The shared checks behind "X is already given at Y" (`seen_before`) and "a type selects its block"
(`check_type_blocks`): every policy that uses them refuses what it refused before, with the same field and words.

The expected reasons are the ones each policy wrote by hand before the helpers; a change of wording here is a
change users see.
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.resources import ResourceValidationError, from_wire, load_all

REGISTRY = load_all()
MESH = {"kind": "Mesh"}
WEB = {"kind": "MeshService", "name": "web"}


def reasons(kind: str, spec: dict[str, Any]) -> dict[str, str]:
    try:
        from_wire({"type": kind, "mesh": "default", "name": "p", "spec": spec}, REGISTRY)
    except ResourceValidationError as e:
        return {p.field: p.reason for p in e.invalid}
    return {}


def lb(load_balancer: dict[str, Any]) -> dict[str, Any]:
    return {"targetRef": MESH, "to": [{"targetRef": WEB, "default": {"loadBalancer": load_balancer}}]}


def route(rule: dict[str, Any]) -> dict[str, Any]:
    return {"targetRef": MESH, "to": [{"targetRef": WEB, "rules": [rule]}]}


BACKEND = [{"kind": "MeshService", "name": "web"}]
ROUTE_DEFAULT = {"backendRefs": BACKEND}
LB_BASE = "spec.to[0].default.loadBalancer"
RULE = "spec.to[0].rules[0]"

CASES: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
    # --- check_type_blocks ---
    ("lb-unused-block", "MeshLoadBalancingStrategy", lb({"type": "RoundRobin", "maglev": {}}),
     {f"{LB_BASE}.maglev": "does not apply to type RoundRobin: remove it"}),
    ("lb-chosen-block-optional", "MeshLoadBalancingStrategy", lb({"type": "RingHash"}), {}),
    ("lb-chosen-block-checked", "MeshLoadBalancingStrategy", lb({"type": "Maglev", "maglev": {"tableSize": 4}}),
     {f"{LB_BASE}.maglev.tableSize": "4 is not a prime number: Envoy requires a prime table size, e.g. 65537 or "
                                     "5000011"}),
    ("hash-missing-block", "MeshLoadBalancingStrategy", lb({"type": "RingHash", "ringHash": {
        "hashPolicies": [{"type": "Header"}]}}),
     {f"{LB_BASE}.ringHash.hashPolicies[0].header": "must be set for type Header"}),
    ("hash-unused-block", "MeshLoadBalancingStrategy", lb({"type": "RingHash", "ringHash": {
        "hashPolicies": [{"type": "Cookie", "cookie": {"name": "c"}, "queryParameter": {"name": "q"}}]}}),
     {f"{LB_BASE}.ringHash.hashPolicies[0].queryParameter": "does not apply to type Cookie: remove it"}),
    ("hash-shared-block", "MeshLoadBalancingStrategy", lb({"type": "RingHash", "ringHash": {
        "hashPolicies": [{"type": "SourceIP", "connection": {"sourceIP": True}}]}}), {}),
    ("filter-missing-block", "MeshHTTPRoute", route({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                                     "default": {"filters": [{"type": "URLRewrite"}]}}),
     {f"{RULE}.default.filters[0].urlRewrite": "must be set for a filter of type URLRewrite"}),
    ("filter-unused-block", "MeshHTTPRoute", route({
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["x-a"]},
             "urlRewrite": {"hostname": "a.example"}}]}}),
     {f"{RULE}.default.filters[0].urlRewrite": "does not apply to a filter of type RequestHeaderModifier: remove it"}),
    ("trace-backend-unused-block", "MeshTrace", {"targetRef": MESH, "default": {"backends": [
        {"type": "Zipkin", "zipkin": {"url": "http://127.0.0.1:9411/api/v2/spans"},
         "datadog": {"url": "http://127.0.0.1:8126"}}]}},
     {"spec.default.backends[0].datadog": "cannot be set with type Zipkin: set type Datadog or remove it"}),
    # --- seen_before ---
    ("route-header-match-twice", "MeshHTTPRoute", route({"matches": [{"headers": [
        {"name": "x-a", "value": "1"}, {"name": "x-a", "value": "2"}]}], "default": ROUTE_DEFAULT}),
     {f"{RULE}.matches[0].headers[1].name": "header 'x-a' is already matched by entry [0]: combine them into one"}),
    ("route-query-param-twice", "MeshHTTPRoute", route({"matches": [{"queryParams": [
        {"type": "Exact", "name": "q", "value": "1"}, {"type": "Exact", "name": "q", "value": "2"}]}],
        "default": ROUTE_DEFAULT}),
     {f"{RULE}.matches[0].queryParams[1].name": "multiple entries for name q: combine them"}),
    ("route-same-match-twice", "MeshHTTPRoute", route({"matches": [{"path": {"type": "Exact", "value": "/a"}},
                                                                   {"path": {"type": "Exact", "value": "/a"}}],
                                                       "default": ROUTE_DEFAULT}),
     {f"{RULE}.matches[1]": "is identical to matches[0]: remove the duplicate"}),
    ("route-same-rule-matches", "MeshHTTPRoute", {"targetRef": MESH, "to": [{"targetRef": WEB, "rules": [
        {"matches": [{"path": {"type": "Exact", "value": "/a"}}], "default": ROUTE_DEFAULT},
        {"matches": [{"path": {"type": "Exact", "value": "/a"}}], "default": ROUTE_DEFAULT}]}]},
     {"spec.to[0].rules[1].matches": "are the same as rules[0].matches: merge the two rules"}),
    ("route-header-modified-twice", "MeshHTTPRoute", route({
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{"name": "x-a", "value": "1"}], "remove": ["x-a"]}}]}}),
     {f"{RULE}.default.filters[0].requestHeaderModifier.remove[0]":
      f"header 'x-a' is already modified at {RULE}.default.filters[0].requestHeaderModifier.set[0].name: only one "
      "action per header"}),
    ("route-filter-twice", "MeshHTTPRoute", route({
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"filters": [
            {"type": "URLRewrite", "urlRewrite": {"hostname": "a.example"}},
            {"type": "URLRewrite", "urlRewrite": {"hostname": "b.example"}}]}}),
     {f"{RULE}.default.filters[1].type": "a URLRewrite filter is already given at filters[0]: merge them"}),
    ("route-backend-twice", "MeshHTTPRoute", route({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                                    "default": {"backendRefs": [*BACKEND, *BACKEND]}}),
     {f"{RULE}.default.backendRefs[1]": "is the same backend as entry [0]: merge them into one entry with the "
                                        "summed weight"}),
    ("health-check-header-twice", "MeshHealthCheck", {"targetRef": MESH, "to": [{"targetRef": WEB, "default": {
        "interval": "10s", "timeout": "2s", "unhealthyThreshold": 3, "healthyThreshold": 1, "http": {
            "requestHeadersToAdd": {"set": [{"name": "x-a", "value": "1"}],
                                    "add": [{"name": "x-a", "value": "2"}]}}}}]},
     {"spec.to[0].default.http.requestHeadersToAdd.add[0].name":
      "header 'x-a' is already given at spec.to[0].default.http.requestHeadersToAdd.set[0]: give each header once"}),
    ("trace-tag-twice", "MeshTrace", {"targetRef": MESH, "default": {"backends": [], "tags": [
        {"name": "a", "literal": "1"}, {"name": "a", "literal": "2"}]}},
     {"spec.default.tags[1].name": "'a' is already tags[0]: keep one"}),
    ("metric-application-twice", "MeshMetric", {"targetRef": MESH, "default": {"applications": [
        {"port": 8080, "path": "/metrics"}, {"port": 8080, "path": "/metrics"}]}},
     {"spec.default.applications[1]": "scrapes the same endpoint as applications[0]: remove one"}),
    ("metric-backend-twice", "MeshMetric", {"targetRef": MESH, "default": {"backends": [
        {"type": "Prometheus", "prometheus": {"port": 5670}}, {"type": "Prometheus", "prometheus": {"port": 5670}}]}},
     {"spec.default.backends[1].prometheus": "same clientId and port as backends[0]: give each Prometheus backend "
                                             "its own clientId"}),
]


@pytest.mark.parametrize("kind, spec, want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusals_keep_their_field_and_words(kind: str, spec: dict[str, Any], want: dict[str, str]) -> None:
    assert reasons(kind, spec) == want
