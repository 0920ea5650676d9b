"""Horizontal zone control planes: two kuma-cp zone instances on one PostgreSQL, each serving real Envoys.

What an operator relies on when a zone outgrows one machine: a change made through either instance's API
reaches the proxies of both; a dataplane registered at one instance is an endpoint for proxies at the other;
either API shows every proxy's insight; both serve the same VIPs (allocated by the leader only); and when
the leader dies, the survivor takes over the leader-only work and its proxies keep getting changes.

The two instances share the dp-server's TLS certificate (B is started with A's, as an operator gives both
the same KUMA_GENERAL_TLS_* files), so one `--ca-cert-file` works against either. One proxy reaches the
control plane through a TCP load balancer in front of both dp-servers (a real Envoy: the leader's address
first, the other's as the fallback, TCP health checks): a real kuma-dp whose `--cp-address` names the
balancer; when the leader dies, its Envoy reconnects to the survivor and keeps getting changes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from dnslib import QTYPE, DNSRecord

from controlplane.store.postgres_config import PostgresConfig
from tests.apps.runner import App
from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess, static_bootstrap, tcp_proxy_listener
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.integration.test_cp_postgres import is_leader, pg_env
from tests.integration.test_kuma_dp_support import (
    ALLOW_ALL,
    MTLS_MESH,
    DpProcess,
    dataplane_doc,
    dp_factory,  # noqa: F401  (fixture)
)
from tests.ports import free_port

pytestmark = pytest.mark.postgres

CLUSTER = "backend"  # the outbound cluster of service `backend` in every Envoy


def two_zone_instances(cp_factory: Callable[..., CpProcess], cfg: PostgresConfig) -> tuple[CpProcess, CpProcess]:
    env = {**pg_env(cfg), "KUMA_DNS_SERVER_INTERFACE": "127.0.0.1"}
    a = cp_factory(**env)
    tls = a.work_dir / "tls"
    b = cp_factory(**env, KUMA_GENERAL_TLS_CERT_FILE=str(tls / "server.crt"),
                   KUMA_GENERAL_TLS_KEY_FILE=str(tls / "server.key"), KUMA_GENERAL_TLS_CA_FILE=str(tls / "ca.crt"))
    # What a kuma-dp at B is given as --ca-cert-file (the harness reads it from B's state directory).
    b.ca_file.parent.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(a.ca_file, b.ca_file)
    eventually(lambda: call("GET", a.http_url + "/meshes/default").status == 200, timeout=20,
               message="the leader created the default mesh")
    eventually(lambda: [is_leader(a), is_leader(b)].count(True) == 1, timeout=20, message="exactly one leader")
    return a, b


def endpoint_ports(admin_url: str, cluster: str = CLUSTER) -> set[int]:
    """The ports of a cluster's endpoints in the Envoy with this admin address."""
    with urllib.request.urlopen(admin_url + "/clusters?format=json", timeout=5) as resp:
        doc = json.loads(resp.read())
    return {h["address"]["socket_address"]["port_value"] for c in doc.get("cluster_statuses", [])
            if c.get("name") == cluster for h in c.get("host_statuses", [])}


def put_dataplane(cp: CpProcess, name: str, service: str, port: int) -> None:
    doc = {"type": "Dataplane", "mesh": "default", "name": name,
           "networking": {"address": "127.0.0.1",
                          "inbound": [{"port": port, "servicePort": port + 1,
                                       "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}]}}
    r = call("PUT", f"{cp.http_url}/meshes/default/dataplanes/{name}", doc)
    assert r.status in (200, 201), r.raw


def delete_dataplane(cp: CpProcess, name: str) -> None:
    r = call("DELETE", f"{cp.http_url}/meshes/default/dataplanes/{name}")
    assert r.status == 200, r.raw


def overview(cp: CpProcess) -> dict[str, str]:
    items = call("GET", cp.http_url + "/meshes/default/dataplanes/_overview").json["items"]
    return {i["name"]: i["status"] for i in items}


def serving_instance(cp: CpProcess, name: str) -> str:
    """The instance a proxy's current ADS subscription is with, as an instance's API reports it ("" before its
    first insight is written)."""
    r = call("GET", f"{cp.http_url}/meshes/default/dataplane-insights/{name}")
    subscriptions = r.json.get("subscriptions", []) if r.status == 200 else []
    return str(subscriptions[-1]["controlPlaneInstanceId"]) if subscriptions else ""


def vips(cp: CpProcess) -> dict[str, Any]:
    doc: dict[str, Any] = call("GET", cp.http_url + "/meshes/default/vips").json
    return doc


def resolve(cp: CpProcess, name: str) -> list[str]:
    q = DNSRecord.question(name, "A")
    reply = DNSRecord.parse(q.send("127.0.0.1", cp.ports["KUMA_DNS_SERVER_PORT"], timeout=2))
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


def dp_server_balancer(envoy_factory: Callable[..., EnvoyProcess], first: CpProcess, then: CpProcess) -> int:
    """A TCP load balancer (Envoy) for two dp-servers: `first` while its port answers, else `then`; its port."""
    port = free_port()
    endpoints = [{"priority": prio, "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": cp.ports["KUMA_DP_SERVER_PORT"]}}}}]}
        for prio, cp in enumerate((first, then))]
    cluster = {"name": "kuma-cp", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
               "load_assignment": {"cluster_name": "kuma-cp", "endpoints": endpoints},
               "health_checks": [{"timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
                                  "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}}]}
    envoy_factory(static_bootstrap([tcp_proxy_listener("dp-server", port, "kuma-cp")], [cluster]),
                  name="dp-server-balancer")
    return port


def reaches_everyone(proxies: dict[str, Callable[[], str]], ports: set[int], what: str) -> None:
    """Every proxy (name -> its Envoy's admin URL) gets exactly these `backend` endpoints."""
    for name, admin_url in proxies.items():
        eventually(lambda u=admin_url: endpoint_ports(u()) == ports, timeout=20,
                   message=f"{what}: {name}'s Envoy has backend endpoints {sorted(ports)}")


def test_two_zone_instances_serve_one_zone_and_survive_the_leader(
        postgres_migrated_config: PostgresConfig, cp_factory: Callable[..., CpProcess],
        envoy_factory: Callable[..., EnvoyProcess], app_factory: Callable[..., App],
        dp_factory: Callable[..., DpProcess]) -> None:  # noqa: F811
    a, b = two_zone_instances(cp_factory, postgres_migrated_config)
    at_a = MeshHarness(a, envoy_factory, app_factory)
    at_b = MeshHarness(b, envoy_factory, app_factory)
    # mTLS through B's API: each instance issues its own proxies' identity certificates, from one mesh CA.
    at_b.apply(MTLS_MESH + "---\n" + ALLOW_ALL)
    backend = at_b.app("echo_http", "--name", "backend")
    web_app = at_a.app("echo_http", "--name", "web")

    # A dataplane registered at B is an endpoint for proxies at A (and at B).
    backend_dp = at_b.dataplane("backend-1", "backend", app_port=backend.port)
    web_a = at_a.dataplane("web-a", "web", app_port=web_app.port, outbounds={"backend": 0})
    web_b = at_b.dataplane("web-b", "web", app_port=web_app.port, outbounds={"backend": 0})
    proxies: dict[str, Callable[[], str]] = {"web-a (at A)": lambda: web_a.envoy.admin_url,
                                             "web-b (at B)": lambda: web_b.envoy.admin_url}
    base = {backend_dp.inbound_port}
    reaches_everyone(proxies, base, "backend-1 registered at B")
    for dp in (web_a, web_b):
        _, body = eventually(lambda p=dp.outbounds["backend"]: (r := http(p)) and r[0] == 200 and r,
                                  message=f"{dp.name} -> backend through its Envoy")
        assert isinstance(body, dict) and body["service"] == "backend"
        assert "URI=spiffe://default/web" in body["headers"]["x-forwarded-client-cert"]

    # A change through A's API reaches the proxies of both; then one through B's API, the other way.
    extra_a, extra_b = free_port(), free_port()
    put_dataplane(a, "backend-extra-a", "backend", extra_a)
    reaches_everyone(proxies, base | {extra_a}, "added through A's API")
    put_dataplane(b, "backend-extra-b", "backend", extra_b)
    reaches_everyone(proxies, base | {extra_a, extra_b}, "added through B's API")
    delete_dataplane(b, "backend-extra-a")
    reaches_everyone(proxies, base | {extra_b}, "removed through B's API")
    delete_dataplane(a, "backend-extra-b")
    reaches_everyone(proxies, base, "removed through A's API")

    # Either API shows every proxy online, wherever it is connected.
    names = {"backend-1", "web-a", "web-b"}
    for cp in (a, b):
        eventually(lambda c=cp: all(overview(c).get(n) == "online" for n in names),
                   message=f"every proxy online through {cp.http_url}")
    served_by = {cp.http_url: {n: serving_instance(cp, n) for n in ("web-a", "web-b")} for cp in (a, b)}
    assert served_by[a.http_url] == served_by[b.http_url], served_by
    assert served_by[a.http_url]["web-a"] != served_by[a.http_url]["web-b"], served_by  # one per instance

    # VIPs are allocated by the leader only; both instances serve the same map, over the API and DNS.
    eventually(lambda: {"backend", "web"} <= vips(a)["vips"].keys() and vips(a) == vips(b),
               message="both instances serve the leader's VIPs")
    vip = vips(a)["vips"]["backend"]
    for cp in (a, b):
        eventually(lambda c=cp: resolve(c, "backend.mesh") == [vip], message=f"backend.mesh -> {vip} at {cp.http_url}")

    # A kuma-dp whose --cp-address is the balancer is served by the leader for now.
    leader, survivor = (a, b) if is_leader(a) else (b, a)
    leader_id = served_by[a.http_url]["web-a" if leader is a else "web-b"]
    survivor_id = served_by[a.http_url]["web-b" if leader is a else "web-a"]
    balancer = dp_server_balancer(envoy_factory, leader, survivor)
    web_lb_outbound = free_port()
    web_lb = dp_factory(name="web-lb", cp_address=f"https://127.0.0.1:{balancer}", ca_file=a.ca_file,
                        definition=dataplane_doc("web-lb", "web", app_port=web_app.port, inbound_port=free_port(),
                                                 outbounds={"backend": web_lb_outbound}),
                        token=at_a.token("web-lb"), args=["--drain-time", "1s", "--envoy-log-level", "warning"])
    web_lb.wait_ready()
    reaches_everyone({"web-lb": web_lb.admin_url}, base, "web-lb behind the balancer")
    eventually(lambda: serving_instance(survivor, "web-lb") == leader_id, message="web-lb is at the leader")

    # The leader dies without a goodbye: the survivor takes over the leader-only work; its own proxies and
    # the one behind the balancer (now reconnected to it) keep getting changes made through its API.
    os.kill(leader.pid, signal.SIGKILL)
    leader.stop()
    eventually(lambda: is_leader(survivor), timeout=30, message="the survivor became the leader")
    eventually(lambda: serving_instance(survivor, "web-lb") == survivor_id, timeout=30,
               message="web-lb's Envoy reconnected to the survivor through the balancer")
    survivor_proxies = {n: u for n, u in proxies.items() if n.endswith("(at A)" if survivor is a else "(at B)")}
    survivor_proxies["web-lb (moved)"] = web_lb.admin_url
    extra = free_port()
    put_dataplane(survivor, "backend-after-failover", "backend", extra)
    reaches_everyone(survivor_proxies, base | {extra}, "added through the survivor after the failover")
    eventually(lambda: overview(survivor).get("web-lb") == "online", message="web-lb online at the survivor")
    _, body = eventually(lambda: (r := http(web_lb_outbound)) and r[0] == 200 and r,
                         message="web-lb -> backend after the move")
    assert isinstance(body, dict) and body["service"] == "backend"
    # A new service gets its VIP from the new leader's allocator.
    put_dataplane(survivor, "billing-1", "billing", free_port())
    billing = eventually(lambda: vips(survivor)["vips"].get("billing"), timeout=20,
                         message="the new leader allocated billing's VIP")
    eventually(lambda: resolve(survivor, "billing.mesh") == [billing], message="billing.mesh resolves")
    assert vips(survivor)["vips"]["backend"] == vip  # the failover kept every VIP
