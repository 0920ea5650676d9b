"""Cross-zone traffic through zone ingresses, the seed's picture with real processes on loopback: a global, two
zones, an ingress in zone-1 and two in zone-2 (each a real kuma-dp --proxy-type ingress + Envoy), `users` and
`invoices` in zone-1, `invoices` and `billing` in zone-2, mTLS on.

From users: billing (only in zone-2) answers through zone-2's ingress with users' SPIFFE ID in XFCC (the mTLS
session runs from users' Envoy to billing's; the ingress routes by SNI without terminating it); invoices
answers from zone-1 only, and from zone-2 once zone-1's instance stops (locality failover); a deny
MeshTrafficPermission on billing applied on global refuses users across the zone boundary; one of zone-2's
ingresses stopping leaves the other; killing global leaves cross-zone traffic running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.kds_harness import api, global_env, wait_for, zone_env
from tests.integration.mesh_harness import http as vip_http
from tests.integration.test_dns_stub import dns_args, get_via_name, resolve
from tests.integration.test_kuma_dp_support import (  # noqa: F401  (dp_factory: fixture)
    ALLOW_ALL,
    MTLS_MESH,
    DpMesh,
    DpProcess,
    dp_factory,
    http,
)
from tests.integration.test_kumactl import kumactl, ok
from tests.ports import free_port
from tests.unit.test_dns_stub_support import TestUpstream

DENY_BILLING = {"type": "MeshTrafficPermission", "mesh": "default", "name": "deny-users-to-billing",
                "spec": {"targetRef": {"kind": "MeshService", "name": "billing"},
                         "from": [{"targetRef": {"kind": "MeshService", "name": "users"},
                                   "default": {"action": "Deny"}}]}}


SPLIT = {"type": "MeshHTTPRoute", "mesh": "default", "name": "invoices-by-zone",
         "spec": {"targetRef": {"kind": "Mesh"},
                  "to": [{"targetRef": {"kind": "MeshService", "name": "invoices"},
                          "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                     "default": {"backendRefs": [
                                         {"kind": "MeshServiceSubset", "name": "invoices",
                                          "tags": {"kuma.io/zone": "zone-1"}, "weight": 80},
                                         {"kind": "MeshServiceSubset", "name": "invoices",
                                          "tags": {"kuma.io/zone": "zone-2"}, "weight": 20}]}}]}]}}


class PortForward:
    """A NAT's public side for the tests: connections to 127.0.0.1:`port` are relayed to 127.0.0.1:`target`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.relayed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            # The timeout was for the connect only. Left on, it cut every relayed connection after 5 s without
            # data (its pump's recv timed out and half-closed the caller's side): a NAT keeps a mapping for
            # minutes, and the cut made the callers' pooled connections die under them at arbitrary moments.
            upstream.settimeout(None)
            self.relayed += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread: close() alone does not
        self.listener.close()


def start_ingress(zone: CpProcess, zone_name: str, name: str, factory: Callable[..., DpProcess],
                  advertised_port: int | None = None) -> tuple[DpProcess, int]:
    token = api(zone, "POST", "/tokens/zone", {"zone": zone_name, "scope": ["ingress"]})
    assert token.status == 200, token.raw
    port = free_port()
    doc = {"type": "ZoneIngress", "name": name,
           "networking": {"address": "127.0.0.1", "port": port,
                          "advertisedAddress": "127.0.0.1", "advertisedPort": advertised_port or port}}
    dp = factory(name=name, cp=zone, definition=doc, token=token.raw.decode(),
                    args=["--proxy-type", "ingress", "--drain-time", "1s", "--envoy-log-level", "warning"])
    return dp, port


def offered(cp: CpProcess, ingress: str) -> set[str]:
    """The services an ingress offers, as its zone computed them."""
    r = api(cp, "GET", f"/zone-ingresses/{ingress}")
    if r.status != 200:
        return set()
    return {s["tags"]["kuma.io/service"] for s in r.json.get("availableServices", [])}


def remote_ingresses(cp: CpProcess, zone: str) -> list[dict[str, Any]]:
    r = api(cp, "GET", "/zone-ingresses")
    return [i for i in r.json["items"] if i.get("zone") == zone] if r.status == 200 else []


def endpoint_ports(dp: DpProcess, cluster: str) -> set[int]:
    """The ports of a cluster's endpoints in a kuma-dp's Envoy."""
    with urllib.request.urlopen(dp.admin_url() + "/clusters?format=json", timeout=5) as resp:
        doc = json.loads(resp.read())
    return {h["address"]["socket_address"]["port_value"] for c in doc.get("cluster_statuses", [])
            if c.get("name") == cluster for h in c.get("host_statuses", [])}


def answer(port: int) -> tuple[int, Any]:
    try:
        return http(port, "/", timeout=5.0)
    except OSError as e:
        return 0, str(e)


def served_by(port: int) -> str | None:
    status, body = answer(port)
    return body.get("service") if status == 200 and isinstance(body, dict) else None


def assert_served_by(port: int, service: str) -> None:
    """One request through `port` is answered by `service`; the failure shows what answered instead."""
    status, body = answer(port)
    assert status == 200 and isinstance(body, dict) and body.get("service") == service, (status, body)


@pytest.fixture
def upstream() -> Iterator[TestUpstream]:
    up = TestUpstream()
    yield up
    up.close()


@pytest.fixture
def seed(tmp_path: Path, started: list[CpProcess], app_factory: Callable[..., App],
         dp_factory: Callable[..., DpProcess], upstream: TestUpstream,  # noqa: F811
         request: pytest.FixtureRequest) -> dict[str, Any]:
    kds_port = free_port()
    glob = start_cp(tmp_path / "global", **global_env(kds_port))
    started.append(glob)
    zones = {}
    for name in ("zone-1", "zone-2"):
        zones[name] = start_cp(tmp_path / name, **zone_env(glob, kds_port, name, tmp_path,
                                                            KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1"))
        started.append(zones[name])
    cps = (glob, *zones.values())
    on_global = DpMesh(glob, app_factory, dp_factory)
    on_global.mtls()
    for zone in zones.values():
        wait_for("global's mTLS mesh reaching the zone",
                 lambda z=zone: (r := api(z, "GET", "/meshes/default")).status == 200 and r.json.get("mtls"), *cps)
    meshes = {name: DpMesh(zone, app_factory, dp_factory) for name, zone in zones.items()}
    # zone-2's second ingress is behind a NAT: other zones reach it at its advertised port, relayed to its own.
    nat = PortForward(0)
    request.addfinalizer(nat.close)
    behind_nat = start_ingress(zones["zone-2"], "zone-2", "ingress-z2-2", dp_factory, advertised_port=nat.port)
    nat.target = behind_nat[1]
    ingresses = {"zone-1": [start_ingress(zones["zone-1"], "zone-1", "ingress-z1", dp_factory)],
                 "zone-2": [start_ingress(zones["zone-2"], "zone-2", "ingress-z2-1", dp_factory), behind_nat]}
    # The echo app answers with its service and instance (its address); dataplane names say their zone.
    meshes["zone-2"].service("billing", name="billing-zone-2")
    meshes["zone-2"].service("invoices", name="invoices-zone-2")
    meshes["zone-1"].service("invoices", name="invoices-zone-1")
    # users owns its host's `.mesh` names (its kuma-dp runs the DNS stub and the VIP:80 listeners).
    stub = free_port()
    users = meshes["zone-1"].service("users", name="users-zone-1", outbounds={"billing": 0, "invoices": 0},
                                     args=dns_args(f"127.0.0.1:{stub}", upstream, tmp_path / "dns"))
    for ingress in ("ingress-z2-1", "ingress-z2-2"):
        wait_for(f"zone-2 listing billing and invoices on {ingress}",
                 lambda i=ingress: offered(zones["zone-2"], i) == {"billing", "invoices"}, *cps)
    wait_for("zone-2's ingresses reaching zone-1 through global",
             lambda: len([i for i in remote_ingresses(zones["zone-1"], "zone-2")
                          if {s["tags"]["kuma.io/service"] for s in i.get("availableServices", [])}
                          == {"billing", "invoices"}]) == 2, *cps)
    return {"global": glob, "zones": zones, "meshes": meshes, "ingresses": ingresses, "users": users, "cps": cps,
            "stub": stub, "nat": nat, "global_env": global_env(kds_port), "tmp": tmp_path, "started": started}


def test_seed_picture_billing_from_another_zone_invoices_local_first(seed: dict[str, Any]) -> None:
    glob, users, cps = seed["global"], seed["users"], seed["cps"]
    billing, invoices = users.outbounds["billing"], users.outbounds["invoices"]

    # billing lives only in zone-2: reached through its ingress, with users' identity intact.
    wait_for("users reaching billing in zone-2", lambda: served_by(billing) == "billing", *cps)
    status, body = answer(billing)
    assert status == 200 and body["service"] == "billing"
    assert "URI=spiffe://default/users" in body["headers"]["x-forwarded-client-cert"]
    # `curl http://billing.mesh/` from zone-1: the name resolves (a VIP, like a local service's), and VIP:80 and
    # VIP:<billing's real port, which zone-2's ingress advertises> both reach billing in zone-2.
    vip = wait_for("billing.mesh resolving in zone-1", lambda: resolve(seed["stub"], "billing.mesh"), *cps)
    body = wait_for("http://billing.mesh/ from zone-1", lambda: get_via_name(seed["stub"], "billing.mesh"), *cps)
    assert body["service"] == "billing" and "URI=spiffe://default/users" in body["headers"]["x-forwarded-client-cert"]
    real_port = int(body["instance"].rsplit(":", 1)[1])
    assert real_port != 80
    status, body = wait_for(f"billing.mesh:{real_port}", lambda: (r := vip_http(real_port, host=vip))[0] and r,
                            *cps)
    assert status == 200 and body["service"] == "billing"

    # invoices runs in both zones: zone-1's own instance serves, zone-2 is failover only.
    instances = set()
    for _ in range(20):
        status, body = answer(invoices)
        assert status == 200, body
        instances.add(body["instance"])
    assert len(instances) == 1, instances

    # A MeshHTTPRoute on global splits invoices 80/20 between the zones by kuma.io/zone: zone-2's share goes
    # through its ingress, under the subset's SNI. 400 requests: 80 expected for zone-2, sd 8; +-40 is 5 sd.
    assert api(glob, "PUT", "/meshes/default/meshhttproutes/invoices-by-zone", SPLIT).status in (200, 201)
    def reaching_zone_2() -> bool:
        status, body = answer(invoices)
        # Make before use: a route to the new subset clusters goes only once Envoy has warmed them, so no
        # request fails while the route changes (a listener sent before its clusters' endpoints gave 503s).
        assert status == 200, body
        return bool(body["instance"] not in instances)

    wait_for("the split reaching zone-2", reaching_zone_2, *cps)
    remote = 0
    for _ in range(400):
        status, body = answer(invoices)
        assert status == 200, body
        remote += body["instance"] not in instances
    assert 40 <= remote <= 120, remote
    assert api(glob, "DELETE", "/meshes/default/meshhttproutes/invoices-by-zone").status == 200
    def local_only() -> bool:
        for _ in range(20):
            status, body = answer(invoices)
            # While the route goes every request is answered, by either zone: the plain invoices cluster it
            # moves to is new at users' Envoy and is used only once warm (make before use); the subset clusters
            # go only after that (make before break).
            assert status == 200, body
            if body["instance"] not in instances:
                return False
        return True

    wait_for("invoices local-only again", local_only, *cps)
    seed["meshes"]["zone-1"].dp("invoices-zone-1").stop()
    wait_for("invoices failing over to zone-2",
             lambda: (r := answer(invoices))[0] == 200 and r[1]["instance"] not in instances, *cps)


def test_permission_ingress_loss_and_global_loss(seed: dict[str, Any], tmp_path: Path) -> None:
    glob, users, cps, ingresses = seed["global"], seed["users"], seed["cps"], seed["ingresses"]
    billing = users.outbounds["billing"]
    wait_for("users reaching billing in zone-2", lambda: served_by(billing) == "billing", *cps)

    # A deny on global applies at billing's Envoy in zone-2: the ingress does not weaken it.
    assert api(glob, "PUT", "/meshes/default/meshtrafficpermissions/deny-users-to-billing",
               DENY_BILLING).status in (200, 201)
    wait_for("billing refusing users across the zone boundary", lambda: answer(billing)[0] == 403, *cps)
    assert api(glob, "DELETE", "/meshes/default/meshtrafficpermissions/deny-users-to-billing").status == 200
    wait_for("billing serving users again", lambda: served_by(billing) == "billing", *cps)

    # kumactl shows the ingresses with their zone, status and services, in their zone and on global.
    zone2 = seed["zones"]["zone-2"]
    config = tmp_path / "kumactl.yaml"
    for name, cp in (("zone-2", zone2), ("global", glob)):
        ok(kumactl("config", "control-planes", "add", "--name", name, "--address", cp.http_url, "--overwrite",
                   config=config))
        rows = wait_for(f"both zone-2 ingresses online in kumactl inspect zoneingresses on {name}", lambda: len(
            found := [line.split() for line in ok(kumactl("inspect", "zoneingresses", config=config)).splitlines()
                      if " zone-2 " in line and " online " in line]) == 2 and found, *cps)
        assert all(row[-1] == "default/billing,default/invoices" for row in rows), rows
        assert "zone-2" in ok(kumactl("get", "zoneingresses", config=config))

    # One of zone-2's two ingresses stops: traffic continues through the other.
    first, _ = ingresses["zone-2"][0]
    first.stop()
    zone1 = seed["zones"]["zone-1"]
    wait_for("zone-1 dropping the stopped ingress", lambda: len(remote_ingresses(zone1, "zone-2")) == 1, *cps)
    # The one left is behind the NAT: users' Envoy reaches it at its advertised port.
    wait_for("users' billing endpoints down to the NAT's port",
             lambda: endpoint_ports(users.dp, "billing") == {seed["nat"].port}, *cps)
    for _ in range(10):
        assert_served_by(billing, "billing")
    assert seed["nat"].relayed > 0  # the one left is behind the NAT: reached at its advertised address

    # Global killed: zones keep what they know, cross-zone traffic continues.
    os.kill(glob.pid, signal.SIGKILL)
    glob.proc.wait()
    for _ in range(10):
        assert_served_by(billing, "billing")

    # Global back (same state): the zones resync, and a service new in zone-2 becomes known in zone-1.
    again = start_cp(seed["tmp"] / "global", **seed["global_env"])
    seed["started"].append(again)
    late = seed["meshes"]["zone-2"].service("late", name="late-zone-2")
    wait_for("zone-2's new service reaching zone-1 after global's return",
             lambda: "late" in {s["tags"]["kuma.io/service"] for i in remote_ingresses(zone1, "zone-2")
                                for s in i.get("availableServices", [])}, again, *seed["zones"].values())
    assert late.dp.alive() and served_by(billing) == "billing"


def presented_identity(port: int, server_name: str) -> str:
    """The URI SANs (SPIFFE ID first) of the certificate that answers a TLS handshake with this SNI at the
    ingress, comma-separated, or why none did."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    except (ssl.SSLError, OSError) as e:
        return f"refused: {type(e).__name__}"
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ",".join(sans.get_values_for_type(x509.UniformResourceIdentifier))


def test_the_ingress_passes_tls_through_by_sni_and_refuses_unknown_names(seed: dict[str, Any]) -> None:
    (_, port), = seed["ingresses"]["zone-1"]
    wait_for("zone-1's ingress offering invoices and users",
             lambda: offered(seed["zones"]["zone-1"], "ingress-z1") == {"invoices", "users"}, *seed["cps"])
    # The certificate that answers is invoices' own (its Envoy terminates mTLS), not the ingress's.
    wait_for("a handshake through the ingress",
             lambda: "spiffe://default/invoices" in presented_identity(port, "invoices{mesh=default}").split(","),
             *seed["cps"])
    assert presented_identity(port, "nothing{mesh=default}").startswith("refused")
    assert presented_identity(port, "billing{mesh=default}").startswith("refused")  # zone-2's, not here
