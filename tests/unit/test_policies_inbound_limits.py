"""MeshFaultInjection and MeshRateLimit: how their `from[]` entries merge and what Envoy gets on an inbound
(per-client fault rules, Kuma's percentage conversion, a more specific policy turning a rate limit off)."""

from __future__ import annotations

import json
import re
from typing import Any

from controlplane.policies._clients import client_rules, describe
from controlplane.policies.mesh_fault_injection import bandwidth_kbps, fractional_percent
from controlplane.xds.generate.rules import Entry
from controlplane.xds.generate.targeting import TargetRef
from controlplane.xds.resources import LISTENER
from tests.unit.test_policy_plugins import as_dict, snapshots
from tests.unit.xds_fixtures import res

INBOUND = "inbound:127.0.0.1:10001"  # frontend-1's HTTP inbound in the fixture mesh


def http_filters(policies: list[Any], proxy: str = "frontend-1", listener: str = INBOUND) -> list[dict[str, Any]]:
    found = as_dict(snapshots(policies)[proxy].of_type(LISTENER)[listener])
    for f in found["filter_chains"][0]["filters"]:
        if f["name"] == "envoy.filters.network.http_connection_manager":
            return list(f["typed_config"]["http_filters"])
    return []


def network_filters(policies: list[Any], proxy: str, listener: str) -> list[str]:
    found = as_dict(snapshots(policies)[proxy].of_type(LISTENER)[listener])
    return [f["name"] for f in found["filter_chains"][0]["filters"]]


def test_percentages_convert_as_kuma_does() -> None:
    assert (fractional_percent(50).numerator, fractional_percent(50).denominator) == (50, 0)  # HUNDRED
    assert (fractional_percent("50").numerator, fractional_percent("50").denominator) == (50, 0)
    p = fractional_percent("2.5")
    assert (p.numerator, p.denominator) == (25_000, 2)  # MILLION
    assert fractional_percent("0.0001").numerator == 1


def test_bandwidth_is_whole_kbps() -> None:
    assert bandwidth_kbps("50Mbps") == 50_000
    assert bandwidth_kbps("1Gbps") == 1_000_000
    assert bandwidth_kbps("10kbps") == 10
    assert bandwidth_kbps("2000bps") == 2
    assert bandwidth_kbps("999bps") is None  # below Envoy's 1 kbps
    assert bandwidth_kbps("10 mbps") is None


def entry(policy: str, ref: str, conf: dict[str, Any]) -> Entry:
    import yaml

    return Entry(policy, TargetRef.model_validate({"kind": "Mesh"}), 0,
                 TargetRef.model_validate(yaml.safe_load(ref)), conf)


def test_client_rules_merge_per_service_and_for_everyone_else() -> None:
    everyone = entry("a", "{kind: Mesh}", {"http": [{"delay": {"value": "1s", "percentage": 10}}]})
    web = entry("b", "{kind: MeshServiceSubset, name: web}",
                {"http": [{"abort": {"httpStatus": 503, "percentage": 5}}]})
    api = entry("c", "{kind: MeshSubset, tags: {kuma.io/service: api}}", {"http": []})
    rules = client_rules([everyone, web, api])
    assert describe(rules) == [
        {"clients": {"kuma.io/service": "api"}, "conf": {"http": []}},
        {"clients": {"kuma.io/service": "web"}, "conf": {"http": [{"abort": {"httpStatus": 503, "percentage": 5}}]}},
        {"clients": "every other client", "conf": {"http": [{"delay": {"value": "1s", "percentage": 10}}]}},
    ]
    # Only named clients: nobody else gets a rule.
    assert describe(client_rules([web])) == [describe(rules)[1]]
    # The merge order decides, as in Kuma: a Mesh entry merged after web's (a more specific policy) replaces
    # web's list too.
    assert describe(client_rules([web, everyone]))[0]["conf"] == everyone.conf


def test_fault_filters_match_the_clients_certificate_and_exclude_named_clients_from_the_mesh_rule() -> None:
    policy = res("""
type: MeshFaultInjection
mesh: default
name: faults
spec:
  targetRef: {kind: MeshSubset, tags: {kuma.io/service: frontend}}
  from:
  - targetRef: {kind: Mesh}
    default: {http: [{abort: {httpStatus: 503, percentage: 10}}]}
  - targetRef: {kind: MeshServiceSubset, name: web}
    default: {http: [{delay: {value: 2s, percentage: "12.5"}}]}
""")
    filters = http_filters([policy])
    assert [f["name"] for f in filters] == ["envoy.filters.http.fault"] * 2 + ["envoy.filters.http.router"]
    web, others = (f["typed_config"] for f in filters[:2])
    assert web["delay"]["fixed_delay"] == "2s" and web["delay"]["percentage"] == {
        "numerator": 125_000, "denominator": "MILLION"}
    assert web["headers"][0]["name"] == "x-forwarded-client-cert"
    assert "invert_match" not in web["headers"][0]
    assert others["abort"]["http_status"] == 503 and others["headers"][0]["invert_match"] is True
    assert web["headers"][0]["string_match"] == others["headers"][0]["string_match"]
    # A TCP inbound has no HTTP filters: the policy changes nothing there.
    tcp = res(json.dumps({"type": "MeshFaultInjection", "mesh": "default", "name": "tcp", "spec": {
        "targetRef": {"kind": "Mesh"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": [{"abort": {"httpStatus": 503,
                                                                                   "percentage": 1}}]}}]}}))
    assert snapshots([tcp])["cache-client-1"].version(LISTENER) == snapshots([])["cache-client-1"].version(LISTENER)


MESH_WIDE_LIMIT = """
type: MeshRateLimit
mesh: default
name: mesh-wide
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default:
      local:
        http: {requestRate: {num: 100, interval: 1s}, onRateLimit: {status: 503}}
        tcp: {connectionRate: {num: 50, interval: 2s}}
"""

FRONTEND_UNLIMITED = """
type: MeshRateLimit
mesh: default
name: frontend-unlimited
spec:
  targetRef: {kind: MeshSubset, tags: {kuma.io/service: frontend}}
  from:
  - targetRef: {kind: Mesh}
    default: {local: {http: {disabled: true}}}
"""


def test_rate_limits_render_and_a_more_specific_policy_disables_http() -> None:
    mesh_wide = res(MESH_WIDE_LIMIT)
    filters = http_filters([mesh_wide])
    limit = next(f["typed_config"] for f in filters if f["name"] == "envoy.filters.http.local_ratelimit")
    assert limit["token_bucket"] == {"max_tokens": 100, "tokens_per_fill": 100, "fill_interval": "1s"}
    assert limit["status"] == {"code": "ServiceUnavailable"}
    assert filters[-1]["name"] == "envoy.filters.http.router"
    # TCP limit on HTTP and TCP inbounds alike, just before the terminal filter.
    assert network_filters([mesh_wide], "frontend-1", INBOUND) == [
        "envoy.filters.network.local_ratelimit", "envoy.filters.network.http_connection_manager"]
    assert network_filters([mesh_wide], "cache-client-1", "inbound:127.0.0.1:10002") == [
        "envoy.filters.network.local_ratelimit", "envoy.filters.network.tcp_proxy"]
    # frontend's own policy turns the HTTP limit off and keeps the mesh-wide TCP limit (merged field by field).
    both = [mesh_wide, res(FRONTEND_UNLIMITED)]
    assert [f["name"] for f in http_filters(both)] == ["envoy.filters.http.router"]
    assert network_filters(both, "frontend-1", INBOUND)[0] == "envoy.filters.network.local_ratelimit"


def test_client_matchers_are_valid_re2_for_any_service_name() -> None:
    from controlplane.policies._checks import regex_problem
    from controlplane.policies._clients import client_matchers

    for service in ("web", "my-svc.v1_x", "a:b", "billing_grpc-2"):
        (matcher,) = client_matchers("mesh-1", service, ())
        regex = matcher.string_match.safe_regex.regex
        assert regex_problem(regex) is None, regex
        value = f"By=spiffe://mesh-1/backend;Hash=ab;URI=spiffe://mesh-1/{service};URI=kuma://kuma.io/service/{service}"
        assert re.fullmatch(regex, value)
        assert not re.fullmatch(regex, value.replace(f"mesh-1/{service};", f"mesh-1/{service}x;"))
        assert not re.fullmatch(regex, f"By=spiffe://mesh-1/{service};Hash=ab;URI=spiffe://mesh-1/other")


TCP_LOG = """
type: MeshAccessLog
mesh: default
name: tcp-log
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      backends:
      - {type: Tcp, tcp: {address: "logs.internal:5000"}}
      - {type: File, file: {path: /dev/stdout, format: {type: Json, json: [{key: up, value: "%UPSTREAM_HOST%"}]}}}
"""


def test_tcp_access_log_writes_address_and_message_to_the_dataplanes_pipe() -> None:
    snap = snapshots([res(TCP_LOG)])["frontend-1"]
    listener = as_dict(snap.of_type(LISTENER)["outbound:127.0.0.1:20000"])  # frontend-1's outbound to backend
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    tcp, file = (log["typed_config"] for log in manager["access_log"])
    assert tcp["path"] == "/tmp/kuma-al-frontend-1-default.sock"
    fields = tcp["log_format"]["json_format"]
    assert fields["address"] == "logs.internal:5000"
    assert fields["message"].startswith("[%START_TIME%] default \"%REQ(:METHOD)%")
    assert '"frontend" "backend" "%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"' in fields["message"]
    assert file == {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": "/dev/stdout", "log_format": {"json_format": {"up": "%UPSTREAM_HOST%"}}}
