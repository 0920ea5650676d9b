"""Forwarding what is not `.mesh` to the host's upstream servers, unchanged but for the transaction id.

For each query (on the stub's event loop):
- the cache first (agent/dns/cache.py);
- one attempt = a fresh socket connected to one upstream (a random source port chosen by the kernel, which
  also drops datagrams from any other address), a random transaction id, and a reply accepted only if its id,
  QR bit and question match what was sent (anything else is counted and ignored: a spoofed or stray reply
  never reaches the client); the client's own id is put back on the reply;
- an attempt that times out, is refused (ICMP port unreachable) or answers SERVFAIL/REFUSED moves on to the
  next upstream, starting with the one that answered last; the list is tried twice within the deadline,
  then the client gets SERVFAIL (before its own resolver gives up, 5 s for glibc);
- a UDP reply with TC set is asked again over TCP from the same upstream: the full answer goes back when it
  fits what the client takes over UDP, otherwise the truncated one does and the client comes back over TCP;
  a client that asks over TCP is forwarded over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .cache import MAX_NEGATIVE_TTL, MAX_TTL, Cache
from .message import REFUSED, SERVFAIL, TC, Malformed, Query, error_reply, question_end, reply_facts, truncated_reply

log = logging.getLogger("kuma-dp.dns")

ATTEMPT_TIMEOUT = 1.0
DEADLINE = 4.0
TCP_MAX = 65535


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%")[0]) == ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return a == b


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream], *, cache: Cache | None = None,
                 attempt_timeout: float = ATTEMPT_TIMEOUT, deadline: float = DEADLINE) -> None:
        self.upstreams = list(upstreams)
        self.cache = cache
        self.attempt_timeout, self.deadline = attempt_timeout, deadline
        self.preferred = 0
        self.stats: Counter[str] = Counter()

    def matches(self, reply: bytes, qid: int, query: Query) -> bool:
        """The reply to what we sent: our id, a response, and the same single question."""
        if len(reply) < 12 or int.from_bytes(reply[:2], "big") != qid or not reply[2] & 0x80:
            return False
        if reply[4:6] != b"\x00\x01":
            return False
        try:
            qend = question_end(reply)
        except Malformed:
            return False
        return reply[12:qend].lower() == query.question.lower()

    async def resolve(self, data: bytes, query: Query, *, tcp: bool = False) -> bytes:
        """The reply to send back for the client's `data` (its id restored)."""
        limit = TCP_MAX if tcp else query.udp_size
        if self.cache is not None:
            cached = self.cache.get(query, data, limit)
            if cached is not None:
                self.stats["cache_hits"] += 1
                return cached
        reply = await self._ask(data, query, tcp, limit)
        if reply is None:
            self.stats["servfail"] += 1
            out = error_reply(data, query, SERVFAIL)
            assert out is not None
            return out
        if self.cache is not None and not reply[2] & (TC >> 8):
            try:
                facts = reply_facts(reply, max_ttl=MAX_TTL, max_negative_ttl=MAX_NEGATIVE_TTL)
                self.cache.put(query, reply, facts.ttl, facts.ttl_offsets)
            except Malformed:
                pass
        if not tcp and len(reply) > limit:
            with contextlib.suppress(Malformed):
                reply = truncated_reply(reply, question_end(reply))
        return data[:2] + reply[2:]

    async def _ask(self, data: bytes, query: Query, tcp: bool, limit: int) -> bytes | None:
        if not self.upstreams:
            self.stats["no_upstream"] += 1
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        n = len(self.upstreams)
        last: bytes | None = None
        for attempt in range(2 * n):
            left = deadline - loop.time()
            if left <= 0.01:
                break
            index = (self.preferred + attempt) % n
            up = self.upstreams[index]
            timeout = min(self.attempt_timeout * (2 if tcp else 1), left)
            try:
                reply = await (self._tcp(up, data, query, timeout) if tcp else self._udp(up, data, query, timeout))
            except TimeoutError:
                self.stats["timeouts"] += 1
                log.debug("upstream timed out", extra={"upstream": str(up), "attempt": attempt + 1})
                continue
            except (OSError, EOFError, asyncio.IncompleteReadError) as e:
                self.stats["upstream_errors"] += 1
                log.debug("upstream failed", extra={"upstream": str(up), "error": str(e) or type(e).__name__})
                if not tcp:  # a refused port answers at once: do not spin on it within the deadline
                    await asyncio.sleep(min(0.05, max(deadline - loop.time(), 0)))
                continue
            rcode = reply[3] & 0x0F
            if rcode in (SERVFAIL, REFUSED) and attempt < n - 1:
                last = reply  # another server may know better
                continue
            if not tcp and reply[2] & (TC >> 8):
                self.stats["truncated"] += 1
                with contextlib.suppress(TimeoutError, OSError, EOFError, asyncio.IncompleteReadError):
                    full = await self._tcp(up, data, query, min(self.attempt_timeout * 2,
                                                                max(deadline - loop.time(), 0.1)))
                    if not full[2] & (TC >> 8) and len(full) <= limit:
                        reply = full
                        self.stats["tcp_fallback"] += 1
            self.preferred = index
            self.stats["forwarded"] += 1
            return reply
        return last

    async def _udp(self, up: Upstream, data: bytes, query: Query, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        sock = socket.socket(up.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect((up.host, up.port))  # UDP: no handshake; the kernel now filters the source
            qid = secrets.randbits(16)
            sock.send(qid.to_bytes(2, "big") + data[2:])
            done: asyncio.Future[bytes] = loop.create_future()

            def readable() -> None:
                while not done.done():
                    try:
                        reply, addr = sock.recvfrom(TCP_MAX)
                    except BlockingIOError:
                        return
                    except OSError as e:  # ECONNREFUSED: an ICMP port unreachable for our query
                        done.set_exception(e)
                        return
                    if _same_host(addr[0], up.host) and addr[1] == up.port and self.matches(reply, qid, query):
                        done.set_result(reply)
                    else:
                        self.stats["mismatched"] += 1

            loop.add_reader(sock.fileno(), readable)
            try:
                return await asyncio.wait_for(done, timeout)
            finally:
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()

    async def _tcp(self, up: Upstream, data: bytes, query: Query, timeout: float) -> bytes:
        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection(up.host, up.port)
            try:
                qid = secrets.randbits(16)
                message = qid.to_bytes(2, "big") + data[2:]
                writer.write(len(message).to_bytes(2, "big") + message)
                await writer.drain()
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    reply = await reader.readexactly(size)
                    if self.matches(reply, qid, query):
                        return reply
                    self.stats["mismatched"] += 1
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        return await asyncio.wait_for(exchange(), timeout)
