"""The blocking UDP loop both DNS servers run in a thread of their own: the kuma-dp stub and the control plane's
authoritative server. Standard library only (kuma-dp's DNS worker imports it).

Its hot path is a dictionary lookup: a query seen before, less its 2-byte id, maps to the reply that was
built for it (also less its id), so an answer costs one `get` and its share of the system calls. Anything
else goes to the server's `miss` handler, which may answer (return the reply) or deal with the query itself
(return None: forwarded, dropped). A `wake()` datagram (empty: never cached) makes the loop look at
`stopping()` without waiting for a query.

On Linux the loop takes every datagram already waiting with one recvmmsg and answers them with one sendmmsg,
each reply written over its query in a fixed buffer (kuma_shared/mmsg.py): no bytes object per datagram but
the lookup key, no address tuple, two system calls per batch. Elsewhere (or if ctypes cannot reach them) it
is the plain recvfrom/sendto loop; both give the same bytes to the same clients (tests/unit/test_dnsloop.py).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping
from typing import Any

from . import mmsg

# 4 KiB: CPython allocates the whole size for every datagram (65535 costs ~15% of the hot path); no real query
# is larger, and a longer one arrives cut short, which parsing treats as any other malformed packet.
UDP_RECV = 4096

Answers = Callable[[], Mapping[bytes, bytes]]
Miss = Callable[[bytes, Any], "bytes | None"]


def serve_udp(sock: socket.socket, answers: Answers, miss: Miss, stopping: Callable[[], bool],
              on_error: Callable[[BaseException], None], *, batched: bool | None = None) -> None:
    """Serve until `stopping()`. `answers()` is the current map of known queries to replies (it may be
    replaced at any time: it is read per batch of datagrams); `miss(query, address)` handles the rest.
    `batched`: recvmmsg/sendmmsg (None: when the platform has them and the socket blocks without a timeout,
    which is what recvmmsg's wait relies on)."""
    if batched is None:
        batched = mmsg.available() and sock.gettimeout() is None
    if batched:
        serve_udp_batched(sock, answers, miss, stopping, on_error)
    else:
        serve_udp_plain(sock, answers, miss, stopping, on_error)


def serve_udp_batched(sock: socket.socket, answers: Answers, miss: Miss, stopping: Callable[[], bool],
                      on_error: Callable[[BaseException], None]) -> None:
    batch = mmsg.Batch(sock.fileno(), UDP_RECV)
    slot = batch.slot
    most = slot - 2  # a reply longer than a slot (none of ours is) goes out through sendto
    buf, iov_lens, words, stride, len_word = batch.buf, batch.iov_lens, batch.msg_words, batch.stride, batch.len_word
    recv, send, sendto = batch.recv, batch.send, sock.sendto
    while True:
        try:
            n = recv()
        except OSError:
            if stopping():
                return
            continue
        get = answers().get
        first = 0  # the first slot whose reply is not sent yet
        for i in range(n):
            off = i * slot
            end = off + words[i * stride + len_word]
            cached = get(bytes(buf[off + 2:end]))
            if cached is not None:
                size = len(cached)
                if size <= most:
                    buf[off + 2:off + 2 + size] = cached  # the id stays: the query's own
                    iov_lens[2 * i + 1] = size + 2
                    continue
            # Not a known query: what came before it goes out first (replies keep their order), then it is
            # handled on its own.
            if i > first:
                send(first, i - first)
            first = i + 1
            data = bytes(buf[off:end])
            if cached is not None:
                with contextlib.suppress(OSError):
                    sendto(data[:2] + cached, batch.source(i))
                continue
            if stopping():  # the wake-up datagram is empty: never cached
                return
            try:
                reply = miss(data, batch.source(i))
            except Exception as e:
                on_error(e)
                continue
            if reply is not None:
                with contextlib.suppress(OSError):
                    sendto(reply, batch.source(i))
        if n > first:
            send(first, n - first)


def serve_udp_plain(sock: socket.socket, answers: Answers, miss: Miss, stopping: Callable[[], bool],
                    on_error: Callable[[BaseException], None]) -> None:
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
