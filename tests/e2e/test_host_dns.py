"""The host's `.mesh` DNS on booted Debian hosts: bookworm with a plain /etc/resolv.conf, trixie with
systemd-resolved. The hosts have no internet, so an ordinary name comes from a small real DNS server on this
machine's lab address, port 53 (the server both hosts already name: resolv.conf's placeholder on bookworm,
resolved's DNS= on trixie).

What runs in the hosts is kuma-dp's DNS code itself - the same HostDns component that `kuma-dp run
--dns-enabled` uses (owner lock, crash recovery, the DNS worker process, host configuration, restore) - as
`python3 -m agent.dns serve --dns-host-config auto --vips-file ...` under systemd (a transient unit with
KillMode=mixed, as the packaged kuma-dp.service), with the host's own python3 (3.11 on bookworm, 3.13 on
trixie) and only the `agent` package's DNS part copied in: the stub needs nothing outside the standard
library. What it leaves out is Envoy and the control plane (the VIP map comes from a file; following the
control plane is tested in tests/integration/test_dns_stub.py); the packaged kuma-dp.service on trixie is
tests/e2e/test_packages.py's.

Checked on both: `auto` picks the right integration; `getent hosts backend.mesh` and an ordinary name
resolve; stop puts the host back exactly (resolv.conf byte for byte, with its mode/owner or symlink;
`resolvectl` state; links); a kill -9 of the main process leaves the host configured and the next start
recovers; `kuma-dp dns restore` by hand does the same.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.lab.fixtures import Lab, LabHost
from tests.unit.test_dns_stub_support import TestUpstream

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DIR = "/opt/kuma-dns-e2e"
STATE = "/var/lib/kuma-dns-e2e"
VIP_MAP = {"mesh": "default", "version": "e2e-1", "tproxyVips": {},
           "vips": {"backend": "127.240.0.1", "web_ns_svc_8080": "127.240.0.2"},
           "names": {"backend.mesh": "backend", "web_ns_svc_8080.mesh": "web_ns_svc_8080",
                     "web.ns.svc.8080.mesh": "web_ns_svc_8080"}}
T = TypeVar("T")


def eventually(fn: Callable[[], T], timeout: float = 20, message: str = "") -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = fn()
            if result:
                return result
            last = result
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}; last: {last!r}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def upstream(lab: Lab) -> Iterator[TestUpstream]:
    lab.hosts_like(1, release="bookworm")  # the lab (and its bridge address) exists from here on
    up = TestUpstream(host=lab.gateway, port=53)
    up.add("ordinary.example", "A", "192.0.2.80")
    yield up
    up.close()


def install(host: LabHost, tmp: Path) -> None:
    """The agent package's DNS part and the VIP map, into the host."""
    src = tmp / f"agent-{host.name}"
    (src / "agent" / "dns").mkdir(parents=True)
    for name in ("__init__.py", "pdeathsig.py"):
        shutil.copy(REPO / "agent" / name, src / "agent" / name)
    shutil.copytree(REPO / "kuma_shared", src / "kuma_shared", ignore=shutil.ignore_patterns("__pycache__"))
    for path in (REPO / "agent" / "dns").glob("*.py"):
        shutil.copy(path, src / "agent" / "dns" / path.name)
    (src / "vips.json").write_text(json.dumps(VIP_MAP))
    host.ssh(f"rm -rf {DIR} && mkdir -p {DIR}")
    host.copy(src / "agent", f"{DIR}/agent")
    host.copy(src / "kuma_shared", f"{DIR}/kuma_shared")
    host.copy(src / "vips.json", f"{DIR}/vips.json")


@pytest.fixture(scope="module")
def hosts(lab: Lab, upstream: TestUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LabHost]]:
    found = {"bookworm": lab.hosts_like(1, release="bookworm")[0],
             "trixie": lab.hosts_like(1, release="trixie", resolved=True)[0]}
    tmp = tmp_path_factory.mktemp("host-dns")
    for host in found.values():
        install(host, tmp)
    yield found
    for host in found.values():  # leave shared hosts as they were
        host.ssh(f"systemctl stop 'kuma-dns-e2e-*' 2>/dev/null; systemctl reset-failed 'kuma-dns-e2e-*' 2>/dev/null; "
                 f"PYTHONPATH={DIR} python3 -m agent.dns restore --dns-state-dir {STATE} --force; "
                 f"rm -rf {DIR} {STATE}", check=False)


# --- on the host -------------------------------------------------------------------------------------------------

_units = iter(range(1, 1000))


def start(host: LabHost) -> str:
    """The stub with host integration `auto`, as a systemd service; returns the unit once .mesh resolves."""
    unit = f"kuma-dns-e2e-{next(_units)}"
    host.ssh(f"systemd-run --unit {unit} --property=KillMode=mixed --setenv=PYTHONPATH={DIR} "
             f"python3 -m agent.dns serve --dns-host-config auto --vips-file {DIR}/vips.json "
             f"--dns-state-dir {STATE}")
    eventually(lambda: getent(host, "backend.mesh"), message=f"backend.mesh on {host.name} ({journal(host, unit)})")
    return unit


def journal(host: LabHost, unit: str) -> str:
    return host.ssh(f"journalctl -u {unit} --no-pager -o cat", check=False).stdout[-3000:]


def getent(host: LabHost, name: str) -> str | None:
    proc = host.ssh(["getent", "hosts", name], check=False, timeout=30)
    return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def stop(host: LabHost, unit: str) -> None:
    host.ssh(f"systemctl stop {unit}")
    assert host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip() in ("inactive", "failed")


def kill_9(host: LabHost, unit: str) -> None:
    pid = host.ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip()
    assert pid and pid != "0"
    host.ssh(f"kill -9 {pid}")
    eventually(lambda: host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip() != "active",
               message="the unit's main process gone")
    host.ssh(f"systemctl reset-failed {unit}", check=False)


def dns_state(host: LabHost) -> str:
    """Everything of the host's DNS setup that the stub may change, as text to compare."""
    text = host.ssh("readlink /etc/resolv.conf; stat -c '%F %a %U %G' /etc/resolv.conf; "
                    "sha256sum /etc/resolv.conf; cat /etc/resolv.conf; ip -br link | awk '{print $1}' | sort").stdout
    if host.resolved:
        status = host.ssh("resolvectl dns; resolvectl domain; resolvectl default-route; resolvectl status").stdout
        # "Current DNS Server" appears once a query has been made: not a setting.
        text += "\n".join(line for line in status.splitlines() if "Current DNS Server" not in line)
    return text


# --- the tests ----------------------------------------------------------------------------------------------------

KINDS = ["bookworm", "trixie"]


@pytest.mark.parametrize("kind", KINDS)
def test_configures_the_host_both_names_resolve_and_stop_restores_exactly(
        hosts: dict[str, LabHost], upstream: TestUpstream, kind: str) -> None:
    host = hosts[kind]
    before = dns_state(host)
    assert getent(host, "ordinary.example") == "192.0.2.80"  # the upstream works before we start
    unit = start(host)
    assert getent(host, "backend.mesh") == "127.240.0.1"
    assert getent(host, "web.ns.svc.8080.mesh") == "127.240.0.2"  # Kuma's `_` -> `.` name
    assert getent(host, "ordinary.example") == "192.0.2.80"
    assert getent(host, "nope.mesh") is None
    ahosts = host.ssh("getent ahosts backend.mesh").stdout
    assert "127.240.0.1" in ahosts and ":" not in ahosts  # AAAA: NOERROR, no address (no bogus IPv6)
    assert host.ssh("dig +short +tcp @127.0.1.53 backend.mesh").stdout.strip() == "127.240.0.1"
    logs = journal(host, unit)
    if kind == "trixie":
        # resolved: a link of the stub's own with routing domain ~mesh; resolv.conf untouched.
        assert "systemd-resolved sends .mesh to the stub at 127.0.1.53:53" in logs, logs
        assert host.ssh("readlink /etc/resolv.conf").stdout.strip() == "../run/systemd/resolve/stub-resolv.conf"
        link = host.ssh("resolvectl status kuma-dns0").stdout
        assert "DNS Servers: 127.0.1.53" in link and "DNS Domain: ~mesh" in link and "Default Route: no" in link
        assert "link: kuma-dns0" in host.ssh("resolvectl query backend.mesh").stdout
        # only .mesh goes to the stub: an ordinary name is resolved's business, straight to its upstream
        assert "kuma-dns0" not in host.ssh("resolvectl query ordinary.example", check=False).stdout
    else:
        assert "/etc/resolv.conf now names only the stub at 127.0.1.53" in logs, logs
        conf = host.ssh("cat /etc/resolv.conf").stdout
        assert [line for line in conf.splitlines() if line.startswith("nameserver")] == ["nameserver 127.0.1.53"]
        assert f"upstreams {upstream.host}:53" in logs, logs  # the servers the host had, not itself
    stop(host, unit)
    assert dns_state(host) == before
    assert getent(host, "ordinary.example") == "192.0.2.80" and getent(host, "backend.mesh") is None


@pytest.mark.parametrize("kind", KINDS)
def test_kill_9_then_restart_recovers(hosts: dict[str, LabHost], upstream: TestUpstream, kind: str) -> None:
    host = hosts[kind]
    before = dns_state(host)
    unit = start(host)
    kill_9(host, unit)  # no cleanup can run; the DNS worker dies with it (PDEATHSIG)
    eventually(lambda: host.ssh("ss -lun | grep -c 127.0.1.53:53", check=False).stdout.strip() == "0",
               message="the DNS worker gone with its parent")
    assert dns_state(host) != before  # left configured ...
    assert getent(host, "backend.mesh") is None
    if kind == "trixie":
        assert getent(host, "ordinary.example") == "192.0.2.80"  # ... but with resolved, other names never break
    status = json.loads(host.ssh(f"PYTHONPATH={DIR} python3 -m agent.dns status --dns-state-dir {STATE}").stdout)
    assert status["owner"] is None and status["host"]["mode"] == ("resolved" if kind == "trixie" else "resolv.conf")
    unit = start(host)  # the next start undoes the crash's change first, then configures again
    assert "did not stop cleanly: restored" in journal(host, unit)
    assert getent(host, "ordinary.example") == "192.0.2.80"
    stop(host, unit)
    assert dns_state(host) == before


@pytest.mark.parametrize("kind", KINDS)
def test_kuma_dp_dns_restore_after_a_crash(hosts: dict[str, LabHost], upstream: TestUpstream, kind: str) -> None:
    host = hosts[kind]
    before = dns_state(host)
    unit = start(host)
    refused = host.ssh(f"PYTHONPATH={DIR} python3 -m agent.dns restore --dns-state-dir {STATE}", check=False)
    assert refused.returncode == 1 and "belongs to a running kuma-dp" in refused.stderr  # a live owner's
    kill_9(host, unit)
    out = host.ssh(f"PYTHONPATH={DIR} python3 -m agent.dns restore --dns-state-dir {STATE}").stdout
    assert "restore" in out and "nothing" not in out, out
    assert dns_state(host) == before
    assert getent(host, "ordinary.example") == "192.0.2.80"
    again = host.ssh(f"PYTHONPATH={DIR} python3 -m agent.dns restore --dns-state-dir {STATE}").stdout
    assert "nothing to restore" in again


def test_a_symlinked_resolv_conf_comes_back_as_the_same_symlink(hosts: dict[str, LabHost],
                                                                 upstream: TestUpstream) -> None:
    host = hosts["bookworm"]
    host.ssh("cp -a /etc/resolv.conf /etc/resolv.conf.e2e-orig && mkdir -p /run/e2e-resolv && "
             "cp /etc/resolv.conf /run/e2e-resolv/resolv.conf && "
             "ln -sfn ../run/e2e-resolv/resolv.conf /etc/resolv.conf")
    try:
        before = dns_state(host)
        unit = start(host)
        assert host.ssh("test -L /etc/resolv.conf", check=False).returncode == 1  # replaced by a file
        assert host.ssh("cat /run/e2e-resolv/resolv.conf").stdout == host.ssh("cat /etc/resolv.conf.e2e-orig").stdout
        assert getent(host, "ordinary.example") == "192.0.2.80"
        kill_9(host, unit)
        unit = start(host)
        stop(host, unit)
        assert dns_state(host) == before
        assert host.ssh("readlink /etc/resolv.conf").stdout.strip() == "../run/e2e-resolv/resolv.conf"
    finally:
        host.ssh("mv -f /etc/resolv.conf.e2e-orig /etc/resolv.conf; rm -rf /run/e2e-resolv", check=False)


# --- as the packaged kuma-dp.service runs it: not root, the host left to root's helpers -------------------------


def start_unprivileged(host: LabHost) -> str:
    """The stub as user nobody with only CAP_NET_BIND_SERVICE and CAP_NET_ADMIN (the packaged unit's), with the
    root helpers the packaged unit needs: restore before start and after stop, configure once the stub answers."""
    unit = f"kuma-dns-e2e-{next(_units)}"
    dns = "/usr/bin/python3 -m agent.dns"
    host.ssh(f"systemd-run --unit {unit} --property=KillMode=mixed --setenv=PYTHONPATH={DIR} "
             "--property=User=nobody --property=StateDirectory=kuma-dns-e2e-unpriv "
             "--property='AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN' "
             "--property='CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN' "
             "--setenv=KUMA_DNS_HOST_CONFIG=auto "
             f"--property='ExecStartPre=-+{dns} restore' --property='ExecStartPost=+{dns} configure' "
             f"--property='ExecStopPost=-+{dns} restore' "
             f"{dns} serve --vips-file {DIR}/vips.json")
    eventually(lambda: getent(host, "backend.mesh"), message=f"backend.mesh on {host.name} ({journal(host, unit)})")
    return unit


def test_a_resolv_conf_rewritten_by_another_program_is_pointed_at_the_stub_again(
        hosts: dict[str, LabHost], upstream: TestUpstream) -> None:
    """A DHCP client rewriting /etc/resolv.conf (a new file renamed over it) while the stub runs: kuma-dp (root
    here) notices through inotify, points it at the stub again and keeps the new file as the one to restore."""
    host = hosts["bookworm"]
    original = host.ssh("cat /etc/resolv.conf").stdout
    unit = start(host)
    try:
        dhcp = f"# written by a DHCP client\nnameserver {upstream.host}\n"
        host.ssh("cat > /etc/resolv.conf.dhcp && mv /etc/resolv.conf.dhcp /etc/resolv.conf", input=dhcp)
        eventually(lambda: "pointed at the stub again" in journal(host, unit), message="the rewrite noticed")
        assert host.ssh("grep -c '^nameserver 127.0.1.53$' /etc/resolv.conf").stdout.strip() == "1"
        assert getent(host, "backend.mesh") == "127.240.0.1" and getent(host, "ordinary.example") == "192.0.2.80"
        stop(host, unit)
        assert host.ssh("cat /etc/resolv.conf").stdout == dhcp  # the DHCP client's file, not the older one
    finally:
        host.ssh("systemctl stop 'kuma-dns-e2e-*'", check=False)
        host.ssh("cat > /etc/resolv.conf.orig && mv /etc/resolv.conf.orig /etc/resolv.conf", input=original)


@pytest.mark.parametrize("kind", KINDS)
def test_as_the_packaged_unit_runs_it_unprivileged_with_root_helpers(hosts: dict[str, LabHost],
                                                                      upstream: TestUpstream, kind: str) -> None:
    host = hosts[kind]
    before = dns_state(host)
    unit = start_unprivileged(host)
    try:
        pid = host.ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip()
        assert host.ssh(f"ps -o user= -p {pid}").stdout.strip() == "nobody"
        logs = journal(host, unit)
        assert "left to `kuma-dp dns configure`, run as root" in logs and "kuma-dp dns configure: " in logs, logs
        assert getent(host, "backend.mesh") == "127.240.0.1" and getent(host, "ordinary.example") == "192.0.2.80"
        kill_9(host, unit)  # the unit's ExecStopPost=+ restore runs even after a crash
        eventually(lambda: dns_state(host) == before, message="restored by ExecStopPost after kill -9")
        unit = start_unprivileged(host)
        assert getent(host, "ordinary.example") == "192.0.2.80"
        stop(host, unit)
        assert dns_state(host) == before
    finally:
        host.ssh(f"systemctl stop {unit}; systemctl reset-failed {unit}; rm -rf /var/lib/kuma-dns-e2e-unpriv",
                 check=False)
