"""Kuma 2.14's `rules[]` form of MeshAccessLog, MeshFaultInjection and MeshRateLimit (inbound configuration for
every client of the selected proxies, in place of `from[]`).

What Kuma 2.14 does, and so kuma-vm (facts from kumahq/kuma v2.14.3, pkg/plugins/policies/*):
- one rule gives the Envoy config of a `from` entry of kind Mesh with the same `default`;
- MeshRateLimit (`is_from_as_rules`): rules and `from` entries merge in precedence order, the later overriding;
- MeshAccessLog (`is_from_as_rules`): every inbound rule and `from` entry logs to its own backends, so the
  backends of all of them add up (on outbounds, `to` still replaces);
- MeshFaultInjection (not `is_from_as_rules`): every rule's faults run, rule after rule; once a policy with rules
  selects an inbound, other policies' `from` entries are ignored there;
- `rules` excludes `from` and `to` (MeshFaultInjection: `from` only);
- a rule's `matches` (`spiffeID` Exact/Prefix) limit a MeshFaultInjection, MeshAccessLog or MeshRateLimit (HTTP
  only) rule to the callers they select (MeshTimeout's: below); the `sni` matcher is not supported yet.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from controlplane.resources import Resource, ResourceValidationError, from_wire, load_all
from controlplane.xds.resources import LISTENER, TYPE_ORDER
from tests.unit.test_policy_plugins import as_dict, snapshots

REGISTRY = load_all()
FRONTEND = {"kind": "MeshService", "name": "frontend"}
INBOUND = "inbound:127.0.0.1:10001"
LOG = {"backends": [{"type": "File", "file": {"path": "/tmp/frontend-in.log"}}]}
FAULTS = {"http": [{"abort": {"httpStatus": 503, "percentage": 25}}, {"delay": {"value": "2s", "percentage": 10}}]}
LIMIT = {"local": {"http": {"requestRate": {"num": 7, "interval": "1s"}, "onRateLimit": {"status": 423}},
                   "tcp": {"connectionRate": {"num": 9, "interval": "1s"}}}}
DEFAULTS = {"MeshAccessLog": LOG, "MeshFaultInjection": FAULTS, "MeshRateLimit": LIMIT}
SPIFFE = [{"spiffeID": {"type": "Exact", "value": "spiffe://default/frontend"}}]


def policy(kind: str, spec: dict[str, Any], name: str = "p") -> Resource:
    return from_wire({"type": kind, "mesh": "default", "name": name, "spec": spec}, REGISTRY)


def config(snap: Any) -> dict[str, dict[str, Any]]:
    return {t: {n: as_dict(r) for n, r in snap.of_type(t).items()} for t in TYPE_ORDER}


def inbound(policies: list[Resource]) -> str:
    return json.dumps(as_dict(snapshots(policies)["frontend-1"].of_type(LISTENER)[INBOUND]))


def file_logs(policies: list[Resource], listener: str = INBOUND) -> list[str]:
    """The paths of the file access logs on a listener of frontend-1, in order."""
    found = as_dict(snapshots(policies)["frontend-1"].of_type(LISTENER)[listener])
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == "envoy.access_loggers.file":
                out.append(node["typed_config"]["path"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(found)
    return out


def log(path: str) -> dict[str, Any]:
    return {"backends": [{"type": "File", "file": {"path": path}}]}


# --- one rule = one `from` entry of kind Mesh ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DEFAULTS))
def test_a_rule_gives_the_config_of_a_from_entry_of_kind_mesh(kind: str) -> None:
    default = DEFAULTS[kind]
    rules = policy(kind, {"targetRef": FRONTEND, "rules": [{"default": default}]})
    from_ = policy(kind, {"targetRef": FRONTEND, "from": [{"targetRef": {"kind": "Mesh"}, "default": default}]})
    base, by_rules, by_from = snapshots([]), snapshots([rules]), snapshots([from_])
    assert config(by_rules["frontend-1"]) == config(by_from["frontend-1"]) != config(base["frontend-1"])
    assert config(by_rules["cache-client-1"]) == config(base["cache-client-1"])  # not selected


# --- MeshRateLimit: rules merge, the later (more specific) overriding --------------------------------------------


def test_rate_limit_rules_merge_as_from_entries_do() -> None:
    wide = {"local": {"http": {"requestRate": {"num": 100, "interval": "1s"}}}}
    narrow = {"local": {"http": {"requestRate": {"num": 3, "interval": "1s"}}}}
    mesh_rules = policy("MeshRateLimit", {"rules": [{"default": wide}]}, "mesh-wide")
    frontend_rules = policy("MeshRateLimit", {"targetRef": FRONTEND, "rules": [{"default": narrow}]}, "frontend")
    mesh_from = policy("MeshRateLimit", {"from": [{"targetRef": {"kind": "Mesh"}, "default": wide}]}, "mesh-wide")
    two_rules = policy("MeshRateLimit", {"targetRef": FRONTEND, "rules": [{"default": wide}, {"default": narrow}]})
    got = inbound([mesh_rules, frontend_rules])
    assert '"max_tokens": 3' in got and '"max_tokens": 100' not in got
    assert got == inbound([mesh_from, frontend_rules]) == inbound([two_rules])


# --- MeshAccessLog: inbound backends add up, outbound `to` replaces ---------------------------------------------


def test_access_log_inbound_backends_of_every_rule_and_policy_add_up() -> None:
    mesh_wide = policy("MeshAccessLog", {"rules": [{"default": log("/tmp/a-mesh.log")}]}, "mesh-wide")
    frontend = policy("MeshAccessLog", {"targetRef": FRONTEND, "rules": [
        {"default": log("/tmp/b-first.log")}, {"default": log("/tmp/c-second.log")}]}, "frontend")
    # less specific policy first, then the rules in written order (Kuma's order of inbound rules)
    assert file_logs([frontend, mesh_wide]) == ["/tmp/a-mesh.log", "/tmp/b-first.log", "/tmp/c-second.log"]


def test_access_log_from_entries_add_up_too_and_equal_rules() -> None:
    """Kuma 2.14 treats MeshAccessLog's `from` entries as rules: the same fan-out, the same Envoy config."""
    def both(form: str) -> list[Resource]:
        def item(path: str) -> dict[str, Any]:
            return {"default": log(path)} if form == "rules" else {"targetRef": {"kind": "Mesh"}, "default": log(path)}
        return [policy("MeshAccessLog", {form: [item("/tmp/a-mesh.log")]}, "mesh-wide"),
                policy("MeshAccessLog", {"targetRef": FRONTEND, form: [item("/tmp/b.log")]}, "frontend")]
    assert file_logs(both("from")) == ["/tmp/a-mesh.log", "/tmp/b.log"]
    assert inbound(both("from")) == inbound(both("rules"))


def test_access_log_equal_specificity_orders_by_name_descending() -> None:
    a = policy("MeshAccessLog", {"rules": [{"default": log("/tmp/from-a.log")}]}, "a")
    b = policy("MeshAccessLog", {"rules": [{"default": log("/tmp/from-b.log")}]}, "b")
    assert file_logs([a, b]) == file_logs([b, a]) == ["/tmp/from-b.log", "/tmp/from-a.log"]


def test_access_log_outbound_to_still_replaces() -> None:
    mesh_wide = policy("MeshAccessLog", {"to": [{"targetRef": {"kind": "Mesh"}, "default": log("/tmp/out-mesh.log")}]},
                       "mesh-wide")
    frontend = policy("MeshAccessLog", {"targetRef": FRONTEND, "to": [
        {"targetRef": {"kind": "Mesh"}, "default": log("/tmp/out-frontend.log")}]}, "frontend")
    assert file_logs([mesh_wide, frontend], "outbound:127.0.0.1:20000") == ["/tmp/out-frontend.log"]


def test_access_log_rules_with_an_otel_backend_get_the_collector_cluster() -> None:
    otel = {"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "127.0.0.1:4317"}}]}
    snap = snapshots([policy("MeshAccessLog", {"targetRef": FRONTEND, "rules": [{"default": otel}]})])["frontend-1"]
    clusters = config(snap)
    assert any("meshaccesslog:opentelemetry:127.0.0.1:4317" in names for names in clusters.values())


# --- MeshFaultInjection: every rule's faults; rules make other policies' `from` entries moot -------------------


def fault_count(policies: list[Resource]) -> int:
    return inbound(policies).count('"name": "envoy.filters.http.fault"')


def test_fault_injection_rules_add_up_in_order() -> None:
    abort = {"http": [{"abort": {"httpStatus": 500, "percentage": 50}}]}
    delay = {"http": [{"delay": {"value": "3s", "percentage": 20}}]}
    two_rules = policy("MeshFaultInjection", {"targetRef": FRONTEND, "rules": [{"default": abort},
                                                                              {"default": delay}]})
    got = inbound([two_rules])
    assert fault_count([two_rules]) == 2 and got.index('"http_status": 500') < got.index('"fixed_delay": "3s"')
    # the same as one rule listing both faults (each fault is its own filter either way)
    one_rule = policy("MeshFaultInjection", {"targetRef": FRONTEND, "rules": [
        {"default": {"http": [*abort["http"], *delay["http"]]}}]})
    assert got == inbound([one_rule])


def test_fault_injection_from_entries_are_ignored_where_a_policy_with_rules_applies() -> None:
    by_rules = policy("MeshFaultInjection", {"rules": [{"default": {"http": [
        {"abort": {"httpStatus": 500, "percentage": 50}}]}}]}, "by-rules")
    by_from = policy("MeshFaultInjection", {"targetRef": FRONTEND, "from": [
        {"targetRef": {"kind": "MeshService", "name": "web"},
         "default": {"http": [{"delay": {"value": "9s", "percentage": 100}}]}}]}, "by-from")
    got = inbound([by_rules, by_from])
    assert '"fixed_delay": "9s"' not in got and '"http_status": 500' in got
    assert got == inbound([by_rules])
    assert '"fixed_delay": "9s"' in inbound([by_from])  # alone, the `from` policy does apply


def fault_filters_of(policies: list[Resource]) -> list[dict[str, Any]]:
    found = json.loads(inbound(policies))
    out: list[dict[str, Any]] = []
    for chain in found["filter_chains"]:
        for f in chain["filters"]:
            for h in f.get("typed_config", {}).get("http_filters", ()):
                if h["name"] == "envoy.filters.http.fault":
                    out.append(h["typed_config"])
    return out


def xfcc(uri: str) -> str:
    """What the inbound's SANITIZE_SET writes for a caller whose first URI SAN is `uri`."""
    return f"By=spiffe://default/frontend;Hash=0123abcd;URI={uri}"


def test_fault_injection_rule_matches_limit_the_faults_to_those_callers() -> None:
    abort = {"http": [{"abort": {"httpStatus": 503, "percentage": 100}}]}
    delay = {"http": [{"delay": {"value": "2s", "percentage": 100}}]}
    p = policy("MeshFaultInjection", {"targetRef": FRONTEND, "rules": [
        {"matches": [{"spiffeID": {"type": "Exact", "value": "spiffe://default/web"}},
                     {"spiffeID": {"type": "Prefix", "value": "spiffe://default/batch-"}}], "default": abort},
        {"default": delay}]})
    matched, everyone = fault_filters_of([p])
    assert matched["abort"]["http_status"] == 503 and "headers" not in everyone  # written order, catch-all bare
    [header] = matched["headers"]
    assert header["name"] == "x-forwarded-client-cert" and header["treat_missing_header_as_empty"] is True
    regex = re.compile(header["string_match"]["safe_regex"]["regex"])
    selected = ["spiffe://default/web", "spiffe://default/batch-1", "spiffe://default/batch-"]
    others = ["spiffe://default/web2", "spiffe://default/webx", "spiffe://default/batch", "spiffe://other/web",
              "spiffe://default/frontend"]  # the last: our own `By=` never counts
    assert all(regex.fullmatch(xfcc(uri)) for uri in selected)
    assert not any(regex.fullmatch(xfcc(uri)) for uri in others)
    assert not regex.fullmatch("")  # no mTLS, no header: the rule applies to nobody


def test_fault_injection_rule_with_empty_matches_is_for_every_caller() -> None:
    with_empty = policy("MeshFaultInjection", {"targetRef": FRONTEND, "rules": [{"matches": [], "default": FAULTS}]})
    without = policy("MeshFaultInjection", {"targetRef": FRONTEND, "rules": [{"default": FAULTS}]})
    assert inbound([with_empty]) == inbound([without])


def test_fault_injection_rule_matches_shown_by_the_inspect_api() -> None:
    p = policy("MeshFaultInjection", {"targetRef": FRONTEND, "rules": [{"matches": SPIFFE, "default": FAULTS},
                                                                      {"default": FAULTS}]})
    clients = inspected([p], "MeshFaultInjection")["clients"]
    assert [c["clients"] for c in clients] == [SPIFFE, "every client"]
    assert all(c["conf"] == FAULTS for c in clients)


# --- verdicts, with the field paths Kuma 2.14 reports -------------------------------------------------------------

NOT_YET = "a Kuma field kuma-vm does not support yet"
CASES: list[tuple[str, str, dict[str, Any], str | None, str | None]] = [
    # MeshAccessLog
    ("mal-rules", "MeshAccessLog", {"rules": [{"default": LOG}]}, None, None),
    ("mal-rules-dataplane", "MeshAccessLog", {"targetRef": {"kind": "Dataplane", "labels": {"app": "frontend"}},
                                              "rules": [{"default": LOG}]}, None, None),
    ("mal-rules-empty-backends", "MeshAccessLog", {"rules": [{"default": {"backends": []}}]}, None, None),
    ("mal-rules-and-to", "MeshAccessLog", {"rules": [{"default": LOG}], "to": [
        {"targetRef": {"kind": "Mesh"}, "default": LOG}]}, "spec", "fields 'to' and 'from' must be empty"),
    ("mal-rules-and-from", "MeshAccessLog", {"rules": [{"default": LOG}], "from": [
        {"targetRef": {"kind": "Mesh"}, "default": LOG}]}, "spec", "fields 'to' and 'from' must be empty"),
    ("mal-rules-empty", "MeshAccessLog", {"rules": []}, "spec", "at least one of 'from', 'to' or 'rules'"),
    ("mal-rule-matches", "MeshAccessLog", {"rules": [{"matches": SPIFFE, "default": LOG}]}, None, None),
    ("mal-rule-matches-sni", "MeshAccessLog", {"rules": [{"matches": [
        {"sni": {"type": "Exact", "value": "backend.mesh"}}], "default": LOG}]}, "spec.rules[0].matches[0].sni",
     "a Kuma field kuma-vm does not support yet: sni"),
    ("mal-rule-matches-not-spiffe", "MeshAccessLog", {"rules": [{"matches": [
        {"spiffeID": {"type": "Exact", "value": "https://web"}}], "default": LOG}]},
     "spec.rules[0].matches[0].spiffeID.value", "is not a SPIFFE ID"),
    ("mal-rule-bad-backend", "MeshAccessLog", {"rules": [{"default": {"backends": [{"type": "File"}]}}]},
     "spec.rules[0].default.backends[0].file", "must be set with type File"),
    ("mal-rule-bad-format", "MeshAccessLog", {"rules": [{"default": {"backends": [{"type": "File", "file": {
        "path": "/tmp/x.log", "format": {"type": "Plain", "plain": "%NOT_AN_OPERATOR%"}}}]}}]},
     "spec.rules[0].default.backends[0].file.format.plain", None),
    ("mal-rule-no-default", "MeshAccessLog", {"rules": [{}]}, "spec.rules[0].default", None),
    ("mal-rule-no-backends", "MeshAccessLog", {"rules": [{"default": {}}]}, "spec.rules[0].default.backends",
     "must be defined"),
    ("mal-to-no-backends", "MeshAccessLog", {"to": [{"targetRef": {"kind": "Mesh"}, "default": {}}]},
     "spec.to[0].default.backends", "must be defined"),
    ("mal-rules-top-gateway", "MeshAccessLog", {"targetRef": {"kind": "MeshGateway", "name": "edge"},
                                                "rules": [{"default": LOG}]}, "spec.targetRef.kind", None),
    # MeshFaultInjection
    ("mfi-rules", "MeshFaultInjection", {"rules": [{"default": FAULTS}]}, None, None),
    ("mfi-rules-and-from", "MeshFaultInjection", {"rules": [{"default": FAULTS}], "from": [
        {"targetRef": {"kind": "Mesh"}, "default": FAULTS}]}, "spec", "field 'from' must be empty"),
    ("mfi-rules-and-empty-from", "MeshFaultInjection", {"rules": [{"default": FAULTS}], "from": []}, None, None),
    ("mfi-rule-matches", "MeshFaultInjection", {"rules": [{"matches": SPIFFE, "default": FAULTS}]}, None, None),
    ("mfi-rule-matches-prefix", "MeshFaultInjection", {"rules": [{"matches": [
        {"spiffeID": {"type": "Prefix", "value": "spiffe://default/"}}], "default": FAULTS}]}, None, None),
    ("mfi-rule-matches-empty", "MeshFaultInjection", {"rules": [{"matches": [], "default": FAULTS}]}, None, None),
    ("mfi-rule-matches-sni", "MeshFaultInjection", {"rules": [{"matches": [
        {"sni": {"type": "Exact", "value": "backend.mesh"}}], "default": FAULTS}]}, "spec.rules[0].matches[0].sni",
     "a Kuma field kuma-vm does not support yet: sni"),
    ("mfi-rule-matches-no-spiffe-id", "MeshFaultInjection", {"rules": [{"matches": [{}], "default": FAULTS}]},
     "spec.rules[0].matches[0].spiffeID", "is required"),
    ("mfi-rule-matches-not-spiffe", "MeshFaultInjection", {"rules": [{"matches": [
        {"spiffeID": {"type": "Exact", "value": "https://web"}}], "default": FAULTS}]},
     "spec.rules[0].matches[0].spiffeID.value", "is not a SPIFFE ID"),
    ("mfi-rule-matches-quoted-chars", "MeshFaultInjection", {"rules": [{"matches": [
        {"spiffeID": {"type": "Exact", "value": "spiffe://default/web;x=1"}}], "default": FAULTS}]},
     "spec.rules[0].matches[0].spiffeID.value", "is not a SPIFFE ID"),
    ("mfi-rule-matches-bad-type", "MeshFaultInjection", {"rules": [{"matches": [
        {"spiffeID": {"type": "PathPrefix", "value": "spiffe://default/web"}}], "default": FAULTS}]},
     "spec.rules[0].matches[0].spiffeID.type", None),
    ("mfi-rule-bad-status", "MeshFaultInjection", {"rules": [{"default": {"http": [
        {"abort": {"httpStatus": 99, "percentage": 5}}]}}]}, "spec.rules[0].default.http[0].abort.httpStatus", None),
    ("mfi-rule-bad-percentage", "MeshFaultInjection", {"rules": [{"default": {"http": [
        {"delay": {"value": "1s", "percentage": 101}}]}}]}, "spec.rules[0].default.http[0].delay.percentage", None),
    ("mfi-rule-empty-fault", "MeshFaultInjection", {"rules": [{"default": {"http": [{}]}}]},
     "spec.rules[0].default.http[0]", "this fault does nothing"),
    # MeshRateLimit
    ("mrl-rules", "MeshRateLimit", {"rules": [{"default": LIMIT}]}, None, None),
    ("mrl-rules-and-from", "MeshRateLimit", {"rules": [{"default": LIMIT}], "from": [
        {"targetRef": {"kind": "Mesh"}, "default": LIMIT}]}, "spec", "fields 'to' and 'from' must be empty"),
    ("mrl-rule-matches", "MeshRateLimit", {"rules": [{"matches": SPIFFE, "default": {"local": {
        "http": LIMIT["local"]["http"]}}}]}, None, None),
    ("mrl-rule-matches-tcp", "MeshRateLimit", {"rules": [{"matches": SPIFFE, "default": LIMIT}]},
     "spec.rules[0].default.local.tcp", "can't be specified when matches contain spiffeID"),
    ("mrl-rule-matches-sni", "MeshRateLimit", {"rules": [{"matches": [
        {"sni": {"type": "Exact", "value": "backend.mesh"}}], "default": LIMIT}]}, "spec.rules[0].matches[0].sni",
     "a Kuma field kuma-vm does not support yet: sni"),
    ("mrl-rule-no-local", "MeshRateLimit", {"rules": [{"default": {}}]}, "spec.rules[0].default.local",
     "must be defined"),
    ("mrl-rule-short-interval", "MeshRateLimit", {"rules": [{"default": {"local": {"tcp": {
        "connectionRate": {"num": 1, "interval": "10ms"}}}}}]},
     "spec.rules[0].default.local.tcp.connectionRate.interval", None),
    ("mrl-rule-empty-http", "MeshRateLimit", {"rules": [{"default": {"local": {"http": {}}}}]},
     "spec.rules[0].default.local.http", "must have at least one defined"),
    ("mrl-rules-top-route", "MeshRateLimit", {"targetRef": {"kind": "MeshHTTPRoute", "name": "r"},
                                              "rules": [{"default": LIMIT}]}, "spec.targetRef.kind", None),
]


@pytest.mark.parametrize("kind, spec, field, reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules_verdicts_match_kuma(kind: str, spec: dict[str, Any], field: str | None, reason: str | None) -> None:
    doc = {"type": kind, "mesh": "default", "name": "p", "spec": spec}
    if field is None:
        from_wire(doc, REGISTRY)
        return
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc, REGISTRY)
    found = {p.field: p.reason for p in e.value.invalid}
    assert field in found, found
    if reason is not None:
        assert reason in found[field], found
    if reason == NOT_YET:
        assert found[field].startswith(f"{NOT_YET}: matches"), found


# --- the inspect API shows what the inbound gets, not a merge Kuma does not do ------------------------------------


def inspected(policies: list[Resource], kind: str) -> dict[str, Any]:
    from controlplane.api.policies_view import inspect
    from tests.unit.test_policy_plugins import fixture_dataplanes
    from tests.unit.xds_fixtures import mesh, topology

    dataplanes = fixture_dataplanes()
    frontend = next(d for d in dataplanes if d.meta.name == "frontend-1")
    sections = {s["type"]: s for s in inspect(topology(mesh(), dataplanes, policies), frontend)["policyTypes"]}
    inbounds = sections[kind]["inbounds"]
    assert len(inbounds) == 1
    return dict(inbounds[0])


def test_inspect_shows_access_log_backends_added_up() -> None:
    mesh_wide = policy("MeshAccessLog", {"rules": [{"default": log("/tmp/a-mesh.log")}]}, "mesh-wide")
    frontend = policy("MeshAccessLog", {"targetRef": FRONTEND, "rules": [{"default": log("/tmp/b.log")}]}, "frontend")
    shown = inspected([mesh_wide, frontend], "MeshAccessLog")
    assert shown["conf"] == {"backends": [*log("/tmp/a-mesh.log")["backends"], *log("/tmp/b.log")["backends"]]}
    assert shown["origins"] == ["mesh-wide", "frontend"]


def test_inspect_shows_fault_injection_rules_in_order_for_every_client() -> None:
    by_rules = policy("MeshFaultInjection", {"targetRef": FRONTEND, "rules": [{"default": FAULTS}]}, "by-rules")
    by_from = policy("MeshFaultInjection", {"from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": [
        {"delay": {"value": "9s", "percentage": 100}}]}}]}, "by-from")
    shown = inspected([by_rules, by_from], "MeshFaultInjection")
    assert shown["clients"] == [{"clients": "every client", "conf": FAULTS}]
    assert shown["origins"] == ["by-rules"]
    assert inspected([by_from], "MeshFaultInjection")["clients"] == [
        {"clients": "every client", "conf": {"http": [{"delay": {"value": "9s", "percentage": 100}}]}}]


# --- MeshTimeout: rules with matches set per-request timeouts per caller (Kuma 2.14's matched routes) -------------


def inbound_routes(policies: list[Resource]) -> list[tuple[str | None, dict[str, Any]]]:
    """The frontend inbound's routes: (the XFCC regex a route needs, or None; its route action)."""
    found = json.loads(inbound(policies))
    manager = found["filter_chains"][0]["filters"][-1]["typed_config"]
    out = []
    for route in manager["route_config"]["virtual_hosts"][0]["routes"]:
        headers = route["match"].get("headers") or [{}]
        out.append((headers[0].get("string_match", {}).get("safe_regex", {}).get("regex"), route["route"]))
    return out


def exact(service: str) -> dict[str, Any]:
    return {"spiffeID": {"type": "Exact", "value": f"spiffe://default/{service}"}}


def prefix(value: str) -> dict[str, Any]:
    return {"spiffeID": {"type": "Prefix", "value": f"spiffe://default/{value}"}}


def request_timeout(value: str) -> dict[str, Any]:
    return {"http": {"requestTimeout": value}}


def test_timeout_matches_route_callers_most_specific_first_with_covering_rules_merged() -> None:
    p = policy("MeshTimeout", {"targetRef": FRONTEND, "rules": [
        {"default": {"http": {"requestTimeout": "7s"}}},
        {"matches": [prefix("")], "default": {"http": {"streamIdleTimeout": "1m"}}},
        {"matches": [prefix("b")], "default": request_timeout("5s")},
        {"matches": [exact("web"), prefix("batch-")], "default": request_timeout("2s")}]})
    routes = inbound_routes([p])
    assert [r for r, _ in routes] == [
        "(.*;)?URI=(spiffe://default/web)([;,].*)?",      # Exact first
        "(.*;)?URI=(spiffe://default/batch\\-[^;,]*)([;,].*)?",  # then the longer prefix
        "(.*;)?URI=(spiffe://default/b[^;,]*)([;,].*)?",
        "(.*;)?URI=(spiffe://default/[^;,]*)([;,].*)?",
        None]                                              # every other caller: the route itself
    timeouts = [(action["timeout"], action.get("idle_timeout")) for _, action in routes]
    # each copy merges every rule covering its match (shorter prefixes first), on top of the catch-all route
    assert timeouts == [("2s", "60s"), ("2s", "60s"), ("5s", "60s"), ("7s", "60s"), ("7s", None)]


def test_timeout_matches_of_a_higher_precedence_policy_win_for_the_same_callers() -> None:
    mesh_wide = policy("MeshTimeout", {"rules": [{"matches": [exact("web")], "default": request_timeout("9s")}]},
                       "mesh-wide")
    frontend = policy("MeshTimeout", {"targetRef": FRONTEND, "rules": [
        {"matches": [exact("web")], "default": request_timeout("3s")}]}, "frontend")
    routes = inbound_routes([frontend, mesh_wide])
    # no catch-all rule: every other caller keeps kuma-vm's bare inbound route
    assert [(r is not None, a["timeout"]) for r, a in routes] == [(True, "3s"), (False, "0s")]


def test_timeout_rules_with_matches_leave_every_other_callers_config_alone() -> None:
    """Only what a route sets can depend on the caller: the catch-all config is that of the rules without
    matches, and a policy of only matched rules changes nothing else (cluster, connection manager)."""
    catch_all = {"default": {"idleTimeout": "20m", "http": {"requestTimeout": "7s"}}}
    plain = policy("MeshTimeout", {"targetRef": FRONTEND, "rules": [catch_all]})
    with_matches = policy("MeshTimeout", {"targetRef": FRONTEND, "rules": [
        catch_all, {"matches": [exact("web")], "default": request_timeout("2s")}]})
    base, by_plain, by_matches = (snapshots(ps)["frontend-1"] for ps in ([], [plain], [with_matches]))
    without_routes = {t: v for t, v in config(by_matches).items() if t != LISTENER}
    assert without_routes == {t: v for t, v in config(by_plain).items() if t != LISTENER}
    routes = inbound_routes([with_matches])
    assert len(routes) == 2 and routes[1] == (None, inbound_routes([plain])[0][1])
    only_matched = policy("MeshTimeout", {"targetRef": FRONTEND, "rules": [
        {"matches": [exact("web")], "default": request_timeout("2s")}]})
    assert {t: v for t, v in config(snapshots([only_matched])["frontend-1"]).items() if t != LISTENER} == \
        {t: v for t, v in config(base).items() if t != LISTENER}
    assert inbound_routes([only_matched])[1] == inbound_routes([])[0]


def test_timeout_matches_of_a_policy_for_another_service_do_not_apply() -> None:
    other = policy("MeshTimeout", {"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
        {"matches": [exact("web")], "default": request_timeout("2s")}]})
    assert inbound([other]) == inbound([])


# --- MeshAccessLog: rules with matches log only their callers' traffic (Kuma 2.14's CEL filter) -----------------


def inbound_loggers(policies: list[Resource], proxy: str = "frontend-1",
                    listener: str = INBOUND) -> list[tuple[str, str | None]]:
    """(file path, CEL expression or None) of every access logger on a listener, in order."""
    found = as_dict(snapshots(policies)[proxy].of_type(LISTENER)[listener])
    out = []
    for f in found["filter_chains"][0]["filters"]:
        for log in f["typed_config"].get("access_log") or ():
            cel = log.get("filter", {}).get("extension_filter", {})
            assert cel.get("name", "envoy.access_loggers.extension_filters.cel") == \
                "envoy.access_loggers.extension_filters.cel"
            out.append((log["typed_config"]["path"], cel.get("typed_config", {}).get("expression")))
    return out


def test_access_log_matches_log_only_their_callers_matched_rules_first() -> None:
    mesh_wide = policy("MeshAccessLog", {"rules": [{"default": log("/tmp/a-everyone.log")}]}, "mesh-wide")
    frontend = policy("MeshAccessLog", {"targetRef": FRONTEND, "rules": [
        {"matches": [prefix("batch-")], "default": log("/tmp/b-batch.log")},
        {"default": log("/tmp/c-everyone.log")},
        {"matches": [exact("web"), exact("api")], "default": log("/tmp/d-web-api.log")}]}, "frontend")
    # Kuma: one rule per match; Exact matches, then Prefix, then rules for everyone, each in precedence order
    assert inbound_loggers([frontend, mesh_wide]) == [
        ("/tmp/d-web-api.log", 'connection.uri_san_peer_certificate == "spiffe://default/web"'),
        ("/tmp/d-web-api.log", 'connection.uri_san_peer_certificate == "spiffe://default/api"'),
        ("/tmp/b-batch.log", 'connection.uri_san_peer_certificate.startsWith("spiffe://default/batch-")'),
        ("/tmp/a-everyone.log", None), ("/tmp/c-everyone.log", None)]
    # without matches nothing changes: every rule for everyone, in precedence order
    assert file_logs([frontend, mesh_wide]) == [path for path, _ in inbound_loggers([frontend, mesh_wide])]


def test_access_log_matches_filter_tcp_inbounds_too() -> None:
    """The CEL filter reads the connection's peer certificate, so a TCP inbound's log is narrowed the same way."""
    p = policy("MeshAccessLog", {"targetRef": {"kind": "MeshService", "name": "cache-client"}, "rules": [
        {"matches": [exact("web")], "default": log("/tmp/tcp-web.log")}]})
    assert inbound_loggers([p], "cache-client-1", "inbound:127.0.0.1:10002") == [
        ("/tmp/tcp-web.log", 'connection.uri_san_peer_certificate == "spiffe://default/web"')]


# --- MeshRateLimit: rules with matches limit each caller match's requests on its own route ----------------------


def rate_limits(policies: list[Resource]) -> tuple[dict[str, Any] | None, list[tuple[str | None, Any]]]:
    """The inbound's local_ratelimit filter config, and per route (XFCC regex or None) its own limit: the bucket's
    size, "off" for a config that never limits (no filter_enabled), None for none (the filter's applies)."""
    found = json.loads(inbound(policies))
    manager = found["filter_chains"][0]["filters"][-1]["typed_config"]
    name = "envoy.filters.http.local_ratelimit"
    filters = [f["typed_config"] for f in manager["http_filters"] if f["name"] == name]
    routes = []
    for route in manager["route_config"]["virtual_hosts"][0]["routes"]:
        headers = route["match"].get("headers") or [{}]
        per_route = (route.get("typed_per_filter_config") or {}).get(name)
        limit = None if per_route is None else \
            per_route["token_bucket"]["max_tokens"] if "filter_enabled" in per_route else "off"
        routes.append((headers[0].get("string_match", {}).get("safe_regex", {}).get("regex"), limit))
    return (filters[0] if filters else None), routes


def http_rate(num: int, **extra: Any) -> dict[str, Any]:
    return {"local": {"http": {"requestRate": {"num": num, "interval": "1s"}, **extra}}}


def test_rate_limit_matches_give_each_caller_match_its_own_bucket_on_top_of_the_catch_all() -> None:
    p = policy("MeshRateLimit", {"targetRef": FRONTEND, "rules": [
        {"default": {"local": {"http": {"requestRate": {"num": 100, "interval": "1s"},
                                        "onRateLimit": {"status": 503}},
                               "tcp": {"connectionRate": {"num": 9, "interval": "1s"}}}}},
        {"matches": [prefix("batch-")], "default": http_rate(5)},
        {"matches": [exact("web")], "default": {"local": {"http": {"disabled": True}}}}]})
    base, routes = rate_limits([p])
    assert base is not None and base["token_bucket"]["max_tokens"] == 100  # every other caller: the catch-all
    assert routes == [("(.*;)?URI=(spiffe://default/web)([;,].*)?", "off"),  # disabled for web
                      ("(.*;)?URI=(spiffe://default/batch\\-[^;,]*)([;,].*)?", 5), (None, None)]
    got = json.loads(inbound([p]))
    per_route = got["filter_chains"][0]["filters"][-1]["typed_config"]["route_config"]["virtual_hosts"][0][
        "routes"][1]["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert per_route["status"]["code"] == "ServiceUnavailable"  # the catch-all's onRateLimit carries over
    assert '"envoy.filters.network.local_ratelimit"' in inbound([p])  # TCP stays for every caller


def test_rate_limit_matches_alone_add_a_filter_that_limits_only_their_routes() -> None:
    p = policy("MeshRateLimit", {"targetRef": FRONTEND, "rules": [
        {"matches": [exact("web")], "default": http_rate(3)}]})
    base, routes = rate_limits([p])
    assert base is not None and "token_bucket" not in base
    assert routes == [("(.*;)?URI=(spiffe://default/web)([;,].*)?", 3), (None, None)]


def test_timeout_and_rate_limit_matches_combine_per_caller() -> None:
    """Each policy copies the routes the other made, so a caller both match gets both, in the most specific copy."""
    timeouts = policy("MeshTimeout", {"targetRef": FRONTEND, "rules": [
        {"matches": [exact("web")], "default": request_timeout("2s")}]})
    limits = policy("MeshRateLimit", {"targetRef": FRONTEND, "rules": [
        {"matches": [prefix("")], "default": http_rate(4)}]})
    found = json.loads(inbound([timeouts, limits]))
    routes = found["filter_chains"][0]["filters"][-1]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    summary = [([h["string_match"]["safe_regex"]["regex"] for h in r["match"].get("headers", ())],
                r["route"]["timeout"], "typed_per_filter_config" in r) for r in routes]
    web, anyone = "(.*;)?URI=(spiffe://default/web)([;,].*)?", "(.*;)?URI=(spiffe://default/[^;,]*)([;,].*)?"
    assert summary == [([web, anyone], "2s", True), ([web], "2s", False), ([anyone], "0s", True), ([], "0s", False)]


def test_inspect_shows_timeout_and_rate_limit_confs_per_caller_match() -> None:
    """The inspect API shows what the per-caller routes carry: per match, most specific first, the merge of the
    rules covering it (MeshRateLimit's on top of the catch-all), beside the conf for every caller."""
    timeouts = policy("MeshTimeout", {"targetRef": FRONTEND, "rules": [
        {"default": request_timeout("7s")},
        {"matches": [prefix("")], "default": {"http": {"streamIdleTimeout": "1m"}}},
        {"matches": [exact("web")], "default": request_timeout("2s")}]})
    shown = inspected([timeouts], "MeshTimeout")
    assert shown["conf"] == request_timeout("7s")
    assert shown["clients"] == [
        {"clients": [exact("web")], "conf": {"http": {"requestTimeout": "2s", "streamIdleTimeout": "1m"}}},
        {"clients": [prefix("")], "conf": {"http": {"streamIdleTimeout": "1m"}}}]
    # a policy of matched rules only: no conf for every caller, and still shown
    only_matched = policy("MeshTimeout", {"targetRef": FRONTEND, "rules": [
        {"matches": [exact("web")], "default": request_timeout("2s")}]})
    shown = inspected([only_matched], "MeshTimeout")
    assert "conf" not in shown and shown["entries"] == []
    assert shown["clients"] == [{"clients": [exact("web")], "conf": request_timeout("2s")}]
    web_limit = {"local": {"http": {"requestRate": {"num": 1, "interval": "1s"}}}}
    limits = policy("MeshRateLimit", {"targetRef": FRONTEND, "rules": [
        {"default": LIMIT}, {"matches": [exact("web")], "default": web_limit}]})
    shown = inspected([limits], "MeshRateLimit")
    assert shown["conf"] == LIMIT
    merged = {"local": {**LIMIT["local"], "http": {**LIMIT["local"]["http"], **web_limit["local"]["http"]}}}
    assert shown["clients"] == [{"clients": [exact("web")], "conf": merged}]
