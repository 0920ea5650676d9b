"""The blocking UDP loop both DNS servers run in a thread of their own: the kuma-dp stub and the control plane's
authoritative server. Standard library only (kuma-dp's DNS worker imports it).

Its hot path is a dictionary lookup: a query seen before, less its 2-byte id, maps to the reply that was
built for it (also less its id), so an answer costs one `recvfrom`, one `get` and one `sendto`. Anything else
goes to the server's `miss` handler, which may answer (return the reply) or deal with the query itself
(return None: forwarded, dropped). A `wake()` datagram (empty: never cached) makes the loop look at
`stopping()` without waiting for a query.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping
from typing import Any

# 4 KiB: CPython allocates the whole size for every datagram (65535 costs ~15% of the hot path); no real query
# is larger, and a longer one arrives cut short, which parsing treats as any other malformed packet.
UDP_RECV = 4096


def serve_udp(sock: socket.socket, answers: Callable[[], Mapping[bytes, bytes]],
              miss: Callable[[bytes, Any], bytes | None], stopping: Callable[[], bool],
              on_error: Callable[[BaseException], None]) -> None:
    """Serve until `stopping()`. `answers()` is the current map of known queries to replies (it may be
    replaced at any time: it is read per datagram); `miss(query, address)` handles the rest."""
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        try:
            data, addr = recvfrom(UDP_RECV)
        except OSError:
            if stopping():
                return
            continue
        cached = answers().get(data[2:])
        if cached is not None:
            try:  # noqa: SIM105 - cheaper than contextlib.suppress on the hot path
                sendto(data[:2] + cached, addr)
            except OSError:
                pass
            continue
        if stopping():  # the wake-up datagram is empty: never cached
            return
        try:
            reply = miss(data, addr)
        except Exception as e:
            on_error(e)
            continue
        if reply is not None:
            try:  # noqa: SIM105
                sendto(reply, addr)
            except OSError:
                pass


def wake(family: socket.AddressFamily, host: str, port: int) -> None:
    """Send the empty datagram that makes a loop on (host, port) look at `stopping()` (wildcard addresses are
    reached on loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(b"", (host, port))
