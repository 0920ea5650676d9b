"""A real kuma-cp: Dataplanes applied over the HTTP API get VIPs; `<service>.mesh` resolves over UDP and TCP
on KUMA_DNS_SERVER_PORT; the VIPs survive a restart of kuma-cp on the same state directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSRecord

from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess, start_cp

LOOPBACK = {"KUMA_DNS_SERVER_INTERFACE": "127.0.0.1"}


def resolve(port: int, name: str, qtype: str = "A", *, tcp: bool = False) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    raw = q.send("127.0.0.1", port, tcp=tcp, timeout=2)
    reply = DNSRecord.parse(raw)
    assert reply.header.id == q.header.id
    return reply


def a_records(r: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A]


def wait_for(what: str, check: Callable[[], object], timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def apply_dataplane(cp: CpProcess, name: str, service: str, port: int) -> None:
    doc = {"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": "127.0.0.1", "inbound": [{"port": port, "servicePort": port + 1000,
                                             "tags": {"kuma.io/service": service}}]}}
    reply = call("PUT", f"{cp.http_url}/meshes/default/dataplanes/{name}", doc)
    assert reply.status in (200, 201), reply.raw


def test_mesh_names_resolve_and_vips_survive_a_restart(cp_factory: Callable[..., CpProcess],
                                                       tmp_path: Path) -> None:
    cp = cp_factory(**LOOPBACK)
    dns_port = cp.ports["KUMA_DNS_SERVER_PORT"]
    wait_for("the default mesh", lambda: call("GET", f"{cp.http_url}/meshes/default").status == 200)
    # Before any service: the zone answers, the name does not exist.
    r = resolve(dns_port, "backend.mesh")
    assert RCODE.get(r.header.rcode) == "NXDOMAIN" and r.header.aa == 1
    assert RCODE.get(resolve(dns_port, "example.com").header.rcode) == "REFUSED"

    apply_dataplane(cp, "backend-1", "backend_demo_svc_8080", 9001)
    apply_dataplane(cp, "web-1", "web", 9002)
    vip = wait_for("backend VIP over UDP", lambda: a_records(resolve(dns_port, "backend_demo_svc_8080.mesh")))
    assert isinstance(vip, list) and len(vip) == 1 and vip[0].startswith("127.2")
    assert a_records(resolve(dns_port, "backend_demo_svc_8080.mesh", tcp=True)) == vip
    assert a_records(resolve(dns_port, "backend.demo.svc.8080.mesh")) == vip
    assert a_records(resolve(dns_port, "backend.demo.svc.8080.mesh", tcp=True)) == vip
    web = wait_for("web VIP", lambda: a_records(resolve(dns_port, "web.mesh")))
    assert web != vip
    aaaa = resolve(dns_port, "web.mesh", "AAAA", tcp=True)
    assert RCODE.get(aaaa.header.rcode) == "NOERROR" and aaaa.rr == [] and len(aaaa.auth) == 1

    # The VIP map kuma-dp reads.
    m = call("GET", f"{cp.http_url}/meshes/default/vips")
    assert m.status == 200
    body = m.json
    assert body["vips"] == {"backend_demo_svc_8080": vip[0], "web": web[0]}  # type: ignore[index]
    assert set(body["tproxyVips"]) == {"backend_demo_svc_8080", "web"}
    assert all(ip.startswith("240.") or int(ip.split(".")[0]) > 240 for ip in body["tproxyVips"].values())
    assert body["names"]["backend.demo.svc.8080.mesh"] == "backend_demo_svc_8080"
    assert m.headers["ETag"] == f'"{body["version"]}"'
    stored = call("GET", f"{cp.http_url}/vip-allocations/vips")
    assert stored.status == 200 and stored.json["type"] == "VipAllocation"
    # Read-only to users.
    assert call("PUT", f"{cp.http_url}/vip-allocations/vips", stored.json).status in (405, 403, 400)

    # Restart on the same state directory and ports: same VIPs, served from the first moment.
    env = {k: v for k, v in cp.env.items() if k.startswith("KUMA_")}
    cp.stop()
    again = start_cp(cp.work_dir.parent, **env)
    try:
        assert again.ports["KUMA_DNS_SERVER_PORT"] == dns_port
        assert a_records(resolve(dns_port, "backend_demo_svc_8080.mesh")) == vip
        assert a_records(resolve(dns_port, "web.mesh", tcp=True)) == web
        after = call("GET", f"{again.http_url}/meshes/default/vips").json
        assert after["vips"] == body["vips"] and after["version"] == body["version"]
        # A new service after the restart gets a new, different VIP.
        apply_dataplane(again, "db-1", "db", 9003)
        db = wait_for("db VIP", lambda: a_records(resolve(dns_port, "db.mesh")))
        assert db not in (vip, web)
    finally:
        again.stop()
