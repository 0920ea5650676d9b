"""An outbound-only dataplane (no inbounds, no gateway: a batch job or a client VM), for real: it registers
through kuma-dp's bootstrap call, its Envoy calls a service with mTLS on, and MeshTrafficPermission allows or
denies it by the identity Kuma 2.14 gives it (its `kuma.io/workload` label: spiffe://<mesh>/<workload>)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.test_xds_mesh import MTLS_MESH, bootstrap_error
from tests.ports import free_port

ALLOW_BATCH = """
type: MeshTrafficPermission
mesh: default
name: allow-batch
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: batch}
    default: {action: Allow}
"""

ALLOW_WEB_ONLY = """
type: MeshTrafficPermission
mesh: default
name: allow-web
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Allow}
"""

ALLOW_MESH_DENY_BATCH_SUBSET = """
type: MeshTrafficPermission
mesh: default
name: allow-mesh
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
---
type: MeshTrafficPermission
mesh: default
name: deny-batch
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshSubset, tags: {kuma.io/service: batch}}
    default: {action: Deny}
"""


@pytest.fixture
def mesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
         app_factory: Callable[..., App]) -> MeshHarness:
    return MeshHarness(cp_factory(), envoy_factory, app_factory)


def job(name: str, outbound_port: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": "127.0.0.1",
                       "outbound": [{"port": outbound_port, "tags": {"kuma.io/service": "backend"}}]},
    }
    if labels:
        doc["labels"] = labels
    return doc


def test_outbound_only_dataplane_calls_a_service_with_mtls(mesh: MeshHarness) -> None:
    mesh.apply(MTLS_MESH % "24h")
    backend = mesh.app("echo_http", "--name", "backend")
    mesh.dataplane("backend-1", "backend", app_port=backend.port)
    port = free_port()
    bootstrap = mesh.bootstrap("job-1", mesh.token("job-1"), job("job-1", port, {"kuma.io/workload": "batch"}))
    envoy = mesh.envoy_factory(bootstrap, name="job-1")
    envoy.wait_listener(f"outbound:127.0.0.1:{port}", timeout=20)

    # mTLS on and no MeshTrafficPermission: denied, as for any caller.
    eventually(lambda: http(port)[0] == 403, message="outbound-only caller denied by default")
    # Its identity is its workload: a permission for MeshService batch lets it in...
    mesh.apply(ALLOW_BATCH)
    _, body = eventually(lambda: (r := http(port, "/job")) and r[0] == 200 and r, message="batch allowed")
    assert isinstance(body, dict) and body["service"] == "backend" and body["path"] == "/job"
    assert "URI=spiffe://default/batch" in body["headers"]["x-forwarded-client-cert"]
    # ...one for another service does not.
    mesh.delete("meshtrafficpermissions", "allow-batch")
    mesh.apply(ALLOW_WEB_ONLY)
    eventually(lambda: http(port)[0] == 403, message="only web allowed: batch denied")
    # A mesh-wide allow lets it in; a MeshSubset on its kuma.io/service (the kuma:// URI in its certificate)
    # denies it again, being more specific.
    mesh.delete("meshtrafficpermissions", "allow-web")
    mesh.apply(ALLOW_MESH_DENY_BATCH_SUBSET.split("---")[0])
    eventually(lambda: http(port)[0] == 200, message="mesh-wide allow")
    mesh.apply(ALLOW_MESH_DENY_BATCH_SUBSET.split("---")[1])
    eventually(lambda: http(port)[0] == 403, message="MeshSubset kuma.io/service=batch denied")

    # It shows as online, with its certificate, under its workload's name in the overview.
    overview = eventually(lambda: (r := mesh.api("GET", "/meshes/default/dataplanes/_overview")).status == 200
                          and r.json)
    assert {i["name"]: i["status"] for i in overview["items"]} == {"backend-1": "online", "job-1": "online"}
    insight = eventually(lambda: (r := mesh.api("GET", "/meshes/default/dataplane-insights/job-1")).status == 200
                         and r.json)
    assert insight["mTLS"]["certificateExpirationTime"]
    # What applies to it, as kumactl inspect and the GUI ask: its outbound, and no inbound section.
    policies = mesh.api("GET", "/meshes/default/dataplanes/job-1/policies")
    assert policies.status == 200, policies.raw
    assert "inbounds" not in policies.raw.decode()


def test_outbound_only_dataplane_without_an_identity_is_refused_in_an_mtls_mesh(mesh: MeshHarness) -> None:
    mesh.apply(MTLS_MESH % "24h")
    e = bootstrap_error(mesh, name="job-2", dataplane=job("job-2", free_port()), dataplaneToken=mesh.token("job-2"))
    assert e.code == "FAILED_PRECONDITION"
    assert "kuma.io/workload" in e.message and "job-2" in e.message and "mTLS identity" in e.message


def test_outbound_only_dataplane_without_mtls_needs_no_identity(mesh: MeshHarness) -> None:
    backend = mesh.app("echo_http", "--name", "backend")
    mesh.dataplane("backend-1", "backend", app_port=backend.port)
    port = free_port()
    envoy = mesh.envoy_factory(mesh.bootstrap("job-3", mesh.token("job-3"), job("job-3", port)), name="job-3")
    envoy.wait_listener(f"outbound:127.0.0.1:{port}", timeout=20)
    _, body = eventually(lambda: (r := http(port, "/plain")) and r[0] == 200 and r, message="job -> backend")
    assert isinstance(body, dict) and body["service"] == "backend"


def test_outbound_only_transparent_proxy_reaches_a_service_by_its_vip(
        cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
        app_factory: Callable[..., App]) -> None:
    # A client VM as Kuma users write it: no inbounds, no outbounds, transparentProxying. kuma-vm's `.mesh`
    # names go to loopback VIPs its Envoy listens on (kuma-dp --dns-enabled), with no iptables; a VIP range of
    # this test's own keeps it apart from other control planes on the machine.
    cidr = f"127.{random.randrange(100, 200)}.{random.randrange(256)}.0/24"
    mesh = MeshHarness(cp_factory(KUMA_DNS_SERVER_CIDR=cidr), envoy_factory, app_factory)
    mesh.apply(MTLS_MESH % "24h")
    mesh.apply(ALLOW_BATCH)
    backend = mesh.app("echo_http", "--name", "backend")
    mesh.dataplane("backend-1", "backend", app_port=backend.port)
    doc = {"type": "Dataplane", "mesh": "default", "name": "vm-1", "labels": {"kuma.io/workload": "batch"},
           "networking": {"address": "127.0.0.1",
                          "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}}}
    envoy = mesh.envoy_factory(mesh.bootstrap("vm-1", mesh.token("vm-1"), doc, vip_listeners=True), name="vm-1")
    vip = eventually(lambda: mesh.api("GET", "/meshes/default/vips").json["vips"].get("backend"),
                     message="backend has a VIP")
    assert "batch" not in mesh.api("GET", "/meshes/default/vips").json["vips"]  # a client is no service
    envoy.wait_listener(f"outbound:{vip}:80", timeout=20)
    _, body = eventually(lambda: (r := http(80, "/vm", host=vip)) and r[0] == 200 and r, message="vm -> backend.mesh")
    assert isinstance(body, dict) and body["service"] == "backend"
    assert "URI=spiffe://default/batch" in body["headers"]["x-forwarded-client-cert"]


TIMEOUT_ON_BATCH = """
type: MeshTimeout
mesh: default
name: batch-timeouts
spec:
  targetRef: {kind: MeshService, name: batch}
  to:
  - targetRef: {kind: Mesh}
    default: {connectionTimeout: 2s}
"""


def test_the_gui_lists_an_outbound_only_proxy_and_what_selects_it(mesh: MeshHarness) -> None:
    from playwright.sync_api import expect

    from tests.integration.test_gui import REFRESH_TIMEOUT_MS, launch_browser, open_page

    backend = mesh.app("echo_http", "--name", "backend")
    mesh.dataplane("backend-1", "backend", app_port=backend.port)
    port = free_port()
    envoy = mesh.envoy_factory(mesh.bootstrap("job-1", mesh.token("job-1"),
                                              job("job-1", port, {"kuma.io/workload": "batch"})), name="job-1")
    envoy.wait_listener(f"outbound:127.0.0.1:{port}", timeout=20)
    mesh.apply(TIMEOUT_ON_BATCH)
    url = mesh.cp.http_url
    with launch_browser() as browser:
        errors: list[str] = []
        page = open_page(browser, errors)
        page.goto(url + "/gui")
        expect(page.locator('[data-count="online"]')).to_have_text("2", timeout=REFRESH_TIMEOUT_MS)
        assert page.text_content('[data-count="services"]') == "1"  # a client is no service
        page.goto(url + "/gui#/policies")
        page.wait_for_selector("main h2")
        expect(page.locator("main")).to_contain_text("batch-timeouts")
        expect(page.locator("main")).to_contain_text("Selects 1 dataplane")  # the job, by its workload
        page.goto(url + "/gui#/dataplanes/default/job-1")
        page.wait_for_selector("text=Policies that apply")
        expect(page.locator("main table").last).to_contain_text("batch-timeouts")
        assert errors == [], errors
