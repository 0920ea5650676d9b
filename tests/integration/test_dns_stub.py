"""The host's `.mesh` DNS stub in a real `kuma-dp run --dns-enabled`, with a real kuma-cp and real Envoys:
names resolve through the stub and VIP:80 reaches a service listening on another port; the map follows the
control plane and survives its restart; a second owner fails clearly; resolv.conf (a file of the test's)
is rewritten, restored on stop, and recovered after a kill -9."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from dnslib import RCODE

from agent.bootstrap_client import BootstrapError, CpAddress
from agent.vips_client import REPORT_METHOD, report_host_dns
from tests.apps.runner import App
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.test_kuma_dp_support import (
    REPO_ROOT,
    DpMesh,
    DpProcess,
    dp_env,
    dp_factory,  # noqa: F401  (fixture)
    eventually,
)
from tests.ports import free_port
from tests.requirements import unavailable
from tests.unit.test_dns_stub_support import TestUpstream, addresses, ask

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def resolve(port: int, name: str) -> str | None:
    try:
        reply = ask(port, name, timeout=1.0)
    except (OSError, TimeoutError):
        return None
    found = addresses(reply)
    return found[0] if found else None


def get_via_name(stub_port: int, url_host: str, path: str = "/") -> dict[str, Any]:
    """`curl http://<url_host>/`, the name resolved by the stub: resolve, then HTTP to VIP:80."""
    ip = resolve(stub_port, url_host)
    assert ip, f"{url_host} does not resolve through the stub"
    req = urllib.request.Request(f"http://{ip}:80{path}", headers={"Host": url_host})
    with _OPENER.open(req, timeout=5) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


@pytest.fixture
def upstream() -> TestUpstream:
    up = TestUpstream()
    up.add("ordinary.example", "A", "192.0.2.80")
    yield up
    up.close()


def dns_args(listen: str, upstream: TestUpstream, state: Path, *extra: str) -> list[str]:
    return ["--dns-enabled", "--dns-listen", listen, "--dns-upstream", upstream.address, "--dns-state-dir",
            str(state), *extra]


def restart_cp(cp: CpProcess) -> CpProcess:
    """The same control plane again: its work dir (store, CA) and its ports."""
    env = {k: v for k, v in cp.env.items() if k.startswith("KUMA_")}
    return start_cp(cp.work_dir.parent, **env)


def test_mesh_names_resolve_reach_vip_80_and_survive_the_control_plane(
        cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
        dp_factory: Callable[..., DpProcess], upstream: TestUpstream, tmp_path: Path) -> None:  # noqa: F811
    cp = cp_factory(KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1")
    mesh = DpMesh(cp, app_factory, dp_factory)
    mesh.mtls()
    backend = mesh.service("backend")  # echo_http on some port, not 80
    port = free_port()
    web = mesh.service("web", args=dns_args(f"127.0.0.1:{port}", upstream, tmp_path / "dns"))
    assert "DNS stub on 127.0.0.1:" in web.dp.own_logs()
    vip = eventually(lambda: resolve(port, "backend.mesh"), message="backend.mesh through the stub")
    assert vip.startswith("127.24")
    assert resolve(port, "ordinary.example") == "192.0.2.80"  # everything else: the upstream's answer
    assert ask(port, "nope.mesh").header.rcode == RCODE.NXDOMAIN
    # `curl http://backend.mesh/`: the stub's answer, then VIP:80 on web's Envoy, to backend's real port (mTLS).
    body = eventually(lambda: get_via_name(port, "backend.mesh", "/hello"), timeout=30,
                      message="http://backend.mesh/ through VIP:80")
    assert body["service"] == "backend" and body["path"] == "/hello"
    assert backend.app.port != 80
    assert "URI=spiffe://default/web" in body["headers"]["x-forwarded-client-cert"]
    # A new service: the watch brings its name.
    mesh.service("db")
    eventually(lambda: resolve(port, "db.mesh"), message="db.mesh after db registered")
    # The control plane stops: names keep resolving from the stub's last map.
    cp.stop()
    for _ in range(10):
        assert resolve(port, "backend.mesh") == vip and resolve(port, "db.mesh")
        time.sleep(0.2)
    assert resolve(port, "ordinary.example") == "192.0.2.80"
    # ... and comes back: the watch reconnects, a service registered now resolves too.
    cp2 = restart_cp(cp)
    try:
        mesh.cp = cp2
        mesh.service("cache")
        eventually(lambda: resolve(port, "cache.mesh"), timeout=60, message="cache.mesh after the restart")
        assert resolve(port, "backend.mesh") == vip  # stable VIP
        assert "VIP watch lost" in web.dp.own_logs() and "VIP watch reconnected" in web.dp.own_logs()
    finally:
        for svc in list(mesh.services.values()):
            svc.dp.stop()
        cp2.stop()


def test_a_second_dns_owner_on_the_host_fails_clearly(
        cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
        dp_factory: Callable[..., DpProcess], upstream: TestUpstream, tmp_path: Path) -> None:  # noqa: F811
    mesh = DpMesh(cp_factory(), app_factory, dp_factory)
    port = free_port()
    first = mesh.service("web", args=dns_args(f"127.0.0.1:{port}", upstream, tmp_path / "dns"))
    second = mesh.service("other", args=dns_args(f"127.0.0.1:{free_port()}", upstream, tmp_path / "dns"),
                          wait=False)
    assert second.dp.wait_exit(30) == 2
    assert (f"another dataplane (pid {first.dp.pid}) owns this host's .mesh DNS and VIP listeners"
            in second.dp.own_logs()), second.dp.logs()
    assert "run this one without --dns-enabled" in second.dp.own_logs()
    # Another state directory, the same address: the address says it.
    third = mesh.service("third", args=dns_args(f"127.0.0.1:{port}", upstream, tmp_path / "dns3"), wait=False)
    assert third.dp.wait_exit(30) == 2
    assert f"--dns-listen 127.0.0.1:{port} is already in use" in third.dp.own_logs(), third.dp.logs()
    assert first.dp.alive() and resolve(port, "ordinary.example") == "192.0.2.80"


def can_bind_53() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", 53))
            return True
        except OSError:
            return False


def dns_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "dns", *args], env=dp_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)


def resolv_conf_of_test(tmp_path: Path, content: bytes) -> Path:
    """A resolv.conf of the test's (never the host's) for the stub on 127.0.0.1:53, which it must then name."""
    if not can_bind_53():
        unavailable("port53", "127.0.0.1:53 is taken here (resolv.conf can only name a stub on port 53)")
    conf = tmp_path / "etc" / "resolv.conf"
    conf.parent.mkdir()
    conf.write_bytes(content)
    return conf


def test_resolv_conf_is_restored_on_stop_and_recovered_after_kill_9(
        cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
        dp_factory: Callable[..., DpProcess], upstream: TestUpstream, tmp_path: Path) -> None:  # noqa: F811
    original = b"# the host's\nnameserver 192.0.2.53\nsearch corp.example\n"
    conf = resolv_conf_of_test(tmp_path, original)
    state = tmp_path / "dns"
    args = dns_args("127.0.0.1:53", upstream, state, "--dns-host-config", "auto", "--dns-resolv-conf", str(conf))
    mesh = DpMesh(cp_factory(), app_factory, dp_factory)

    web = mesh.service("web", args=args)
    assert conf.read_text().splitlines()[3:] == ["nameserver 127.0.0.1", "search corp.example"]
    assert resolve(53, "ordinary.example") == "192.0.2.80"
    web.dp.signal(signal.SIGTERM)
    assert web.dp.wait_exit(30) == 0
    assert conf.read_bytes() == original and not (state / "host.json").exists()

    web2 = mesh.service("web", name="web-2", args=args)
    assert b"nameserver 127.0.0.1" in conf.read_bytes()
    web2.dp.signal(signal.SIGKILL)
    assert web2.dp.wait_exit(10) == -signal.SIGKILL
    assert b"nameserver 127.0.0.1" in conf.read_bytes() and (state / "host.json").exists()  # nothing ran
    eventually(lambda: resolve(53, "ordinary.example") is None, timeout=10,
               message="the DNS worker died with kuma-dp (PDEATHSIG)")
    assert json.loads(dns_cli("status", "--dns-state-dir", str(state)).stdout)["owner"] is None

    web3 = mesh.service("web", name="web-3", args=args)  # the next start restores first, then configures
    assert "did not stop cleanly: restored" in web3.dp.own_logs()
    assert b"nameserver 127.0.0.1" in conf.read_bytes()
    refused = dns_cli("restore", "--dns-state-dir", str(state))
    assert refused.returncode == 1 and "belongs to a running kuma-dp" in refused.stderr  # a live owner's
    web3.dp.signal(signal.SIGKILL)
    web3.dp.wait_exit(10)
    done = dns_cli("restore", "--dns-state-dir", str(state))  # what the unit's ExecStopPost runs
    assert done.returncode == 0 and "restored" in done.stdout, done
    assert conf.read_bytes() == original


def host_dns(mesh: DpMesh, name: str) -> dict[str, Any] | None:
    r = mesh.api("GET", f"/meshes/default/dataplane-insights/{name}")
    return r.json.get("hostDns") if r.status == 200 else None


def test_the_host_resolver_state_reaches_the_dataplane_insight(
        cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
        dp_factory: Callable[..., DpProcess], upstream: TestUpstream, tmp_path: Path) -> None:  # noqa: F811
    conf = resolv_conf_of_test(tmp_path, b"nameserver 192.0.2.53\n")
    args = dns_args("127.0.0.1:53", upstream, tmp_path / "dns", "--dns-host-config", "resolv.conf",
                    "--dns-resolv-conf", str(conf))
    mesh = DpMesh(cp_factory(), app_factory, dp_factory)
    mesh.service("web", args=args)
    configured = eventually(lambda: (h := host_dns(mesh, "web-1")) and h["state"] == "configured" and h,
                            message="the configured host resolver in the insight")
    assert str(conf) in configured["message"] and configured["time"]
    # Another program (a DHCP client) rewrites resolv.conf: kuma-dp (root here) points it back and says so, and
    # the control plane shows it, so an operator sees why .mesh names stopped resolving for a moment.
    replaced = conf.with_name("resolv.conf.dhcp")
    replaced.write_text("nameserver 198.51.100.1\n")
    replaced.rename(conf)
    reapplied = eventually(lambda: (h := host_dns(mesh, "web-1")) and h["state"] == "reapplied" and h,
                           message="the rewrite in the insight")
    assert "rewritten by another program" in reapplied["message"] and reapplied["time"] >= configured["time"]


def test_bad_host_dns_reports_are_refused_with_the_reason(cp_factory: Callable[..., CpProcess],
                                                          app_factory: Callable[..., App],
                                                          dp_factory: Callable[..., DpProcess]) -> None:  # noqa: F811
    mesh = DpMesh(cp_factory(), app_factory, dp_factory)
    mesh.service("web")
    cp = CpAddress("127.0.0.1", mesh.cp.ports["KUMA_DP_SERVER_PORT"])
    ca = mesh.cp.ca_file.read_bytes()

    def refusal(name: str, token: str, report: dict[str, str]) -> BootstrapError:
        with pytest.raises(BootstrapError) as e:
            asyncio.run(report_host_dns(cp, ca, "default", name, token, report))
        return e.value

    ok = {"state": "rewritten", "message": "resolv.conf was rewritten"}
    bad_state = refusal("web-1", mesh.token("web-1"), {"state": "fine", "message": "x"})
    assert bad_state.code == "INVALID_ARGUMENT" and "hostDns.state 'fine'" in bad_state.message
    other = refusal("web-1", mesh.token("db-1"), ok)  # a token for another dataplane
    assert other.code == "PERMISSION_DENIED"
    unknown = refusal("ghost-1", mesh.token("ghost-1"), ok)
    assert unknown.code == "NOT_FOUND" and "does not exist" in unknown.message

    async def garbage() -> grpc.StatusCode:
        async with grpc.aio.secure_channel(cp.target, grpc.ssl_channel_credentials(root_certificates=ca)) as ch:
            try:
                await ch.unary_unary(REPORT_METHOD)(b"not json", timeout=10)
            except grpc.aio.AioRpcError as e:
                assert "must be JSON" in (e.details() or "")
                return e.code()
        raise AssertionError("garbage was accepted")
    assert asyncio.run(garbage()) == grpc.StatusCode.INVALID_ARGUMENT
    assert host_dns(mesh, "web-1") is None  # nothing refused was recorded
