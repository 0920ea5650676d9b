"""MeshMetric end to end: a real kuma-cp, kuma-dp processes with their real Envoys, and a real Prometheus
that finds every dataplane by itself through kuma_sd_configs (the control plane's MADS) and scrapes what
kuma-dp serves on the port and path the MeshMetric names, filtered and labelled as it says."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane.kumactl.inspect import policies_table
from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.kuma_sd import KumaSdBridge, supports_kuma_sd
from tests.integration.prometheus_server import prometheus_binary, running_prometheus
from tests.integration.test_kuma_dp_support import (
    DpMesh,
    DpProcess,
    dp_factory,  # noqa: F401  (fixture)
    eventually,
    get,
    http,
)
from tests.ports import free_port

MADS = "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT"


@pytest.fixture
def mesh(cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
         dp_factory: Callable[..., DpProcess]) -> DpMesh:  # noqa: F811
    cp = cp_factory(KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1", KUMA_MULTIZONE_ZONE_NAME="zone-1")
    return DpMesh(cp, app_factory, dp_factory)


def put(mesh: DpMesh, doc: dict[str, Any]) -> None:
    r = mesh.api("PUT", f"/meshes/{mesh.mesh}/meshmetrics/{doc['name']}", doc)
    assert r.status in (200, 201), r.raw


def mesh_metric(name: str, target: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshMetric", "mesh": "default", "name": name, "spec": {"targetRef": target, "default": default}}


def mads_fetch(port: int, version: str = "", timeout: str = "1s") -> tuple[int, dict[str, Any]]:
    body = json.dumps({"versionInfo": version, "node": {"id": "test"}, "resourceNames": [],
                       "typeUrl": "type.googleapis.com/kuma.observability.v1.MonitoringAssignment"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v3/discovery:monitoringassignments?fetch-timeout={timeout}",
                                 data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


def value(prom_result: list[dict[str, Any]]) -> float:
    assert len(prom_result) == 1, prom_result
    return float(prom_result[0]["value"][1])


def test_prometheus_discovers_and_scrapes_every_dataplane(mesh: DpMesh, tmp_path: Path) -> None:
    mesh.service("backend")
    web = mesh.service("web", outbounds={"backend": 0})
    web_port, backend_port = free_port(), free_port()
    # Mesh-wide: what to publish (Basic, minus connection stats, plus one family back); per dataplane: where
    # (both dataplanes share 127.0.0.1 here, so each gets its own port: the more specific policy wins).
    put(mesh, mesh_metric("metrics-default", {"kind": "Mesh"}, {
        "sidecar": {"profiles": {"appendProfiles": [{"name": "Basic"}],
                                 "exclude": [{"type": "Prefix", "match": "envoy_cluster_upstream_cx_"}],
                                 "include": [{"type": "Exact", "match": "envoy_cluster_upstream_cx_total"}]}},
        "backends": [{"type": "Prometheus", "prometheus": {"port": 5670, "path": "/metrics"}}]}))
    for name, port in (("web-1", web_port), ("backend-1", backend_port)):
        put(mesh, mesh_metric(f"metrics-{name}", {"kind": "Dataplane", "name": name}, {
            "backends": [{"type": "Prometheus", "prometheus": {"port": port, "path": "/mesh-metrics"}}]}))

    # `kumactl inspect dataplane web-1 --type policies`: both MeshMetrics, the Dataplane one last (it wins), and
    # the merged conf of the whole proxy.
    r = mesh.api("GET", "/meshes/default/dataplanes/web-1/policies")
    assert r.status == 200, r.raw
    section = next(s for s in json.loads(r.raw)["policyTypes"] if s["type"] == "MeshMetric")
    assert [p["name"] for p in section["policies"]] == ["metrics-default", "metrics-web-1"]
    assert section["proxy"]["conf"]["backends"][0]["prometheus"]["port"] == web_port
    assert section["proxy"]["conf"]["sidecar"]["profiles"]["appendProfiles"] == [{"name": "Basic"}]
    table = policies_table(json.loads(r.raw))
    row = next(line for line in table.splitlines() if line.split()[:2] == ["MeshMetric", "proxy"])
    assert row.rstrip().endswith("metrics-default, metrics-web-1"), row

    # MADS, asked directly as Prometheus asks: both dataplanes, at their port and path, with their tags.
    mads_port = mesh.cp.ports[MADS]

    def assigned() -> dict[str, dict[str, Any]]:
        status, answer = mads_fetch(mads_port)
        assert status == 200, status
        found = {t["name"]: t for a in answer["resources"] for t in a["targets"]}
        assert set(found) == {"web-1", "backend-1"}, found
        return found

    targets = eventually(assigned, message="MADS lists both dataplanes")
    assert targets["web-1"]["address"] == f"127.0.0.1:{web_port}"
    assert targets["web-1"]["metricsPath"] == "/mesh-metrics"
    assert targets["backend-1"]["labels"]["kuma.io/service"] == "backend"
    assert targets["backend-1"]["labels"]["kuma.io/zone"] == "zone-1"
    # The same version again: the long poll ends with 304 when nothing changes.
    _status, answer = mads_fetch(mads_port)
    assert mads_fetch(mads_port, answer["versionInfo"], timeout="1s")[0] == 304

    # kuma-dp serves the filtered, labelled stats on the policy's port and path.
    def served() -> str:
        status, text = get(f"http://127.0.0.1:{web_port}/mesh-metrics")
        assert status == 200 and "envoy_cluster_upstream_rq_total" in text, text[:300]
        return text

    text = eventually(served, timeout=30, message="kuma-dp serves MeshMetric's backend")
    assert 'kuma_io_service="web"' in text and 'kuma_io_zone="zone-1"' in text
    assert "envoy_cluster_upstream_cx_active" not in text  # excluded (prefix)
    assert "envoy_cluster_upstream_cx_total" in text  # included back: include wins
    assert "kuma_dp_envoy_up" in text  # kuma-dp's own series
    assert "envoy_runtime_load_success" not in text  # not in the Basic profile

    # Prometheus' own kuma_sd_configs when this build has it; Debian's lacks it (tests/integration/kuma_sd.py),
    # then the same protocol is spoken by KumaSdBridge and the targets reach Prometheus through file_sd.
    prometheus_binary()
    server = f"http://127.0.0.1:{mads_port}"
    sd_file = tmp_path / "kuma-sd.json"
    native = supports_kuma_sd(tmp_path / "probe")
    sd: dict[str, Any] = ({"kuma_sd_configs": [{"server": server, "refresh_interval": "1s", "fetch_timeout": "5s",
                                                 "client_id": "test-prometheus"}]} if native
                          else {"file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}]})
    scrape = [{"job_name": "kuma-dataplanes", "scrape_interval": "1s", "scrape_timeout": "1s", **sd}]
    bridge = KumaSdBridge(server, sd_file, client_id="test-prometheus")
    with contextlib.ExitStack() as stack:
        if not native:
            stack.enter_context(bridge)
        prom = stack.enter_context(running_prometheus(tmp_path / "prometheus", scrape))
        def up() -> dict[str, dict[str, Any]]:
            found = {t["labels"]["instance"]: t for t in prom.targets()}
            assert set(found) == {"web-1", "backend-1"}, (found, bridge.errors)
            assert all(t["health"] == "up" for t in found.values()), found
            return found

        found = eventually(up, timeout=60, message="Prometheus discovers and scrapes both dataplanes")
        assert found["web-1"]["scrapeUrl"] == f"http://127.0.0.1:{web_port}/mesh-metrics"
        assert found["web-1"]["discoveredLabels"]["__meta_kuma_mesh"] == "default"
        assert found["web-1"]["discoveredLabels"]["__meta_kuma_service"] == "web"

        # Request counters grow with traffic through web -> backend.
        expr = 'sum(envoy_cluster_upstream_rq_total{instance="web-1",envoy_cluster_name="backend"})'
        out = web.outbounds["backend"]

        def requests(n: int) -> None:
            for _ in range(n):
                assert http(out, "/")[0] == 200

        eventually(lambda: http(out, "/")[0] == 200, message="web -> backend")
        requests(5)
        first = eventually(lambda: value(prom.query(expr)) >= 5 and value(prom.query(expr)),
                           timeout=30, message="Prometheus has web's request counter")
        requests(10)
        eventually(lambda: value(prom.query(expr)) >= first + 10, timeout=30,
                   message="the counter grew by the new requests")
        assert prom.query('count(envoy_cluster_upstream_cx_active{instance="web-1"})') == []  # excluded
        assert value(prom.query('kuma_dp_envoy_up{instance="backend-1"}')) == 1

        # A dataplane that goes away leaves the targets (kuma-dp stops; its Dataplane is deleted).
        mesh.dp("backend-1").stop()

        def gone() -> bool:
            names = {t["labels"]["instance"] for t in prom.targets()}
            assert names == {"web-1"}, (names, bridge.errors)
            return True

        eventually(gone, timeout=60, message="backend-1 left Prometheus' targets")
        assert not bridge.errors, bridge.errors


def test_mads_refuses_other_resource_types(mesh: DpMesh) -> None:
    body = json.dumps({"typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{mesh.cp.ports[MADS]}/v3/discovery:monitoringassignments",
                                 data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400
    assert "kuma.observability.v1.MonitoringAssignment" in json.loads(e.value.read())["detail"]
