"""The resolv.conf guard, on a resolv.conf in a temporary directory (never this machine's): another program's
rewrite is noticed through inotify; kuma-dp as root re-applies a bounded number of times with that program's
file as the new original, then gives up; the unprivileged agent warns once per distinct content."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from agent.dns import resolvconf
from agent.dns.guard import MAX_REAPPLY, ResolvConfGuard
from agent.dns.host import Host, HostPaths

LISTEN = ("127.0.1.53", 53)
ORIGINAL = "nameserver 192.0.2.1\nsearch example.org\n"


def rewrite(path: Path, text: str) -> None:
    """What NetworkManager and resolvconf do: write a temporary file, rename it over resolv.conf."""
    tmp = path.with_name(".resolv.conf.new")
    tmp.write_text(text)
    os.rename(tmp, path)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "resolv.conf").write_text(ORIGINAL)
    h = Host(tmp_path / "state", HostPaths(resolv_conf=etc / "resolv.conf"))
    h.configure("resolv.conf", LISTEN)
    return h


async def next_status(statuses: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(statuses.get(), 5)


async def test_as_root_a_rewrite_is_reapplied_with_the_new_original_then_given_up(host: Host) -> None:
    path = host.paths.resolv_conf
    statuses: asyncio.Queue[str] = asyncio.Queue()
    reports: list[tuple[str, str]] = []  # what goes to the dataplane's insight
    guard = ResolvConfGuard(host, LISTEN, may_reapply=True, on_status=statuses.put_nowait,
                            on_report=lambda state, text: reports.append((state, text)))
    guard.start()
    try:
        for i in range(MAX_REAPPLY):
            rewrite(path, f"nameserver 198.51.100.{i + 1}\n")  # a DHCP renewal
            text = await next_status(statuses)
            assert "pointed at the stub again" in text and f"{i + 1} of at most {MAX_REAPPLY}" in text
            assert resolvconf.nameservers(path.read_text()) == ["127.0.1.53"]
            original = resolvconf.Snapshot.from_json(json.loads(host.state.path.read_text())["original"])
            assert original.text == f"nameserver 198.51.100.{i + 1}\n"  # what a stop would put back
        rewrite(path, "nameserver 203.0.113.9\n")  # the other program again: a loop nobody wins
        text = await next_status(statuses)
        assert "stopped re-applying" in text and "--dns-host-config resolved or none" in text
        assert [state for state, _ in reports] == ["reapplied"] * MAX_REAPPLY + ["given-up"]
        assert reports[-1][1] == text
        assert path.read_text() == "nameserver 203.0.113.9\n"  # left as the other program wrote it
        assert guard.gave_up
        # The same foreign content touched again: no new line.
        os.utime(path)
        await asyncio.sleep(0.5)
        assert statuses.empty()
    finally:
        guard.stop()


async def test_unprivileged_it_warns_once_per_content_and_leaves_the_file(host: Host) -> None:
    path = host.paths.resolv_conf
    statuses: asyncio.Queue[str] = asyncio.Queue()
    reports: list[tuple[str, str]] = []
    guard = ResolvConfGuard(host, LISTEN, may_reapply=False, on_status=statuses.put_nowait,
                            on_report=lambda state, text: reports.append((state, text)))
    guard.start()
    try:
        rewrite(path, "nameserver 198.51.100.7\n")
        text = await next_status(statuses)
        assert "rewritten by another program" in text and "systemctl restart kuma-dp" in text
        assert reports == [("rewritten", text)]
        assert path.read_text() == "nameserver 198.51.100.7\n"
        with open(path, "a") as f:  # an in-place edit of the same foreign file: a new content, one more line
            f.write("options ndots:2\n")
        assert "rewritten by another program" in await next_status(statuses)
        os.utime(path)
        await asyncio.sleep(0.5)
        assert statuses.empty()
    finally:
        guard.stop()


async def test_kuma_dps_own_writes_and_a_restored_host_are_not_rewrites(host: Host) -> None:
    statuses: asyncio.Queue[str] = asyncio.Queue()
    guard = ResolvConfGuard(host, LISTEN, may_reapply=True, on_status=statuses.put_nowait)
    guard.start()
    try:
        assert guard.check() is None  # the file kuma-dp wrote
        os.utime(host.paths.resolv_conf)  # touched, same content
        await asyncio.sleep(0.5)
        host.restore()  # put back: host.json is gone, so nothing is guarded any more
        rewrite(host.paths.resolv_conf, "nameserver 198.51.100.8\n")
        await asyncio.sleep(0.5)
        assert statuses.empty()
        assert guard.check() is None
    finally:
        guard.stop()
