"""Helpers for the DNS stub tests (no tests here): a small real DNS server to forward to, a stub running in
this process, and a client.

`TestUpstream` is a real DNS server on 127.0.0.1 (UDP and TCP on one port, dnslib), whose behaviour a test
sets: its records, a delay, silence, SERVFAIL, truncation over UDP, or spoofing (a reply with a wrong id, one
for another question, and one with the right id from another port, each before the real reply). It records
every query it receives (transport, id, name, type).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord

from agent.dns.cache import Cache
from agent.dns.forward import Forwarder, Upstream
from agent.dns.server import StubServer, bind
from agent.dns.zone import Zone

VIP_MAP = {"mesh": "default", "version": "v1",
           "vips": {"backend": "127.240.0.1", "web": "127.240.0.2", "db_ns_svc_5432": "127.240.0.3"},
           "tproxyVips": {},
           "names": {"backend.mesh": "backend", "web.mesh": "web", "db_ns_svc_5432.mesh": "db_ns_svc_5432",
                     "db.ns.svc.5432.mesh": "db_ns_svc_5432"}}


@dataclass
class Seen:
    transport: str
    qid: int
    name: str
    qtype: str
    source: Any


@dataclass
class TestUpstream:
    __test__ = False  # not a pytest class

    host: str = "127.0.0.1"
    port: int = 0  # 0: a free one
    answers: dict[tuple[str, str], list[RR]] = field(default_factory=dict)
    zone: str = "example."
    mode: str = "normal"  # normal | drop | servfail | refused
    delay: float = 0.0
    spoof: bool = False
    udp_limit: int | None = None  # truncate UDP replies above this size (None: the client's limit)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.udp, self.tcp = bind(self.host, self.port)
        self.port = self.udp.getsockname()[1]
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self._stop = False
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def add(self, name: str, rtype: str, *rdata: Any, ttl: int = 300) -> None:
        cls = {"A": A, "AAAA": AAAA, "TXT": TXT}[rtype]
        self.answers.setdefault((name.lower().rstrip(".") + ".", rtype), []).extend(
            RR(name, getattr(QTYPE, rtype), rdata=cls(d), ttl=ttl) for d in rdata)

    def reply_for(self, request: DNSRecord) -> DNSRecord:
        reply = request.reply()
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if self.mode == "refused":
            reply.header.rcode = RCODE.REFUSED
            return reply
        q = request.q
        name = str(q.qname).lower()
        records = self.answers.get((name, QTYPE[q.qtype]))
        if records:
            for rr in records:
                reply.add_answer(rr)
            return reply
        soa = RR(self.zone, QTYPE.SOA, ttl=120, rdata=SOA("ns." + self.zone, "admin." + self.zone,
                                                        (1, 3600, 600, 86400, 30)))
        if not any(n == name for n, _ in self.answers):
            reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(soa)
        return reply

    def _answer(self, data: bytes, transport: str, source: Any) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None
        self.seen.append(Seen(transport, request.header.id, str(request.q.qname).lower(), QTYPE[request.q.qtype],
                              source))
        if self.mode == "drop":
            return None
        if self.delay:
            time.sleep(self.delay)
        return self.reply_for(request).pack()

    def _serve_udp(self) -> None:
        while not self._stop:
            try:
                data, addr = self.udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            out = self._answer(data, "udp", addr)
            if out is None:
                continue
            if self.spoof:
                wrong_id = bytes([data[0] ^ 0x55, data[1]]) + spoofed(out)[2:]
                self.udp.sendto(wrong_id, addr)
                other_q = DNSRecord.parse(out)
                other_q.q.qname = "evil.example."
                self.udp.sendto(data[:2] + other_q.pack()[2:], addr)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:  # right id, wrong source port
                    other.sendto(data[:2] + spoofed(out)[2:], addr)
                time.sleep(0.05)
            limit = self.udp_limit or udp_limit_of(data)
            if len(out) > limit:
                rec = DNSRecord.parse(out)
                rec.rr, rec.auth, rec.ar = [], [], []
                rec.header.tc = 1
                out = rec.pack()
            with contextlib.suppress(OSError):
                self.udp.sendto(out, addr)

    def _serve_tcp(self) -> None:
        while not self._stop:
            try:
                conn, addr = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._tcp_conn, args=(conn, addr), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket, addr: Any) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    head = _recv_exact(conn, 2)
                    if not head:
                        return
                    data = _recv_exact(conn, struct.unpack(">H", head)[0])
                    out = self._answer(data, "tcp", addr)
                    if out is None:
                        return
                    conn.sendall(struct.pack(">H", len(out)) + out)
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


def spoofed(reply: bytes) -> bytes:
    """The same reply with every A record pointing at 6.6.6.6."""
    rec = DNSRecord.parse(reply)
    for rr in rec.rr:
        if rr.rtype == QTYPE.A:
            rr.rdata = A("6.6.6.6")
    return rec.pack()


def udp_limit_of(query: bytes) -> int:
    rec = DNSRecord.parse(query)
    opt = [r for r in rec.ar if r.rtype == QTYPE.OPT]
    return max(512, opt[0].rclass) if opt else 512


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


# --- a stub in this process --------------------------------------------------------------------------------


class StubThread:
    """A StubServer on 127.0.0.1 with its own event loop in a thread (as in the DNS worker)."""

    def __init__(self, upstreams: list[str], vips: dict[str, Any] | None = VIP_MAP, *, cache: bool = True,
                 attempt_timeout: float = 0.3, deadline: float = 2.0, max_pending: int = 2048) -> None:
        self.loop = asyncio.new_event_loop()
        ups = [Upstream(h, int(p)) for h, p in (u.rsplit(":", 1) for u in upstreams)]
        self.cache = Cache() if cache else None
        self.forwarder = Forwarder(ups, cache=self.cache, attempt_timeout=attempt_timeout, deadline=deadline)
        udp, tcp = bind("127.0.0.1", 0)
        self.server = StubServer(udp, tcp, Zone.from_map(vips), self.forwarder, max_pending=max_pending)
        self.port = self.server.address[1]
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(5)

    def call(self, fn: Any, *args: Any) -> Any:
        async def wrapped() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.server.udp.close()
        self.server.tcp.close()


@contextlib.contextmanager
def stub(upstreams: list[str], **kw: Any) -> Iterator[StubThread]:
    s = StubThread(upstreams, **kw)
    try:
        yield s
    finally:
        s.close()


# --- client ------------------------------------------------------------------------------------------------


def ask(port: int, name: str, qtype: str = "A", *, tcp: bool = False, host: str = "127.0.0.1",
        timeout: float = 3.0, edns: int | None = None, qid: int | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    if qid is not None:
        q.header.id = qid
    raw = q.send(host, port, tcp=tcp, timeout=timeout)
    reply = DNSRecord.parse(raw)
    assert reply.header.id == q.header.id
    return reply


def udp_exchange(port: int, data: bytes, timeout: float = 1.0, host: str = "127.0.0.1") -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (host, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]
