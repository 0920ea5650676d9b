"""Loopback ports for test servers, handed out so that no other test process and no kernel allocation can take
one between the moment it is chosen and the moment a server binds it.

Binding port 0 and closing gives a port that was free a moment ago, from the kernel's ephemeral range: the
next outgoing connection of any process (Envoy, kuma-dp, the control plane) or another test process's port-0
probe may get it, and a server started a moment later fails with EADDRINUSE once in a few runs. Here:
- ports come from below the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), which the kernel
  never hands out by itself;
- a registry file shared by every test process on the machine (under an flock) records which process holds
  which port; entries of processes that have exited are reclaimed, so a killed session leaks nothing;
- a port must also bind on 127.0.0.1 for TCP and UDP right now, so one some other program listens on is skipped.

The same registry hands out `.mesh` VIP ranges (`free_vip_cidr`): every test control plane's proxies bind
VIP:80 on loopback, so two test sessions on one machine whose control planes both start at 127.240.0.1 took
each other's VIP listeners (a request for backend.mesh answered by another session's billing).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import tempfile
from pathlib import Path
from typing import IO

REGISTRY = Path(tempfile.gettempdir()) / "kuma-vm-test-ports.json"
LOWEST = 20000
_held: set[int] = set()  # this process's ports (also in the registry)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bindable(port: int, host: str) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _read(f: IO[str]) -> dict[str, int]:
    f.seek(0)
    try:
        held: dict[str, int] = json.loads(f.read() or "{}")
    except ValueError:  # never written, or written by an older layout
        return {}
    return held


def registry() -> dict[str, int]:
    """The registry's port -> pid entries, read under its lock (a writer truncates before it writes)."""
    with open(REGISTRY, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        return _read(f)


def _reserve(key: str) -> bool:
    """Record `key` for this process unless a live process holds it; under the lock."""
    me = os.getpid()
    with open(REGISTRY, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        held = {k: pid for k, pid in _read(f).items() if pid == me or _alive(pid)}
        if key in held:
            return False
        held[key] = me
        f.seek(0)
        f.truncate()
        f.write(json.dumps(held))
        f.flush()
    return True


# The VIP blocks: /20s (4094 VIPs each) of 127.240.0.0/13, within kuma-cp's default 127.240.0.0/12, so VIPs look
# as usual. A process keeps the blocks it reserved until it exits and reuses the ones its stopped control planes
# gave back, so a whole test session needs as many as it runs control planes at once.
VIP_BLOCKS = 128
_vips_free: list[str] = []  # reserved by this process, used by none of its running control planes
_vips_users: dict[str, int] = {}  # range -> running control planes of this process that use it


_vips_of_store: dict[str, str] = {}  # a shared store (PostgreSQL database) -> the range its instances use


def take_vip_cidr(store: str | None = None) -> str:
    """A VIP range (for KUMA_DNS_SERVER_CIDR) no other test process and no running control plane of this one
    uses; `give_back_vip_cidr` when that control plane stopped. Instances of one shared `store` hand out the same
    VIPs (they allocate them together), so they get one range."""
    shared = _vips_of_store.get(store) if store is not None else None
    if shared is not None and shared in _vips_users:
        _vips_users[shared] += 1
        return shared
    if _vips_free:
        cidr = _vips_free.pop()
    else:
        start = random.randrange(VIP_BLOCKS)
        for i in range(VIP_BLOCKS):
            block = (start + i) % VIP_BLOCKS
            cidr = f"127.{240 + block // 16}.{block % 16 * 16}.0/20"
            if _reserve(f"vip:{cidr}"):
                break
        else:
            raise RuntimeError("no free loopback VIP range in 127.240.0.0/13: too many test processes hold one")
    _vips_users[cidr] = 1
    if store is not None:
        _vips_of_store[store] = cidr
    return cidr


def claim_vip_cidr(cidr: str) -> None:
    """Another control plane uses a range of this process's: a restart with the same settings, or a second
    instance sharing the first one's store (and so its VIPs)."""
    if cidr in _vips_free:
        _vips_free.remove(cidr)
        _vips_users[cidr] = 1
    elif cidr in _vips_users:
        _vips_users[cidr] += 1


def give_back_vip_cidr(cidr: str) -> None:
    if cidr not in _vips_users:
        return
    _vips_users[cidr] -= 1
    if not _vips_users[cidr]:
        del _vips_users[cidr]
        _vips_free.append(cidr)


def free_port(host: str = "127.0.0.1", taken: set[int] | None = None) -> int:
    """A port reserved for this process (TCP and UDP free on `host` now); also added to `taken` if given."""
    high = _ephemeral_low() - 1
    if high - LOWEST < 100:
        raise RuntimeError(f"the ephemeral port range starts at {high + 1}: no room for test ports above {LOWEST}; "
                           "widen it with sysctl net.ipv4.ip_local_port_range")
    me = os.getpid()
    with open(REGISTRY, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        held = {port: pid for port, pid in _read(f).items() if pid == me or _alive(pid)}
        start = random.randint(LOWEST, high)
        span = high - LOWEST + 1
        for i in range(span):
            port = LOWEST + (start - LOWEST + i) % span
            if str(port) in held or (taken is not None and port in taken) or not _bindable(port, host):
                continue
            held[str(port)] = me
            f.seek(0)
            f.truncate()
            f.write(json.dumps(held))
            f.flush()
            _held.add(port)
            if taken is not None:
                taken.add(port)
            return port
    raise RuntimeError(f"no free loopback port between {LOWEST} and {high}")
