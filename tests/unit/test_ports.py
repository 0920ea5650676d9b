"""The test port and VIP range allocator: ports below the ephemeral range, never handed out twice across processes."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys

import pytest

from tests import ports
from tests.ports import free_port


def test_ports_are_outside_the_ephemeral_range_distinct_and_registered() -> None:
    got = [free_port() for _ in range(50)]
    assert len(set(got)) == 50
    assert all(ports.LOWEST <= p < ports._ephemeral_low() for p in got)
    held = ports.registry()  # under the lock: another test process may be rewriting the file
    assert all(held[str(p)] == ports.os.getpid() for p in got)
    taken: set[int] = set()
    p = free_port(taken=taken)
    assert taken == {p}


def test_a_port_someone_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports.random, "randint", lambda low, high: low)  # search from LOWEST up
    listeners = []
    try:
        for port in range(ports.LOWEST, ports.LOWEST + 20):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            listeners.append(s)
        busy = {s.getsockname()[1] for s in listeners}
        assert busy and not busy & {free_port() for _ in range(40)}
    finally:
        for s in listeners:
            s.close()


def test_concurrent_processes_never_get_the_same_port_while_they_live() -> None:
    code = ("import sys; from tests.ports import free_port; "
            "print(' '.join(str(free_port()) for _ in range(100)), flush=True); sys.stdin.read()")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        outputs = [p.stdout.readline().split() for p in procs if p.stdout is not None]
        mine = [free_port() for _ in range(100)]  # while the others still hold theirs
    finally:
        for p in procs:
            p.communicate(timeout=60)
    all_ports = [int(x) for out in outputs for x in out] + mine
    assert len(all_ports) == 500 and len(set(all_ports)) == 500


def test_vip_ranges_are_distinct_across_processes_and_reused_within_one() -> None:
    code = ("import sys; from tests.ports import take_vip_cidr; "
            "print(' '.join(take_vip_cidr() for _ in range(3)), flush=True); sys.stdin.read()")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        theirs = [c for p in procs if p.stdout is not None for c in p.stdout.readline().split()]
        mine = [ports.take_vip_cidr() for _ in range(3)]  # while the others still hold theirs
    finally:
        for p in procs:
            p.communicate(timeout=60)
    assert len(theirs) == 9 and len(set(theirs + mine)) == 12
    assert all(ipaddress.ip_network(c).subnet_of(ipaddress.ip_network("127.240.0.0/13")) for c in theirs + mine)
    # a stopped control plane's range goes to the next one of this process, and a restart claims its own back
    ports.give_back_vip_cidr(mine[0])
    assert ports.take_vip_cidr() == mine[0]
    ports.give_back_vip_cidr(mine[1])
    ports.claim_vip_cidr(mine[1])
    assert ports.take_vip_cidr() not in mine


def test_instances_of_one_store_share_a_vip_range_until_the_last_stops() -> None:
    a = ports.take_vip_cidr(store="db-1")
    b = ports.take_vip_cidr(store="db-1")
    other = ports.take_vip_cidr(store="db-2")
    assert a == b != other
    ports.give_back_vip_cidr(a)
    assert ports.take_vip_cidr() not in (a, other)  # b still uses it
    ports.give_back_vip_cidr(b)
    assert ports.take_vip_cidr() == a
