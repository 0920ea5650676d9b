"""Kuma 2.14's `rules[]` form of MeshAccessLog and MeshFaultInjection between real Envoys on loopback: a rule
aborts every request into the backend with the status it names, and the inbound access logs of two policies'
rules both get the request's line (Kuma 2.14 fans an inbound request out to every rule's backends)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.test_policies_access_log import FLUSH_WAIT_S, lines
from tests.integration.test_policies_envoy import ALLOW_ALL, MTLS_MESH, policy_mesh
from tests.integration.test_policies_faults import inspected


@pytest.fixture
def pmesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
          app_factory: Callable[..., App]) -> MeshHarness:
    return policy_mesh(cp_factory, envoy_factory, app_factory)


def policies(mesh_log: Path, backend_log: Path) -> str:
    return f"""
type: MeshAccessLog
mesh: default
name: inbound-everywhere
spec:
  rules:
  - default:
      backends:
      - type: File
        file:
          path: "{mesh_log}"
          format:
            type: Json
            json: [{{key: path, value: "%REQ(:PATH)%"}}, {{key: status, value: "%RESPONSE_CODE%"}}]
---
type: MeshAccessLog
mesh: default
name: inbound-backend
spec:
  targetRef: {{kind: MeshService, name: backend}}
  rules:
  - default:
      backends:
      - type: File
        file:
          path: "{backend_log}"
          format: {{type: Plain, plain: "%REQ(:PATH)% %RESPONSE_CODE% %KUMA_DESTINATION_SERVICE%"}}
---
type: MeshFaultInjection
mesh: default
name: backend-teapot
spec:
  targetRef: {{kind: MeshService, name: backend}}
  rules:
  - default:
      http:
      - abort: {{httpStatus: 418, percentage: 100}}
"""


def test_rules_abort_and_log_to_every_rules_backends(pmesh: MeshHarness, tmp_path: Path) -> None:
    mesh = pmesh
    mesh_log, backend_log = tmp_path / "inbound-everywhere.json", tmp_path / "inbound-backend.log"
    mesh.apply(policies(mesh_log, backend_log))  # first: listeners changed later apply to new connections only
    mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    web = mesh.dataplane("web-1", "web", app_port=mesh.app("echo_http", "--name", "web").port,
                         outbounds={"backend": 0})

    eventually(lambda: http(web.outbounds["backend"], "/ready")[0] == 418, message="the rule aborts with 418")
    assert http(web.outbounds["backend"], "/rules?x=1")[0] == 418

    # Both policies' rules log the backend's inbound request (the mesh-wide one also logs web's inbound, if any).
    records = eventually(lambda: [json.loads(x) for x in lines(mesh_log) if '"/rules?x=1"' in x],
                         timeout=FLUSH_WAIT_S, message=f"inbound line in {mesh_log}")
    assert records[0] == {"path": "/rules?x=1", "status": 418}, records
    line = eventually(lambda: next((x for x in lines(backend_log) if x.startswith("/rules?x=1 ")), None),
                      timeout=FLUSH_WAIT_S, message=f"inbound line in {backend_log}")
    assert line == "/rules?x=1 418 backend", line

    shown = inspected(mesh, "backend-1", "MeshAccessLog")
    assert shown["inbounds"][0]["origins"] == ["inbound-everywhere", "inbound-backend"]
    assert len(shown["inbounds"][0]["conf"]["backends"]) == 2


MATCHES = """
type: MeshFaultInjection
mesh: default
name: backend-faults-by-caller
spec:
  targetRef: {kind: MeshService, name: backend}
  rules:
  - matches:
    - spiffeID: {type: Exact, value: "spiffe://default/web"}
    default:
      http:
      - abort: {httpStatus: 418, percentage: 100}
  - matches:
    - spiffeID: {type: Prefix, value: "spiffe://default/batch-"}
    default:
      http:
      - abort: {httpStatus: 503, percentage: 100}
"""


def test_rule_matches_abort_only_the_matched_callers(pmesh: MeshHarness) -> None:
    """Kuma 2.13+'s `rules[].matches` in an mTLS mesh: each rule aborts the requests of the callers whose
    certificate's SPIFFE ID it matches (Exact web, Prefix batch-) and no one else's, even a caller that sends
    a forged x-forwarded-client-cert."""
    mesh = pmesh
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    mesh.apply(MATCHES)  # first: listeners changed later apply to new connections only
    backend = mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    callers = {name: mesh.dataplane(f"{name}-1", name, app_port=mesh.app("echo_http", "--name", name).port,
                                    outbounds={"backend": 0}).outbounds["backend"]
               for name in ("web", "batch-7", "webx", "other")}

    eventually(lambda: http(callers["web"])[0] == 418, message="web's requests are aborted with 418")
    eventually(lambda: http(callers["batch-7"])[0] == 503, message="batch-7's requests are aborted with 503")
    for _ in range(10):  # every request of a matched caller, none of the others' (percentage 100)
        assert http(callers["web"])[0] == 418
        assert http(callers["batch-7"])[0] == 503
        status, body = http(callers["other"])
        assert status == 200, body
        assert http(callers["webx"])[0] == 200  # Exact: a longer ID with the same start is not matched
    # The backend's inbound overwrites the header from the caller's certificate: forging it changes nothing.
    status, body = http(callers["other"], headers={"x-forwarded-client-cert": "URI=spiffe://default/web"})
    assert status == 200 and isinstance(body, dict), body
    assert "URI=spiffe://default/other" in body["headers"]["x-forwarded-client-cert"]
    prefix = f"http.inbound_127_0_0_1_{backend.inbound_port}.fault"
    assert backend.envoy.stat(f"{prefix}.aborts_injected") >= 22

    shown = inspected(mesh, "backend-1", "MeshFaultInjection")
    assert [c["clients"] for c in shown["inbounds"][0]["clients"]] == [
        [{"spiffeID": {"type": "Exact", "value": "spiffe://default/web"}}],
        [{"spiffeID": {"type": "Prefix", "value": "spiffe://default/batch-"}}]]


TIMEOUT_MATCHES = """
type: MeshTimeout
mesh: default
name: backend-timeouts-by-caller
spec:
  targetRef: {kind: MeshService, name: backend}
  rules:
  - default:
      http: {requestTimeout: 30s}
  - matches:
    - spiffeID: {type: Exact, value: "spiffe://default/web"}
    default:
      http: {requestTimeout: 200ms}
"""


def test_timeout_rule_matches_cut_only_the_matched_callers_requests(pmesh: MeshHarness) -> None:
    """Kuma 2.14's MeshTimeout `rules[].matches` in an mTLS mesh: the backend's inbound gives web's requests 200ms
    (a 1.5s answer is cut with a 504) while every other caller gets the catch-all 30s (the same answer is a 200),
    even one that forges web's ID in x-forwarded-client-cert."""
    mesh = pmesh
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    mesh.apply(TIMEOUT_MATCHES)  # first: listeners changed later apply to new connections only
    backend = mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    callers = {name: mesh.dataplane(f"{name}-1", name, app_port=mesh.app("echo_http", "--name", name).port,
                                    outbounds={"backend": 0}).outbounds["backend"]
               for name in ("web", "other")}

    eventually(lambda: http(callers["web"], "/ready")[0] == 200, message="web reaches the backend")
    eventually(lambda: http(callers["other"], "/ready")[0] == 200, message="other reaches the backend")
    status, body = http(callers["web"], "/delay/1500")
    assert status == 504 and "upstream request timeout" in str(body), (status, body)
    status, body = http(callers["other"], "/delay/1500")
    assert status == 200, (status, body)
    forged = http(callers["other"], "/delay/1500", headers={"x-forwarded-client-cert": "URI=spiffe://default/web"})
    assert forged[0] == 200, forged
    cut = backend.envoy.stats(filter=r"^cluster\.localhost_[0-9]+\.upstream_rq_timeout$")
    assert list(cut.values()) == [1], cut  # the backend's inbound cut web's request, and only that one


def access_log_matches(web_log: Path, everyone_log: Path) -> str:
    return f"""
type: MeshAccessLog
mesh: default
name: backend-logs-by-caller
spec:
  targetRef: {{kind: MeshService, name: backend}}
  rules:
  - matches:
    - spiffeID: {{type: Exact, value: "spiffe://default/web"}}
    default:
      backends:
      - type: File
        file: {{path: "{web_log}", format: {{type: Plain, plain: "%REQ(:PATH)% %RESPONSE_CODE%"}}}}
  - default:
      backends:
      - type: File
        file: {{path: "{everyone_log}", format: {{type: Plain, plain: "%REQ(:PATH)% %RESPONSE_CODE%"}}}}
"""


def test_access_log_rule_matches_log_only_the_matched_callers(pmesh: MeshHarness, tmp_path: Path) -> None:
    """Kuma 2.14's MeshAccessLog `rules[].matches` in an mTLS mesh: the backend's inbound logs web's requests to
    the matched rule's file and every caller's to the catch-all rule's; another caller's requests (even one that
    forges web's x-forwarded-client-cert) never reach the matched file."""
    mesh = pmesh
    web_log, everyone_log = tmp_path / "from-web.log", tmp_path / "everyone.log"
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    mesh.apply(access_log_matches(web_log, everyone_log))  # first: listeners changed later apply to new connections
    mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    callers = {name: mesh.dataplane(f"{name}-1", name, app_port=mesh.app("echo_http", "--name", name).port,
                                    outbounds={"backend": 0}).outbounds["backend"]
               for name in ("web", "other")}

    eventually(lambda: http(callers["web"], "/ready")[0] == 200, message="web reaches the backend")
    eventually(lambda: http(callers["other"], "/ready")[0] == 200, message="other reaches the backend")
    assert http(callers["other"], "/from-other")[0] == 200
    assert http(callers["other"], "/forged", headers={"x-forwarded-client-cert": "URI=spiffe://default/web"})[0] == 200
    eventually(lambda: {"/from-other 200", "/forged 200"} <= set(lines(everyone_log)), timeout=FLUSH_WAIT_S,
               message=f"other's lines in {everyone_log}")
    # Both loggers of a request run at once, so other's lines, had they matched, are already in web_log's buffer,
    # ahead of any line logged from now on: once web's next line is in the file, theirs would be too.
    assert http(callers["web"], "/from-web")[0] == 200
    eventually(lambda: "/from-web 200" in lines(web_log), timeout=FLUSH_WAIT_S, message=f"web's line in {web_log}")
    assert not any(x.startswith(("/from-other", "/forged")) for x in lines(web_log)), lines(web_log)
    eventually(lambda: "/from-web 200" in lines(everyone_log), timeout=FLUSH_WAIT_S,
               message=f"web's line in {everyone_log} (the rule without matches logs every caller)")


RATE_LIMIT_MATCHES = """
type: MeshRateLimit
mesh: default
name: backend-limits-by-caller
spec:
  targetRef: {kind: MeshService, name: backend}
  rules:
  - matches:
    - spiffeID: {type: Exact, value: "spiffe://default/web"}
    default:
      local:
        http:
          requestRate: {num: 2, interval: 1h}
          onRateLimit: {status: 429}
"""


def test_rate_limit_rule_matches_limit_only_the_matched_callers(pmesh: MeshHarness) -> None:
    """Kuma 2.14's MeshRateLimit `rules[].matches` in an mTLS mesh: web's requests into the backend share a bucket
    of 2 an hour (then 429), while another caller, even one that forges web's x-forwarded-client-cert, is not
    limited at all (the policy has no rule for every caller)."""
    mesh = pmesh
    mesh.apply(MTLS_MESH)
    mesh.apply(ALLOW_ALL)
    mesh.apply(RATE_LIMIT_MATCHES)  # first: listeners changed later apply to new connections only
    mesh.dataplane("backend-1", "backend", app_port=mesh.app("echo_http", "--name", "backend").port)
    callers = {name: mesh.dataplane(f"{name}-1", name, app_port=mesh.app("echo_http", "--name", name).port,
                                    outbounds={"backend": 0}).outbounds["backend"]
               for name in ("web", "other")}

    eventually(lambda: http(callers["web"])[0] == 429, message="web's bucket of 2 runs out")
    for _ in range(10):
        status, body = http(callers["other"])
        assert status == 200, (status, body)
    forged = http(callers["other"], headers={"x-forwarded-client-cert": "URI=spiffe://default/web"})
    assert forged[0] == 200, forged
    assert http(callers["web"])[0] == 429  # still out: the bucket refills once an hour
