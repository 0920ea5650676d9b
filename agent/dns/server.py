"""The stub's listeners: UDP and TCP on one address (`--dns-listen`, sockets bound by the caller).

UDP, the hot path, is a dedicated thread running the shared blocking loop (kuma_shared/dnsloop.py: batches
of datagrams through recvmmsg/sendmmsg; DESIGN.md: an asyncio event loop, not DNS parsing, is what costs): a
query answered before from the current `.mesh` zone is a dictionary lookup; another `.mesh` query is answered
from the zone's precomputed replies in the same thread, and so is a forwarded answer still fresh in the
cache, which the loop then serves by itself until its TTLs tick a second; anything else is handed to the
event loop, where the Forwarder asks the upstreams. TCP
(clients retrying a truncated answer, tools) is served by asyncio: length-prefixed messages, several per
connection, an idle timeout and a cap on connections. The zone is replaced whole when the VIP map changes.

Nothing a client sends can stop it: a packet that is not a query is dropped (or answered FORMERR when it has
a query's header), a handling error is counted and logged, too many queries waiting for upstreams are
dropped (counted) rather than queued without bound, and a client retransmitting a query that is already
being forwarded does not start a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import socket
import threading
from collections import Counter
from typing import Any

from kuma_shared.aio import within
from kuma_shared.dnsloop import serve_udp, wake

from .forward import TCP_MAX, Forwarder
from .message import FORMERR, NOTIMP, SERVFAIL, Query, error_reply, parse_query
from .zone import Zone

log = logging.getLogger("kuma-dp.dns")

TCP_IDLE_TIMEOUT = 10.0
TCP_MAX_CONNECTIONS = 256
MAX_PENDING = 2048  # forwarded UDP queries waiting for an upstream
UDP_BUFFER = 4 << 20
ANSWERS_MAX = 8192  # replies the UDP loop serves by itself (query bytes less the id); emptied when full


def bind(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on host:port (port 0: one free port for both). Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(1 if port else 50):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    udp.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.bind((host, port))
            tcp.bind((host, udp.getsockname()[1]))
            tcp.listen(128)
            return udp, tcp
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
    raise OSError(f"no port free for both UDP and TCP on {host}")


class StubServer:
    def __init__(self, udp: socket.socket, tcp: socket.socket, zone: Zone, forwarder: Forwarder, *,
                 max_pending: int = MAX_PENDING) -> None:
        self.udp, self.tcp = udp, tcp
        self.zone = zone
        self.forwarder = forwarder
        self.max_pending = max_pending
        self.stats: Counter[str] = Counter()
        self._queued = 0  # handed to the loop, not yet started (the UDP thread adds, the loop subtracts)
        self._inflight: dict[tuple[Any, bytes, bytes], asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._tcp_server: asyncio.Server | None = None
        self._tcp_conns: set[asyncio.Task[None]] = set()
        # What the UDP loop answers by itself, by query bytes less the id: the zone's replies, and forwarded
        # replies from the cache for as long as their bytes stay the same (until a TTL counts down a second).
        # Read and written by the UDP thread only; a new zone starts it afresh.
        self._answers: dict[bytes, bytes] = {}
        self._answers_zone: Zone | None = None
        self._stale: list[tuple[float, bytes]] = []  # (when, key) of the forwarded replies in _answers

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.udp.getsockname()[:2]
        return str(host), int(port)

    def set_zone(self, zone: Zone) -> None:
        self.zone = zone

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self.udp.setblocking(True)
        self.tcp.setblocking(False)
        self._tcp_server = await asyncio.start_server(self._tcp_client, sock=self.tcp)
        self._thread = threading.Thread(target=self._serve_udp, name="dns-udp", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._wake_udp()
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None
        if self._tcp_server is not None:
            self._tcp_server.close()
            for task in list(self._tcp_conns):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp_server.wait_closed(), 5.0)
            self._tcp_server = None
        pending = list(self._inflight.values())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2.0)

    def _wake_udp(self) -> None:
        host, port = self.address
        wake(self.udp.family, host, port)

    # --- UDP: the shared blocking loop (kuma_shared/dnsloop.py) in its own thread -------------------------

    def _serve_udp(self) -> None:
        serve_udp(self.udp, self._current_answers, self._udp_miss, lambda: self._stopping, self._udp_error)

    def _current_answers(self) -> dict[bytes, bytes]:
        """The loop's map for its next batch of datagrams (UDP thread): forwarded replies whose TTLs have
        ticked since are taken out first, and a new zone empties it."""
        if self.zone is not self._answers_zone:
            self._answers_zone = self.zone
            self._answers = {}
            self._stale.clear()
        stale = self._stale
        if stale:
            cache = self.forwarder.cache
            now = cache.clock() if cache is not None else float("inf")
            answers = self._answers
            while stale and stale[0][0] <= now:
                answers.pop(heapq.heappop(stale)[1], None)
        return self._answers

    def _remember(self, data: bytes, reply: bytes, until: float | None = None) -> None:
        """Let the loop answer this very query (any id) with this reply by itself, until `until` (the cache's
        clock) or, for a zone reply, as long as the zone stands (UDP thread)."""
        if self.zone is not self._answers_zone:
            return  # a new zone arrived since this batch began: _current_answers starts afresh
        answers = self._answers
        if len(answers) >= ANSWERS_MAX:
            answers.clear()
            self._stale.clear()
        answers[data[2:]] = reply[2:]
        if until is not None:
            heapq.heappush(self._stale, (until, data[2:]))

    def _udp_error(self, e: BaseException) -> None:
        self.stats["errors"] += 1
        if self.stats["errors"] == 1 or self.stats["errors"] % 10000 == 0:
            log.error("DNS query handling failed (packet ignored)", extra={"errors": self.stats["errors"]},
                      exc_info=e)

    def _udp_miss(self, data: bytes, addr: Any) -> bytes | None:
        query = parse_query(data)
        if query is None:
            self.stats["malformed"] += 1
            if len(data) >= 12 and not data[2] & 0x80:  # a query's header with a question we cannot read
                reply = error_reply(data, None, FORMERR)
                if reply is not None:
                    self._send(reply, addr)
            return None
        zone = self.zone
        if zone.owns(query.name):
            reply = zone.answer(data, query, udp=True)
            self._remember(data, reply)
            self._send(reply, addr)
            return None
        if query.opcode != 0:
            reply = error_reply(data, query, NOTIMP)
            if reply is not None:
                self._send(reply, addr)
            return None
        cache = self.forwarder.cache
        if cache is not None:  # a forwarded answer still fresh in the cache: served from this thread too
            found = cache.get_until(query, data, query.udp_size)
            if found is not None:
                self.forwarder.stats["cache_hits"] += 1  # once a second per query: the loop serves the rest
                cached, until = found
                self._remember(data, cached, until)
                self._send(cached, addr)
                return None
        if self._queued + len(self._inflight) >= self.max_pending:
            self.stats["dropped"] += 1
            return None
        loop = self._loop
        if loop is None:
            return None
        self._queued += 1
        loop.call_soon_threadsafe(self._forward_udp, data, query, addr)
        return None

    def _send(self, reply: bytes, addr: Any) -> None:
        with contextlib.suppress(OSError):
            self.udp.sendto(reply, addr)

    # --- forwarding (event loop) --------------------------------------------------------------------------

    def _forward_udp(self, data: bytes, query: Query, addr: Any) -> None:
        self._queued -= 1
        key = (addr, data[:2], query.key)
        if key in self._inflight or self._stopping:
            self.stats["duplicates"] += 1
            return
        self.stats["forwarded_udp"] += 1
        task = asyncio.create_task(self._forward(data, query, addr))
        self._inflight[key] = task
        task.add_done_callback(lambda _t, k=key: self._inflight.pop(k, None))  # type: ignore[misc]

    async def _forward(self, data: bytes, query: Query, addr: Any) -> None:
        try:
            reply = await self.forwarder.resolve(data, query, tcp=False)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats["errors"] += 1
            log.exception("forwarding failed")
            reply = error_reply(data, query, SERVFAIL) or b""
        if reply:
            self._send(reply, addr)

    # --- TCP -----------------------------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tcp_conns) >= TCP_MAX_CONNECTIONS:
            writer.close()
            return
        self._tcp_conns.add(task)
        try:
            while True:
                size = int.from_bytes(await within(TCP_IDLE_TIMEOUT, reader.readexactly(2)), "big")
                data = await within(TCP_IDLE_TIMEOUT, reader.readexactly(size))
                reply = await self._tcp_reply(data)
                if reply is None:
                    return  # not a DNS query: RFC 7766 lets a server close the connection
                reply = reply[:TCP_MAX]
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tcp_conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _tcp_reply(self, data: bytes) -> bytes | None:
        query = parse_query(data)
        if query is None:
            self.stats["malformed"] += 1
            return None
        self.stats["tcp"] += 1
        zone = self.zone
        if zone.owns(query.name):
            return zone.answer(data, query, udp=False)
        if query.opcode != 0:
            return error_reply(data, query, NOTIMP)
        try:
            return await self.forwarder.resolve(data, query, tcp=True)
        except Exception:
            self.stats["errors"] += 1
            log.exception("forwarding over TCP failed")
            return error_reply(data, query, SERVFAIL)
