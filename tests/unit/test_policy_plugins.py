"""Policy plugins: Kuma's precedence and merging (controlplane.policies._checks), what each policy renders
to in Envoy, golden files per policy example, and that policies keep shared resources shared.

Golden files live in tests/unit/golden/xds/policies/<kind>/<example>.json and hold, for each proxy of the
fixture mesh, only the resources the example adds or changes (and the names it removes) relative to the
same mesh without policies. Rewrite them with `KUMA_UPDATE_GOLDEN=1 .venv/bin/pytest
tests/unit/test_policy_plugins.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyPb

from controlplane.resources import Resource, from_wire
from controlplane.xds.generate import targeting
from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.generate.proxy import generate_snapshot
from controlplane.xds.generate.rules import element, rules_for
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, TYPE_ORDER
from controlplane.xds.snapshot import Snapshot
from tests.unit.xds_fixtures import context, mesh, res, topology

EXAMPLES = Path(__file__).parent / "policy_examples"
GOLDEN = Path(__file__).parent / "golden" / "xds" / "policies"
UPDATE = os.environ.get("KUMA_UPDATE_GOLDEN") == "1"
VALID = sorted(EXAMPLES.glob("*/*.yaml"))


# --- the fixture mesh ------------------------------------------------------------------------------------------

def dp(name: str, service: str, *, port: int, protocol: str = "http", tags: dict[str, str] | None = None,
       outbounds: dict[str, int] | None = None, labels: dict[str, str] | None = None,
       address: str = "127.0.0.1") -> Resource:
    doc: dict[str, Any] = {
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": address, "inbound": [
            {"port": port, "servicePort": port + 1000,
             "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol, **(tags or {})}}],
            "outbound": [{"port": p, "tags": {"kuma.io/service": s}} for s, p in (outbounds or {}).items()]},
    }
    if labels:
        doc["labels"] = labels
    return from_wire(doc)


BACKENDS: list[tuple[str, str, dict[str, str]]] = [
    ("backend", "http", {"version": "v1"}), ("backend", "http", {"version": "v2"}),
    ("backend", "http", {"version": "shadow"}), ("batch", "http", {}), ("reports", "http", {}),
    ("cache", "http", {}), ("redis", "tcp", {"version": "v1"}), ("redis", "tcp", {"version": "v2"}),
    ("postgres", "tcp", {}), ("postgres-replica", "tcp", {}), ("billing", "grpc", {}), ("streams", "http2", {}),
]
OUTBOUNDS = {s: 20000 + i for i, s in enumerate(dict.fromkeys(s for s, _, _ in BACKENDS))}


def fixture_dataplanes() -> list[Resource]:
    out = [dp(f"{s}-{i}", s, port=10100 + i, protocol=p, tags=t, address=f"10.0.0.{i + 1}")
           for i, (s, p, t) in enumerate(BACKENDS)]
    out.append(dp("frontend-1", "frontend", port=10001, tags={"version": "v2", "kuma.io/zone": "east"},
                  outbounds=OUTBOUNDS, labels={"app": "frontend"}))
    out.append(dp("cache-client-1", "cache-client", port=10002, protocol="tcp",
                  outbounds={"redis": 21000, "postgres": 21001}, labels={"app": "my-app"}))
    return out


PROXIES = ("frontend-1", "cache-client-1")


def load(path: Path) -> Resource:
    return from_wire(yaml.safe_load(path.read_text()))


def snapshots(policies: list[Resource], memo: ResourceMemo | None = None) -> dict[str, Snapshot]:
    topo = topology(mesh(), fixture_dataplanes(), policies)
    memo = memo or ResourceMemo()
    return {name: generate_snapshot(context(topo, name, memo)) for name in PROXIES}


def as_dict(r: Any) -> dict[str, Any]:
    return json_format.MessageToDict(AnyPb(type_url=r.type_url, value=r.body), preserving_proto_field_name=True)


def diff(base: Snapshot, snap: Snapshot) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for type_url in TYPE_ORDER:
        short = type_url.rsplit(".", 1)[-1]
        before, after = base.of_type(type_url), snap.of_type(type_url)
        changed = {n: as_dict(r) for n, r in sorted(after.items()) if n not in before or before[n].hash != r.hash}
        removed = sorted(set(before) - set(after))
        if changed:
            out[short] = changed
        if removed:
            out[f"{short} removed"] = removed
    return out


# --- golden files per example ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", VALID, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_per_policy_example(path: Path) -> None:
    base = snapshots([])
    got = snapshots([load(path)])
    doc = {name: diff(base[name], got[name]) for name in PROXIES}
    golden = GOLDEN / path.parent.name / f"{path.stem}.json"
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing: run with KUMA_UPDATE_GOLDEN=1 to create it, then review it"
    assert text == golden.read_text(), f"config differs from {golden} (KUMA_UPDATE_GOLDEN=1 to update)"


def test_golden_all_examples_together() -> None:
    """Every example at once: merging across policies (e.g. the per-route MeshTimeout/MeshRetry entries
    resolve against the MeshHTTPRoute backend-canary)."""
    base = snapshots([])
    got = snapshots([load(p) for p in VALID])
    doc = {name: diff(base[name], got[name]) for name in PROXIES}
    golden = GOLDEN / "all-examples.json"
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text(), f"config differs from {golden} (KUMA_UPDATE_GOLDEN=1 to update)"


# --- precedence and merging ------------------------------------------------------------------------------------

def test_merge_patch_is_rfc7386() -> None:
    target = {"conf": 1, "sub": {"array": [1, 2, 3], "other": 50, "other-array": [3, 4, 5]}}
    patch = {"sub": {"array": [], "other-array": [5, 6], "extra": 2}}
    # Kuma's documented example: objects merge key by key, arrays are replaced.
    assert targeting.merge_patch(target, patch) == {
        "conf": 1, "sub": {"array": [], "other": 50, "other-array": [5, 6], "extra": 2}}
    assert targeting.merge_patch({"a": 1, "b": 2}, {"a": None}) == {"b": 2}
    assert targeting.merge_patch({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert target["sub"]["array"] == [1, 2, 3]  # inputs untouched
    assert targeting.merge_confs([]) is None


def test_precedence_order_inverts_names() -> None:
    items = [("b", 1), ("a", 1), ("c", 0), ("a", 2)]
    ordered = targeting.in_precedence_order(items, key=lambda i: i[1], name=lambda i: i[0])
    # Lowest precedence first: lower rank, then for equal rank 'zzz' before 'aaa' (the smaller name wins).
    assert ordered == [("c", 0), ("b", 1), ("a", 1), ("a", 2)]


def test_top_level_detail_ranks_dataplane_references() -> None:
    ref = targeting.TargetRef
    kinds = [ref(kind="Dataplane"), ref(kind="Dataplane", labels={"a": "b"}),
             ref(kind="Dataplane", labels={"a": "b"}, section_name="http"), ref(kind="Dataplane", name="x"),
             ref(kind="Dataplane", name="x", section_name="http")]
    keys = [targeting.precedence_key(k) for k in kinds]
    assert keys == sorted(keys) and len(set(keys)) == 5
    mesh_key, subset_key = targeting.precedence_key(ref(kind="Mesh")), targeting.precedence_key(
        ref(kind="MeshSubset", tags={}))
    assert mesh_key < keys[0] < subset_key


def test_covers_is_kumas_subset_rule() -> None:
    ref = targeting.TargetRef
    backend = dict(element("backend"))
    route = dict(element("backend", "abc"))
    assert targeting.covers(ref(kind="Mesh"), backend)
    assert targeting.covers(ref(kind="MeshService", name="backend"), route)
    assert not targeting.covers(ref(kind="MeshService", name="web"), backend)
    subset = ref(kind="MeshServiceSubset", name="backend", tags={targeting.RULE_MATCHES_HASH_TAG: "abc"})
    assert targeting.covers(subset, route) and not targeting.covers(subset, backend)
    assert targeting.covers(ref(kind="MeshSubset", tags={"kuma.io/service": "backend"}), backend)


def timeout(name: str, top: str, to: str, request: str) -> Resource:
    return res(f"""
type: MeshTimeout
mesh: default
name: {name}
spec:
  targetRef: {top}
  to:
  - targetRef: {to}
    default: {{http: {{requestTimeout: {request}}}, idleTimeout: 1m}}
""")


def merged_request_timeout(policies: list[Resource], proxy: str = "frontend-1", service: str = "backend") -> Any:
    topo = topology(mesh(), fixture_dataplanes(), policies)
    merged = rules_for(topo).to_conf("MeshTimeout", topo.dataplanes[proxy], service)
    return None if merged is None else (merged.data["http"]["requestTimeout"], merged.origins)


MESH = "{kind: Mesh}"
FRONTEND = "{kind: MeshService, name: frontend}"
FRONTEND_SUBSET = "{kind: MeshSubset, tags: {kuma.io/service: frontend}}"
BACKEND = "{kind: MeshService, name: backend}"


def test_more_specific_top_level_wins_regardless_of_name() -> None:
    policies = [timeout("aaa", MESH, MESH, "1s"), timeout("zzz", FRONTEND, MESH, "2s")]
    assert merged_request_timeout(policies) == ("2s", ("aaa", "zzz"))
    policies = [timeout("aaa", FRONTEND_SUBSET, MESH, "3s"), timeout("zzz", FRONTEND, MESH, "2s")]
    assert merged_request_timeout(policies)[0] == "2s"  # MeshService (5) over MeshSubset (3)


def test_equal_specificity_the_smaller_name_wins() -> None:
    policies = [timeout("b-policy", MESH, MESH, "1s"), timeout("a-policy", MESH, MESH, "2s")]
    assert merged_request_timeout(policies) == ("2s", ("b-policy", "a-policy"))


def test_top_level_kind_comes_before_the_to_kind() -> None:
    # Kuma sorts by the top-level kind first: a MeshService-wide `to: Mesh` beats a mesh-wide `to: backend`.
    policies = [timeout("a", MESH, BACKEND, "1s"), timeout("b", FRONTEND, MESH, "2s")]
    assert merged_request_timeout(policies)[0] == "2s"
    # With equal top levels the more specific `to` wins, whatever the names.
    policies = [timeout("a", MESH, MESH, "1s"), timeout("z", MESH, BACKEND, "2s")]
    assert merged_request_timeout(policies)[0] == "2s"


def test_defaults_merge_field_by_field() -> None:
    a = res("""
type: MeshTimeout
mesh: default
name: base
spec:
  to: [{targetRef: {kind: Mesh}, default: {connectionTimeout: 3s, http: {requestTimeout: 1s, streamIdleTimeout: 1m}}}]
""")
    b = res("""
type: MeshTimeout
mesh: default
name: override
spec:
  targetRef: {kind: MeshService, name: frontend}
  to: [{targetRef: {kind: MeshService, name: backend}, default: {http: {requestTimeout: 5s}}}]
""")
    topo = topology(mesh(), fixture_dataplanes(), [a, b])
    merged = rules_for(topo).to_conf("MeshTimeout", topo.dataplanes["frontend-1"], "backend")
    assert merged is not None
    assert merged.data == {"connectionTimeout": "3s", "http": {"requestTimeout": "5s", "streamIdleTimeout": "1m"}}
    other = rules_for(topo).to_conf("MeshTimeout", topo.dataplanes["frontend-1"], "batch")
    assert other is not None and other.data["http"]["requestTimeout"] == "1s"


def test_policies_apply_only_to_the_proxies_they_select() -> None:
    policy = timeout("frontend-only", FRONTEND, MESH, "2s")
    assert merged_request_timeout([policy], proxy="cache-client-1", service="redis") is None
    by_label = timeout("by-label", "{kind: Dataplane, labels: {app: my-app}}", MESH, "4s")
    assert merged_request_timeout([by_label], proxy="cache-client-1", service="redis")[0] == "4s"
    assert merged_request_timeout([by_label]) is None


def test_from_rules_select_inbounds() -> None:
    policy = res("""
type: MeshTimeout
mesh: default
name: inbound
spec:
  targetRef: {kind: MeshSubset, tags: {kuma.io/service: frontend}}
  from: [{targetRef: {kind: Mesh}, default: {connectionTimeout: 2s, http: {requestTimeout: 7s}}}]
""")
    snaps = snapshots([policy])
    listener = as_dict(snaps["frontend-1"].of_type(LISTENER)["inbound:127.0.0.1:10001"])
    text = json.dumps(listener)
    assert '"timeout": "7s"' in text and '"stream_idle_timeout": "1800s"' in text
    local = as_dict(snaps["frontend-1"].of_type(CLUSTER)["localhost:11001"])
    assert local["connect_timeout"] == "2s"
    assert snaps["cache-client-1"].version(LISTENER) == snapshots([])["cache-client-1"].version(LISTENER)


# --- what the plugins render -----------------------------------------------------------------------------------

def listener_of(snap: Snapshot, service: str) -> dict[str, Any]:
    name = f"outbound:127.0.0.1:{OUTBOUNDS[service]}"
    return as_dict(snap.of_type(LISTENER)[name])


def routes_of(snap: Snapshot, service: str) -> list[dict[str, Any]]:
    manager = listener_of(snap, service)["filter_chains"][0]["filters"][0]["typed_config"]
    return list(manager["route_config"]["virtual_hosts"][0]["routes"])


def test_split_gets_subset_clusters_with_their_own_endpoints() -> None:
    snap = snapshots([load(EXAMPLES / "meshhttproute" / "traffic-split.yaml")])["frontend-1"]
    routes = routes_of(snap, "backend")
    # Most specific first: /api with a header, then /api, then the catch-all to the service itself.
    assert [r["match"].get("path_separated_prefix", r["match"].get("prefix")) for r in routes] == ["/api", "/api", "/"]
    weighted = routes[1]["route"]["weighted_clusters"]["clusters"]
    assert [c["weight"] for c in weighted] == [90, 10]
    v1, v2 = (c["name"] for c in weighted)
    assert routes[0]["route"]["cluster"] == v2 and routes[2]["route"]["cluster"] == "backend"
    endpoints = {n: as_dict(snap.of_type(ENDPOINT)[n]) for n in (v1, v2, "backend")}
    count = {n: len(e["endpoints"][0].get("lb_endpoints", [])) for n, e in endpoints.items()}
    assert count == {v1: 1, v2: 1, "backend": 3}
    assert endpoints[v1]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] \
        == "10.0.0.1"
    cluster = as_dict(snap.of_type(CLUSTER)[v1])
    assert cluster["eds_cluster_config"]["service_name"] == v1
    assert snap.consistency_errors() == []


def test_split_clusters_carry_the_destinations_policies_and_mtls() -> None:
    split = load(EXAMPLES / "meshhttproute" / "traffic-split.yaml")
    breaker = load(EXAMPLES / "meshcircuitbreaker" / "defaults.yaml")
    topo = topology(mesh(mtls="STRICT"), fixture_dataplanes(), [split, breaker])
    snap = generate_snapshot(context(topo, "frontend-1"))
    subsets = [n for n in snap.of_type(CLUSTER) if n.startswith("backend-")]
    assert len(subsets) == 2
    snis = set()
    for name in subsets:
        cluster = as_dict(snap.of_type(CLUSTER)[name])
        assert cluster["circuit_breakers"]["thresholds"][0]["max_connections"] == 1024
        tls = cluster["transport_socket"]["typed_config"]
        snis.add(tls["sni"])
    # Kuma's SNI names the subset (what a zone ingress on the way routes by), tags sorted with the mesh.
    assert snis == {"backend{mesh=default,version=v1}", "backend{mesh=default,version=v2}"}


def test_http_route_rules_merge_by_matches_across_policies() -> None:
    first = res("""
type: MeshHTTPRoute
mesh: default
name: b-first
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: Exact, value: /orders}}]
      default:
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: "1"}]}}]
        backendRefs: [{kind: MeshService, name: batch}]
    - matches: [{path: {type: PathPrefix, value: /static}}]
      default: {backendRefs: [{kind: MeshService, name: cache}]}
""")
    second = res("""
type: MeshHTTPRoute
mesh: default
name: a-second
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: Exact, value: /orders}}]
      default: {backendRefs: [{kind: MeshService, name: reports}]}
""")
    routes = routes_of(snapshots([first, second])["frontend-1"], "backend")
    orders = [r for r in routes if r["match"].get("path") == "/orders"]
    assert len(orders) == 1
    assert orders[0]["route"]["cluster"] == "reports"  # a-second wins (same specificity, smaller name)
    assert orders[0]["request_headers_to_add"][0]["header"]["key"] == "x-a"  # merged, not replaced
    assert [r["route"]["cluster"] for r in routes] == ["reports", "cache", "backend"]


def test_tcp_route_yields_to_http_route_and_turns_http_into_tcp() -> None:
    tcp = res("""
type: MeshTCPRoute
mesh: default
name: batch-to-reports
spec:
  to:
  - targetRef: {kind: MeshService, name: batch}
    rules: [{default: {backendRefs: [{kind: MeshService, name: reports}]}}]
""")
    snap = snapshots([tcp])["frontend-1"]
    f = listener_of(snap, "batch")["filter_chains"][0]["filters"]
    assert [x["name"] for x in f] == ["envoy.filters.network.tcp_proxy"]
    assert f[0]["typed_config"]["cluster"] == "reports" and "batch" not in snap.of_type(CLUSTER)
    http = res("""
type: MeshHTTPRoute
mesh: default
name: batch-http
spec:
  to:
  - targetRef: {kind: MeshService, name: batch}
    rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      default: {backendRefs: [{kind: MeshService, name: cache}]}
""")
    snap = snapshots([tcp, http])["frontend-1"]
    assert routes_of(snap, "batch")[0]["route"]["cluster"] == "cache"


def test_redirect_and_rewrites() -> None:
    snap = snapshots([load(EXAMPLES / "meshhttproute" / "redirect-and-rewrite.yaml")])["frontend-1"]
    routes = routes_of(snap, "backend")
    by_match = {json.dumps(r["match"], sort_keys=True): r for r in routes}
    exact = by_match['{"path": "/status"}']
    assert exact["route"]["regex_rewrite"] == {"pattern": {"regex": "^.*$"}, "substitution": "/healthz"}
    old = by_match['{"path_separated_prefix": "/old"}']
    assert old["redirect"] == {"scheme_redirect": "https", "host_redirect": "new.example.com", "port_redirect": 443,
                               "prefix_rewrite": "/new", "response_code": "PERMANENT_REDIRECT"}
    v1 = by_match['{"path_separated_prefix": "/v1"}']
    assert v1["route"]["prefix_rewrite"] == "/v2" and v1["route"]["host_rewrite_literal"] == "backend.internal"


def test_prefix_rewrite_to_root_uses_a_regex() -> None:
    route = res("""
type: MeshHTTPRoute
mesh: default
name: strip
spec:
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      default:
        filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
""")
    first = routes_of(snapshots([route])["frontend-1"], "backend")[0]
    assert first["route"]["regex_rewrite"] == {"pattern": {"regex": "^/api/*"}, "substitution": "/"}


def test_retry_rendering() -> None:
    http_full = load(EXAMPLES / "meshretry" / "http-full.yaml")
    route = routes_of(snapshots([http_full])["frontend-1"], "backend")[0]["route"]
    policy = route["retry_policy"]
    assert policy["retry_on"].split(",")[0] == "5xx" and policy["retry_on"].endswith("retriable-status-codes")
    assert policy["retriable_status_codes"] == [429, 503] and policy["num_retries"] == 10
    assert {h["string_match"]["exact"] for h in policy["retriable_request_headers"] if h["name"] == ":method"} \
        == {"GET", "HEAD"}
    defaults = load(EXAMPLES / "meshretry" / "defaults.yaml")
    snap = snapshots([defaults])
    policy = routes_of(snap["frontend-1"], "backend")[0]["route"]["retry_policy"]
    assert policy["retry_on"] == "gateway-error,connect-failure,refused-stream"  # Kuma's default
    grpc = routes_of(snap["frontend-1"], "billing")[0]["route"]["retry_policy"]
    assert "resource-exhausted" in grpc["retry_on"]
    tcp = listener_of(snap["frontend-1"], "redis")["filter_chains"][0]["filters"][0]["typed_config"]
    assert tcp["max_connect_attempts"] == 5
    off = res("""
type: MeshRetry
mesh: default
name: no-retries
spec:
  targetRef: {kind: MeshService, name: frontend}
  to: [{targetRef: {kind: Mesh}, default: {http: {numRetries: 0}}}]
""")
    route = routes_of(snapshots([defaults, off])["frontend-1"], "backend")[0]["route"]
    assert "retry_policy" not in route


def test_per_route_timeout_and_retry() -> None:
    policies = [load(EXAMPLES / "meshhttproute" / "traffic-split.yaml"),
                load(EXAMPLES / "meshtimeout" / "on-route.yaml"), load(EXAMPLES / "meshretry" / "on-route.yaml")]
    routes = routes_of(snapshots(policies)["frontend-1"], "backend")
    api, catch_all = routes[1], routes[2]
    assert api["route"]["timeout"] == "3s" and api["route"]["idle_timeout"] == "10s"
    assert api["route"]["retry_policy"]["retriable_status_codes"] == [502]
    assert catch_all["route"]["timeout"] == "15s" and "retry_policy" not in catch_all["route"]


def test_timeouts_rendering() -> None:
    snap = snapshots([load(EXAMPLES / "meshtimeout" / "defaults.yaml")])["frontend-1"]
    cluster = as_dict(snap.of_type(CLUSTER)["backend"])
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert cluster["connect_timeout"] == "5s"
    assert options["common_http_protocol_options"]["idle_timeout"] == "3600s"
    assert "http_protocol_options" in options["explicit_http_config"]
    manager = listener_of(snap, "backend")["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["stream_idle_timeout"] == "1800s"
    tcp = listener_of(snap, "redis")["filter_chains"][0]["filters"][0]["typed_config"]
    assert tcp["idle_timeout"] == "3600s"
    h2 = as_dict(snap.of_type(CLUSTER)["streams"])
    h2_options = h2["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in h2_options["explicit_http_config"]  # kept, not replaced by HTTP/1.1


def test_health_check_and_circuit_breaker_rendering() -> None:
    snap = snapshots([load(EXAMPLES / "meshhealthcheck" / "http-checks.yaml"),
                      load(EXAMPLES / "meshcircuitbreaker" / "per-service.yaml")])["frontend-1"]
    backend = as_dict(snap.of_type(CLUSTER)["backend"])
    hc = backend["health_checks"][0]
    assert hc["http_health_check"]["path"] == "/health" and hc["interval"] == "10s"
    assert [r["start"] for r in hc["http_health_check"]["expected_statuses"]] == ["200", "201", "204"]
    assert backend["common_lb_config"]["healthy_panic_threshold"]["value"] == 60
    od = backend["outlier_detection"]  # per-service.yaml selects frontend v2: this proxy
    assert od["consecutive_gateway_failure"] == 3 and od["enforcing_consecutive_gateway_failure"] == 100
    assert od["enforcing_consecutive_5xx"] == 0 and od["success_rate_stdev_factor"] == 2000
    assert "outlier_detection" not in as_dict(snap.of_type(CLUSTER)["batch"])  # disabled: true
    redis = as_dict(snapshots([load(EXAMPLES / "meshhealthcheck" / "tcp-and-grpc.yaml")])["frontend-1"]
                    .of_type(CLUSTER)["redis"])
    assert redis["health_checks"][0]["tcp_health_check"]["send"] == {"binary": "cGluZw=="}


@pytest.mark.parametrize(("kind", "policy"), [("RoundRobin", "ROUND_ROBIN"), ("LeastRequest", "LEAST_REQUEST"),
                                              ("RingHash", "RING_HASH"), ("Random", "RANDOM"), ("Maglev", "MAGLEV")])
def test_load_balancer_types(kind: str, policy: str) -> None:
    lb = res(f"""
type: MeshLoadBalancingStrategy
mesh: default
name: lb
spec:
  to: [{{targetRef: {{kind: MeshService, name: cache}}, default: {{loadBalancer: {{type: {kind}}}}}}}]
""")
    cluster = as_dict(snapshots([lb])["frontend-1"].of_type(CLUSTER)["cache"])
    assert cluster.get("lb_policy", "ROUND_ROBIN") == policy


def test_ring_hash_policies_go_on_the_routes() -> None:
    snap = snapshots([load(EXAMPLES / "meshloadbalancingstrategy" / "ring-hash.yaml")])["frontend-1"]
    cluster = as_dict(snap.of_type(CLUSTER)["backend"])
    assert cluster["lb_policy"] == "RING_HASH" and cluster["ring_hash_lb_config"]["hash_function"] == "MURMUR_HASH_2"
    hashes = routes_of(snap, "backend")[0]["route"]["hash_policy"]
    assert [next(k for k in h if k != "terminal") for h in hashes] == [
        "header", "cookie", "query_parameter", "filter_state", "connection_properties"]


# --- sharing and pushes ----------------------------------------------------------------------------------------

def test_policies_keep_shared_resources_shared() -> None:
    policies = [load(p) for p in VALID]
    dps = fixture_dataplanes()
    twins = [dp(f"frontend-{i}", "frontend", port=10001, tags={"version": "v2", "kuma.io/zone": "east"},
                outbounds=OUTBOUNDS, labels={"app": "frontend"}, address=f"10.1.0.{i}") for i in range(2, 6)]
    topo = topology(mesh(), dps + twins, policies)
    memo = ResourceMemo()
    snaps = [generate_snapshot(context(topo, f"frontend-{i}", memo)) for i in range(1, 6)]
    for s in snaps[1:]:
        for type_url in (CLUSTER, ENDPOINT):
            for name, r in s.of_type(type_url).items():
                if not name.startswith("localhost"):
                    assert r is snaps[0].of_type(type_url)[name], name
        for name, r in s.of_type(LISTENER).items():
            if name.startswith("outbound"):
                assert r is snaps[0].of_type(LISTENER)[name], name


def test_a_policy_change_touches_only_the_proxies_it_selects() -> None:
    before = snapshots([load(EXAMPLES / "meshtimeout" / "defaults.yaml")])
    changed = timeout("cache-client-only", "{kind: MeshService, name: cache-client}", MESH, "9s")
    after = snapshots([load(EXAMPLES / "meshtimeout" / "defaults.yaml"), changed])
    for t in TYPE_ORDER:
        assert before["frontend-1"].version(t) == after["frontend-1"].version(t)
    assert before["cache-client-1"].version(LISTENER) != after["cache-client-1"].version(LISTENER)


def test_rules_are_cached_per_topology_and_released_with_it() -> None:
    import gc

    from controlplane.xds.generate import rules as rules_module

    topo = topology(mesh(), fixture_dataplanes(), [load(EXAMPLES / "meshtimeout" / "defaults.yaml")])
    assert rules_for(topo) is rules_for(topo)
    key = id(topo)
    assert key in rules_module._BY_TOPOLOGY
    del topo
    gc.collect()
    assert key not in rules_module._BY_TOPOLOGY


def test_http_route_rules_merge_their_way_whoever_asks_first() -> None:
    """The inspect API and the generators read the same cached rules: the MeshHTTPRoute merger is the type's,
    not the caller's."""
    policies = [load(EXAMPLES / "meshhttproute" / "traffic-split.yaml"),
                load(EXAMPLES / "meshhttproute" / "headers-and-mirror.yaml")]
    topo = topology(mesh(), fixture_dataplanes(), policies)
    merged = rules_for(topo).to_conf("MeshHTTPRoute", topo.dataplanes["frontend-1"], "backend")
    assert merged is not None and len(merged.data["rules"]) == 3  # rules of both policies, not the last one's
    assert len(routes_of(generate_snapshot(context(topo, "frontend-1")), "backend")) == 4


# --- default policies -----------------------------------------------------------------------------------------

def test_default_policies_follow_skip_creating_initial_policies() -> None:
    from controlplane.policies._defaults import default_policies

    names = [p.meta.name for p in default_policies(mesh("demo"))]
    assert names == ["mesh-gateways-timeout-all-demo", "mesh-timeout-all-demo", "mesh-circuit-breaker-all-demo",
                     "mesh-retry-all-demo"]
    skip_all = from_wire({"type": "Mesh", "name": "demo", "skipCreatingInitialPolicies": ["*"]})
    assert default_policies(skip_all) == []
    skip_timeouts = from_wire({"type": "Mesh", "name": "demo", "skipCreatingInitialPolicies": ["MeshTimeout"]})
    assert [p.type.name for p in default_policies(skip_timeouts)] == ["MeshCircuitBreaker", "MeshRetry"]


async def test_default_policies_are_created_with_a_new_mesh_once() -> None:
    import asyncio

    from controlplane.policies._defaults import DefaultMeshPolicies
    from controlplane.resources import REGISTRY
    from controlplane.store.base import ListQuery
    from controlplane.store.memory import MemoryStore

    store = MemoryStore()
    await store.start()
    component = DefaultMeshPolicies(store)
    await component.start()
    try:
        await store.create(mesh("demo"))
        await store.create(from_wire({"type": "Mesh", "name": "bare", "skipCreatingInitialPolicies": ["*"]}))

        async def names(mesh_name: str) -> set[str]:
            out = set()
            for kind in ("MeshTimeout", "MeshRetry", "MeshCircuitBreaker"):
                rtype = REGISTRY.by_name(kind)
                assert rtype is not None
                out |= {r.meta.name for r in (await store.list(rtype, ListQuery(mesh=mesh_name))).items}
            return out

        for _ in range(100):
            if len(await names("demo")) == 4:
                break
            await asyncio.sleep(0.01)
        assert len(await names("demo")) == 4 and await names("bare") == set()
        retry = REGISTRY.by_name("MeshRetry")
        assert retry is not None
        await store.delete(retry, "mesh-retry-all-demo", "demo")
        demo = await store.get(REGISTRY.by_name("Mesh"), "demo")  # type: ignore[arg-type]
        await store.update(demo)  # an update is not a creation: the deleted default stays deleted
        await asyncio.sleep(0.05)
        assert "mesh-retry-all-demo" not in await names("demo")
    finally:
        await component.stop()
        await store.close()


def test_entries_naming_a_route_count_only_where_the_route_applies() -> None:
    route = res("""
type: MeshHTTPRoute
mesh: default
name: frontend-api
spec:
  targetRef: {kind: MeshService, name: frontend}
  to:
  - targetRef: {kind: MeshService, name: redis}
    rules: [{matches: [{path: {type: PathPrefix, value: /api}}], default: {}}]
""")
    retry = res("""
type: MeshRetry
mesh: default
name: on-route
spec:
  to: [{targetRef: {kind: MeshHTTPRoute, name: frontend-api}, default: {tcp: {maxConnectAttempt: 7}}}]
""")
    topo = topology(mesh(), fixture_dataplanes(), [route, retry])
    rules = rules_for(topo)
    frontend = rules.to_rules("MeshRetry", topo.dataplanes["frontend-1"])
    client = rules.to_rules("MeshRetry", topo.dataplanes["cache-client-1"])
    # Same matched policies (the retry policy selects the whole mesh), different entries.
    assert rules.matched("MeshRetry", topo.dataplanes["frontend-1"]) == rules.matched(
        "MeshRetry", topo.dataplanes["cache-client-1"])
    assert len(frontend.entries) == 1 and client.entries == ()
