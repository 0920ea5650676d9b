"""Loopback ports for one dataplane that never collide with another dataplane's on the same host.

Kuma's fixed defaults (admin 9901, readiness 9902) make a second kuma-dp on a VM fail (kumahq/kuma#11824).
Here a port is derived from the dataplane's mesh and name (so it is stable across restarts and easy to find
again), then probed: if that port is taken, the next ones are tried. The ranges sit below Linux's default
ephemeral range (32768-60999), so outgoing connections do not take them by chance.
"""

from __future__ import annotations

import hashlib
import socket

from agent.config import PortRange

ADMIN_RANGE = PortRange(20000, 25999)
READINESS_RANGE = PortRange(26000, 31999)


class NoFreePort(RuntimeError):
    pass


def derived(key: str, span: PortRange) -> int:
    """A port in `span` chosen by a hash of `key` (same key, same port)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return span.low + digest % (span.high - span.low + 1)


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener can bind host:port now. SO_REUSEADDR, as Envoy's listeners use: a port whose old
    connections linger in TIME_WAIT (an Envoy that just died) counts as free, as it is for Envoy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick(key: str, span: PortRange, host: str = "127.0.0.1", *, avoid: set[int] | None = None,
         limit: int = 200) -> int:
    """The first free port starting at `derived(key, span)`, wrapping inside `span`."""
    avoid = avoid or set()
    size = span.high - span.low + 1
    start = derived(key, span) if size > 1 else span.low
    for i in range(min(size, limit)):
        port = span.low + (start - span.low + i) % size
        if port not in avoid and is_free(port, host):
            return port
    raise NoFreePort(f"no free port on {host} in {span} (tried {min(size, limit)})")


def bind_listener(key: str, span: PortRange, host: str = "127.0.0.1") -> socket.socket:
    """A bound, listening TCP socket on the first free port from `derived(key, span)` (no probe/bind race)."""
    size = span.high - span.low + 1
    start = derived(key, span) if size > 1 else span.low
    last: OSError | None = None
    for i in range(min(size, 200)):
        port = span.low + (start - span.low + i) % size
        try:
            return listen(host, port)
        except OSError as e:
            last = e
    raise NoFreePort(f"no free port on {host} in {span}: {last}")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (SO_REUSEADDR), or OSError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        s.listen(128)
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    s.setblocking(False)
    return s
