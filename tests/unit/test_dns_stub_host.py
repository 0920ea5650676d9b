"""Host DNS integration against files and directories the test creates (never this machine's resolv.conf,
systemd-resolved or links): resolv.conf rewrite, backup and exact restore (a symlink included), crash
recovery, the owner lock, the upstreams the host had, and the systemd-resolved commands (recorded by a fake
runner here; tests/e2e/test_host_dns.py runs them for real in booted lab hosts)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.dns import component, resolvconf
from agent.dns.cli import main as dns_cli
from agent.dns.component import DnsError, DnsOptions, HostDns, is_self
from agent.dns.host import LINK, PEER, Host, HostDnsError, HostPaths, OwnerBusy, OwnerLock, detect, uses_resolved
from tests.unit.test_dns_stub_support import VIP_MAP, TestUpstream, addresses, ask, stub

ORIGINAL = (b"# written by the installer\nnameserver 10.1.2.3\nnameserver 10.1.2.4\nsearch corp.example\n"
            b"options edns0 trust-ad\n")


def host_in(tmp_path: Path, runner: object = None) -> Host:
    paths = HostPaths(resolv_conf=tmp_path / "etc" / "resolv.conf", resolved_dir=tmp_path / "run" / "resolve",
                      nsswitch=tmp_path / "etc" / "nsswitch.conf")
    paths.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
    return Host(tmp_path / "state", paths, runner or refuse_commands)  # type: ignore[arg-type]


def refuse_commands(argv: list[str]) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"resolv.conf mode ran a command: {argv}")


def tree(path: Path) -> dict[str, object]:
    """Every entry of a directory: (kind, bytes or target, mode) - to compare before and after."""
    out: dict[str, object] = {}
    for p in sorted(path.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out[str(p.relative_to(path))] = ("link", os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            out[str(p.relative_to(path))] = ("file", p.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


# --- resolv.conf ----------------------------------------------------------------------------------------------


def test_resolv_conf_rewritten_then_restored_byte_for_byte(tmp_path: Path) -> None:
    host = host_in(tmp_path)
    conf = host.paths.resolv_conf
    conf.write_bytes(ORIGINAL)
    conf.chmod(0o640)
    before = tree(conf.parent)
    said = host.configure("resolv.conf", ("127.0.1.53", 53))
    assert "now names only the stub" in said
    text = conf.read_text()
    assert resolvconf.nameservers(text) == ["127.0.1.53"]
    assert "search corp.example" in text and "options edns0 trust-ad" in text  # search and options kept
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert json.loads((tmp_path / "state" / "host.json").read_text())["mode"] == "resolv.conf"
    assert host.original_nameservers() == ["10.1.2.3", "10.1.2.4"]  # the upstreams: from the backup
    assert host.restore() == f"{conf} restored"
    assert tree(conf.parent) == before  # same bytes, same mode, no temporary file left behind
    assert not (tmp_path / "state" / "host.json").exists()
    assert host.restore() is None  # nothing left to do


def test_a_symlinked_resolv_conf_is_replaced_then_relinked(tmp_path: Path) -> None:
    host = host_in(tmp_path)
    conf = host.paths.resolv_conf
    target_dir = tmp_path / "run" / "resolve"
    target_dir.mkdir(parents=True)
    (target_dir / "stub-resolv.conf").write_bytes(b"nameserver 127.0.0.53\n")
    conf.symlink_to("../run/resolve/stub-resolv.conf")
    before = tree(tmp_path / "etc") | tree(target_dir)
    host.configure("resolv.conf", ("127.0.1.53", 53))
    assert not conf.is_symlink() and resolvconf.nameservers(conf.read_text()) == ["127.0.1.53"]
    assert (target_dir / "stub-resolv.conf").read_bytes() == b"nameserver 127.0.0.53\n"  # never followed
    host.restore()
    assert conf.is_symlink() and os.readlink(conf) == "../run/resolve/stub-resolv.conf"
    assert tree(tmp_path / "etc") | tree(target_dir) == before


def test_an_absent_resolv_conf_is_absent_again(tmp_path: Path) -> None:
    host = host_in(tmp_path)
    host.configure("resolv.conf", ("127.0.1.53", 53))
    assert host.paths.resolv_conf.exists()
    host.restore()
    assert not host.paths.resolv_conf.exists()


def test_a_file_changed_by_someone_else_is_kept_unless_forced(tmp_path: Path) -> None:
    host = host_in(tmp_path)
    conf = host.paths.resolv_conf
    conf.write_bytes(ORIGINAL)
    host.configure("resolv.conf", ("127.0.1.53", 53))
    conf.write_text("nameserver 10.9.9.9\n")  # e.g. a DHCP client renewed its lease
    assert "left as it is" in (host.restore() or "")
    assert conf.read_text() == "nameserver 10.9.9.9\n"
    host.configure("resolv.conf", ("127.0.1.53", 53))
    conf.write_text("nameserver 10.9.9.9\n")
    host.restore(force=True)
    assert conf.read_text() == "nameserver 10.9.9.9\n"  # the original at the second configure


def test_resolv_conf_needs_port_53_and_a_writable_directory(tmp_path: Path) -> None:
    host = host_in(tmp_path)
    with pytest.raises(HostDnsError, match="cannot name a port"):
        host.configure("resolv.conf", ("127.0.1.53", 5353))
    missing = Host(tmp_path / "state", HostPaths(resolv_conf=tmp_path / "no" / "such" / "resolv.conf"),
                   refuse_commands)
    with pytest.raises(HostDnsError, match="cannot rewrite"):
        missing.configure("resolv.conf", ("127.0.1.53", 53))
    assert not (tmp_path / "state" / "host.json").exists()  # nothing changed, nothing to restore


def test_a_wildcard_listener_is_named_by_loopback(tmp_path: Path) -> None:
    host = host_in(tmp_path)
    host.configure("resolv.conf", ("0.0.0.0", 53))
    assert resolvconf.nameservers(host.paths.resolv_conf.read_text()) == ["127.0.0.1"]


# --- detection -------------------------------------------------------------------------------------------------


def test_detection_never_picks_resolved_for_a_file_other_than_etc_resolv_conf(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def runner(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    host = host_in(tmp_path, runner)
    host.paths.resolv_conf.write_text("nameserver 127.0.0.53\n")
    (tmp_path / "run" / "resolve").mkdir(parents=True)
    (tmp_path / "run" / "resolve" / "stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    assert uses_resolved(host.paths)
    assert detect(host.paths, runner) == "resolv.conf"  # not /etc/resolv.conf: resolved is never touched
    assert not calls


def test_uses_resolved(tmp_path: Path) -> None:
    paths = host_in(tmp_path).paths
    paths.resolv_conf.write_text("nameserver 10.0.0.2\n")
    assert not uses_resolved(paths)
    paths.nsswitch.write_text("passwd: files\nhosts: files resolve [!UNAVAIL=return] dns\n")
    assert uses_resolved(paths)
    paths.nsswitch.write_text("hosts: files dns\n")
    paths.resolv_conf.unlink()
    paths.resolv_conf.symlink_to("/run/systemd/resolve/stub-resolv.conf")  # dangling here: still resolved's
    assert uses_resolved(paths)


# --- systemd-resolved (commands recorded) -------------------------------------------------------------------


class FakeSystem:
    """Records `ip` / `resolvectl` calls; no dummy driver, like the lab's kernel; links come and go."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.links: set[str] = set()
        self.fail = fail

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        line = " ".join(argv)
        self.calls.append(line)
        ok = subprocess.CompletedProcess(argv, 0, "", "")
        bad = subprocess.CompletedProcess(argv, 1, "", "failed")
        if self.fail and self.fail in line:
            return bad
        if argv[:3] == ["ip", "link", "show"]:
            return ok if argv[3] in self.links else bad
        if argv[:3] == ["ip", "link", "add"]:
            if "dummy" in argv:
                return subprocess.CompletedProcess(argv, 2, "", "Error: Unknown device type.")
            self.links |= {LINK, PEER}
        if argv[:3] == ["ip", "link", "del"]:
            self.links -= {LINK, PEER}
        return ok


def resolved_host(tmp_path: Path, system: FakeSystem) -> Host:
    host = host_in(tmp_path, system)
    (tmp_path / "run" / "resolve").mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / "resolve" / "io.systemd.Resolve").write_text("")
    return host


def test_resolved_gets_a_link_with_routing_domain_mesh_only(tmp_path: Path) -> None:
    system = FakeSystem()
    host = resolved_host(tmp_path, system)
    said = host.configure("resolved", ("127.0.1.53", 53))
    assert "veth pair" in said and "~mesh" in said
    assert [c for c in system.calls if not c.startswith(("resolvectl status", "ip link show"))] == [
        f"ip link add {LINK} type dummy",
        f"ip link add {LINK} type veth peer name {PEER}",
        f"ip link set {PEER} up",
        f"ip link set {LINK} up",
        f"ip addr add 127.0.1.53/32 dev {LINK} scope global",
        f"resolvectl dns {LINK} 127.0.1.53",
        f"resolvectl domain {LINK} ~mesh",
        f"resolvectl default-route {LINK} false",
        f"resolvectl llmnr {LINK} no",
        f"resolvectl mdns {LINK} no",
        f"resolvectl dnssec {LINK} no",
        f"resolvectl dnsovertls {LINK} no",
    ]
    assert json.loads((tmp_path / "state" / "host.json").read_text())["peer"] == PEER
    system.calls.clear()
    assert "removed" in (host.restore() or "")
    assert system.calls == [f"ip link show {LINK}", f"resolvectl revert {LINK}", f"ip link del {LINK}"]
    assert not system.links and not (tmp_path / "state" / "host.json").exists()


def test_resolved_with_another_port_and_failure_rolls_back(tmp_path: Path) -> None:
    system = FakeSystem()
    host = resolved_host(tmp_path, system)
    host.configure("resolved", ("127.0.1.53", 5353))
    assert f"resolvectl dns {LINK} 127.0.1.53:5353" in system.calls
    host.restore()
    failing = FakeSystem(fail="resolvectl domain")
    host = resolved_host(tmp_path, failing)
    with pytest.raises(HostDnsError, match="resolvectl domain"):
        host.configure("resolved", ("127.0.1.53", 53))
    assert not failing.links and not (tmp_path / "state" / "host.json").exists()  # undone at once


def test_resolved_needs_a_loopback_address_of_its_own_and_a_running_resolved(tmp_path: Path) -> None:
    host = resolved_host(tmp_path, FakeSystem())
    for bad in ("127.0.0.1", "127.0.0.53", "10.0.0.5", "::1"):
        with pytest.raises(HostDnsError, match=r"127\.x\.y\.z"):
            host.configure("resolved", (bad, 53))
    (tmp_path / "run" / "resolve" / "io.systemd.Resolve").unlink()
    with pytest.raises(HostDnsError, match="not running"):
        host.configure("resolved", ("127.0.1.53", 53))


def test_a_stale_link_from_a_crash_is_replaced(tmp_path: Path) -> None:
    system = FakeSystem()
    system.links = {LINK, PEER}
    host = resolved_host(tmp_path, system)
    host.configure("resolved", ("127.0.1.53", 53))
    assert system.calls.index(f"ip link del {LINK}") < system.calls.index(f"ip link add {LINK} type dummy")


# --- the owner lock, crash recovery, kuma-dp dns restore ---------------------------------------------------------


def test_the_owner_lock_is_one_per_state_dir(tmp_path: Path) -> None:
    first, second = OwnerLock(tmp_path), OwnerLock(tmp_path)
    first.acquire()
    with pytest.raises(OwnerBusy) as e:
        second.acquire()
    assert e.value.pid == os.getpid()
    first.release()
    second.acquire()
    second.release()


HOLDER = textwrap.dedent("""
    import sys, time
    from agent.dns.host import OwnerLock
    lock = OwnerLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(60)
""")


def test_a_second_owner_fails_clearly_naming_the_first(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "state")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        dns = HostDns(DnsOptions(listen="127.0.0.1:0", state_dir=str(tmp_path / "state")), {})
        with pytest.raises(DnsError) as e:
            dns.prepare()
        assert e.value.exit_code == 2
        assert e.value.message.startswith(f"another dataplane (pid {holder.pid}) owns this host's .mesh DNS and "
                                          "VIP listeners")
        assert "run this one without --dns-enabled" in e.value.message
        assert dns_cli(["restore", "--dns-state-dir", str(tmp_path / "state")]) == 1  # a live owner's: refused
    finally:
        holder.kill()
        holder.wait()


def test_the_listen_address_taken_fails_clearly(tmp_path: Path) -> None:
    up = TestUpstream()
    try:
        dns = HostDns(DnsOptions(listen=up.address, state_dir=str(tmp_path / "state")), {})
        with pytest.raises(DnsError, match="already in use") as e:
            dns.prepare()
        assert "without --dns-enabled" in e.value.message
        assert OwnerLock(tmp_path / "state").acquire()  # the failed prepare released the lock
    finally:
        up.close()


def test_crash_recovery_restores_before_anything_else(tmp_path: Path) -> None:
    host = host_in(tmp_path)
    conf = host.paths.resolv_conf
    conf.write_bytes(ORIGINAL)
    host.configure("resolv.conf", ("127.0.0.1", 53))  # ... and the owner is killed: nothing restores
    dns = HostDns(DnsOptions(listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                             resolv_conf=str(conf)), {})
    try:
        dns.prepare()
        assert dns.recovered == f"{conf} restored" and conf.read_bytes() == ORIGINAL
        assert [str(u) for u in dns.upstreams] == ["10.1.2.3:53", "10.1.2.4:53"]
    finally:
        asyncio.run(dns.stop())


def test_kuma_dp_dns_restore_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = host_in(tmp_path)
    host.paths.resolv_conf.write_bytes(ORIGINAL)
    state = str(tmp_path / "state")
    assert dns_cli(["restore", "--dns-state-dir", state]) == 0
    assert "nothing to restore" in capsys.readouterr().out
    host.configure("resolv.conf", ("127.0.1.53", 53))
    assert dns_cli(["status", "--dns-state-dir", state]) == 0
    assert json.loads(capsys.readouterr().out)["host"]["mode"] == "resolv.conf"
    assert dns_cli(["restore", "--dns-state-dir", state]) == 0
    assert "restored" in capsys.readouterr().out
    assert host.paths.resolv_conf.read_bytes() == ORIGINAL
    assert dns_cli(["restore", "--dns-state-dir", str(tmp_path / "never-used")]) == 0
    assert not (tmp_path / "never-used").exists()  # restore creates nothing


# --- upstreams ---------------------------------------------------------------------------------------------------


def test_the_stub_never_forwards_to_itself(tmp_path: Path) -> None:
    assert is_self(("127.0.1.53", 53), ("127.0.1.53", 53))
    assert not is_self(("127.0.1.53", 5353), ("127.0.1.53", 53))
    assert is_self(("127.0.0.1", 53), ("0.0.0.0", 53)) and is_self(("127.0.0.53", 53), ("0.0.0.0", 53))
    assert not is_self(("192.0.2.1", 53), ("0.0.0.0", 53))
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\nnameserver 10.0.0.2\n")
    dns = HostDns(DnsOptions(listen="127.0.0.1:0", state_dir=str(tmp_path / "s"), resolv_conf=str(conf)), {})
    dns.listen = ("127.0.0.1", 53)
    assert [str(u) for u in dns._upstreams()] == ["10.0.0.2:53"]
    only_us = HostDns(DnsOptions(listen="127.0.0.1:53", upstreams=("127.0.0.1:53",), state_dir=str(tmp_path / "s")),
                      {})
    assert only_us._upstreams() == []


# --- the whole component with its worker process --------------------------------------------------------------


def test_component_serves_through_its_worker_and_restarts_a_dead_one(tmp_path: Path) -> None:
    up = TestUpstream()
    up.add("www.example", "A", "192.0.2.1")

    async def scenario() -> None:
        dns = HostDns(DnsOptions(listen="127.0.0.1:0", upstreams=(up.address,), state_dir=str(tmp_path / "state")),
                      {k: v for k, v in os.environ.items() if not k.startswith("KUMA_")})
        dns.prepare()
        try:
            await dns.start(VIP_MAP)
            port = dns.listen[1]
            assert dns.ready is not None and dns.ready["names"] == 4
            assert addresses(await asyncio.to_thread(ask, port, "backend.mesh")) == ["127.240.0.1"]
            assert addresses(await asyncio.to_thread(ask, port, "www.example")) == ["192.0.2.1"]
            assert dns.proc is not None
            first = dns.proc.pid
            dns.proc.kill()  # the worker dies: kuma-dp's side starts another on the same sockets
            for _ in range(100):
                await asyncio.sleep(0.1)
                if dns.proc.pid != first and dns.proc.poll() is None and dns.ready:
                    break
            reply = await asyncio.to_thread(ask, port, "web.mesh", timeout=5)
            assert addresses(reply) == ["127.240.0.2"] and dns.proc.pid != first
        finally:
            await dns.stop()
        assert dns.proc is not None and dns.proc.poll() is not None
        assert OwnerLock(tmp_path / "state").acquire()

    try:
        asyncio.run(scenario())
    finally:
        up.close()


# --- a kuma-dp that is not root: the host is left to `kuma-dp dns configure` / `restore`, run as root ---------


def test_an_unprivileged_owner_leaves_the_host_to_the_root_helpers(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    host = host_in(tmp_path)
    conf = host.paths.resolv_conf
    conf.write_bytes(ORIGINAL)
    host.configure("resolv.conf", ("127.0.1.53", 53))  # as root's `kuma-dp dns configure` did, before a crash
    ours = conf.read_bytes()
    up = TestUpstream()
    up.add("www.example", "A", "192.0.2.1")

    async def scenario() -> None:
        dns = HostDns(DnsOptions(listen="127.0.0.1:0", host_config="auto", state_dir=str(tmp_path / "state"),
                                 resolv_conf=str(conf)), dict(os.environ), privileged=False)
        dns.prepare()
        try:
            assert dns.recovered is None and conf.read_bytes() == ours  # not undone here ...
            assert [str(u) for u in dns.upstreams] == ["10.1.2.3:53", "10.1.2.4:53"]  # ... but the backup's servers
            await dns.start(VIP_MAP)
            assert "left to `kuma-dp dns configure`" in (dns.configured or "")
            assert conf.read_bytes() == ours
            # `kuma-dp dns configure` (root) finds the owner and its stub, restores the leftover, configures again
            monkeypatch.setattr(component, "stub_answers", lambda listen, domain="mesh", timeout=1.0: True)
            said = await asyncio.to_thread(component.configure_for_owner, host, "resolv.conf", ("127.0.1.53", 53),
                                           wait=2)
            assert "now names only the stub" in said
        finally:
            await dns.stop()
        assert (tmp_path / "state" / "host.json").exists()  # stop left it too: `kuma-dp dns restore` undoes it
        assert dns_cli(["restore", "--dns-state-dir", str(tmp_path / "state")]) == 0
        assert conf.read_bytes() == ORIGINAL

    try:
        asyncio.run(scenario())
    finally:
        up.close()


def test_configure_needs_a_live_owner_whose_stub_answers(tmp_path: Path) -> None:
    host = host_in(tmp_path)
    with pytest.raises(HostDnsError, match="no kuma-dp with --dns-enabled holds"):
        component.configure_for_owner(host, "resolv.conf", ("127.0.1.53", 53), wait=0.3)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "state")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            listen = ("127.0.0.1", silent.getsockname()[1])
            with pytest.raises(HostDnsError, match="does not answer"):
                component.configure_for_owner(host, "resolv.conf", listen, wait=0.3)
    finally:
        holder.kill()
        holder.wait()
    assert not host.paths.resolv_conf.exists() and not (tmp_path / "state" / "host.json").exists()


def test_stub_answers_probe() -> None:
    with stub([]) as s:
        assert component.stub_answers(("127.0.0.1", s.port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        assert not component.stub_answers(("127.0.0.1", silent.getsockname()[1]), timeout=0.2)
