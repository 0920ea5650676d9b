"""The shared UDP answer loop (kuma_shared/dnsloop.py): the recvmmsg/sendmmsg loop gives the same bytes, in the
same order, to the same clients as the plain recvfrom/sendto loop and as the zone's own parser (the control
plane's DnsTable, its hand-written and dnslib paths), over real sockets on loopback.

A query that gets no reply is checked without waiting for a timeout: the loop answers one socket's datagrams in
order, so when the next reply to arrive is a later query's, the earlier one got none."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from dnslib import EDNS0, OPCODE, DNSRecord

from controlplane.dns.names import zone_names
from controlplane.dns.wire import DnsTable
from kuma_shared import dnsloop, mmsg

RECORDS = zone_names({"default": {"backend": "127.240.0.1", "web_ns_svc_8080": "127.240.0.2", "Mixed": "127.240.0.3"}},
                     "mesh")

needs_mmsg = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg are Linux only")
LOOPS = [pytest.param(True, id="batched", marks=needs_mmsg), pytest.param(False, id="plain")]


def queries() -> list[bytes]:
    """Plain and EDNS queries for names in and out of the zone, every kind of type; then the unusual ones."""
    out = []
    for name in ("backend.mesh", "BACKEND.mesh", "web.ns.svc.8080.mesh", "nope.mesh", "ns.svc.8080.mesh", "mesh",
                 "example.com", "xmesh"):
        for qtype in ("A", "AAAA", "SOA", "ANY", "TXT"):
            q = DNSRecord.question(name, qtype)
            out.append(bytes(q.pack()))
            q.add_ar(EDNS0(udp_len=1400, flags="do"))
            out.append(bytes(q.pack()))
    notify = DNSRecord.question("backend.mesh")
    notify.header.opcode = OPCODE.NOTIFY
    two = DNSRecord.question("backend.mesh")
    two.add_question(*DNSRecord.question("mixed.mesh").questions)
    badvers = DNSRecord.question("backend.mesh")
    badvers.add_ar(EDNS0(version=1))
    out += [bytes(notify.pack()), bytes(two.pack()), bytes(badvers.pack())]
    return out


def garbage() -> list[bytes]:
    """Datagrams that are not queries: no reply at all."""
    response = DNSRecord.question("backend.mesh").reply()
    return [b"\x01", b"\x00" * 11, b"\xff" * 40, bytes(response.pack())]


def with_id(raw: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + raw[2:]


class Loop:
    """serve_udp on a loopback socket in a thread, answering from a DnsTable as both servers do."""

    def __init__(self, batched: bool, host: str = "127.0.0.1", *,
                 answers: Mapping[bytes, bytes] | None = None,
                 miss: Callable[[bytes, Any], bytes | None] | None = None) -> None:
        self.table = DnsTable(RECORDS, "mesh", 60, serial=1)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.address = self.sock.getsockname()
        self.batched = batched
        self.answers = answers if answers is not None else None
        self.miss_sources: list[Any] = []
        self.errors: list[BaseException] = []
        self._miss = miss
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _on_miss(self, data: bytes, addr: Any) -> bytes | None:
        self.miss_sources.append(addr)
        if self._miss is not None:
            return self._miss(data, addr)
        return self.table.answer_udp(data)

    def start(self) -> None:
        answers = self.answers

        def current() -> Mapping[bytes, bytes]:
            return answers if answers is not None else self.table.cache

        self._thread = threading.Thread(target=dnsloop.serve_udp, args=(
            self.sock, current, self._on_miss, lambda: self._stopping, self.errors.append),
            kwargs={"batched": self.batched}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            dnsloop.wake(self.family, self.address[0], self.address[1])
            self._thread.join(5.0)
            assert not self._thread.is_alive(), "the loop did not stop on its wake-up datagram"
        self.sock.close()


@contextmanager
def running(batched: bool, host: str = "127.0.0.1", **kw: Any) -> Iterator[Loop]:
    loop = Loop(batched, host, **kw)
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()


def client(loop: Loop) -> socket.socket:
    c = socket.socket(loop.family, socket.SOCK_DGRAM)
    c.settimeout(5.0)  # a bound on a lost datagram, never reached when the loop works
    c.connect(loop.address[:2])
    return c


SENTINEL = with_id(bytes(DNSRecord.question("backend.mesh").pack()), 0xFFFF)


def expected(raw: bytes) -> bytes | None:
    """The reply the zone's own code gives (a fresh table: no cache involved)."""
    return DnsTable(RECORDS, "mesh", 60, serial=1).answer(raw, udp=True)


@pytest.mark.parametrize("batched", LOOPS)
def test_every_query_gets_the_zones_own_reply_first_from_the_miss_path_then_from_the_cache(batched: bool) -> None:
    with running(batched) as loop, client(loop) as c:
        for n, raw in enumerate(queries()):
            for attempt in range(2):  # the second one is answered from the cache by the loop itself
                q = with_id(raw, (n * 2 + attempt) & 0xFFFE)
                want = expected(q)
                assert want is not None
                c.send(q)
                assert c.recv(4096) == want, DNSRecord.parse(q)
        for raw in garbage():
            c.send(raw)
            c.send(SENTINEL)
            assert c.recv(4096) == expected(SENTINEL), f"a reply to {raw!r}"
    assert not loop.errors


def test_the_cached_reply_is_the_table_slow_paths_reply() -> None:
    """What the loop serves from its cache is byte for byte what dnslib's path of the table builds."""
    table = DnsTable(RECORDS, "mesh", 60, serial=1)
    for raw in queries()[:-3]:
        assert table.answer_udp(raw) == table._slow(raw, True)


@pytest.mark.parametrize("batched", LOOPS)
def test_a_burst_of_hits_misses_and_garbage_is_answered_in_order(batched: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued before the loop starts, so the batched loop takes them in one recvmmsg: the cached replies
    around each miss and each dropped datagram still leave in the order their queries came."""
    batches: list[int] = []
    if batched:
        recv = mmsg.Batch.recv

        def counted(self: mmsg.Batch) -> int:
            n = recv(self)
            batches.append(n)
            return n

        monkeypatch.setattr(mmsg.Batch, "recv", counted)
    loop = Loop(batched)
    primed = queries()[::2]
    for raw in primed:
        loop.table.answer_udp(raw)  # in the cache: the loop answers these itself
    burst: list[bytes] = []
    qs, junk = queries(), garbage()
    for n in range(60):
        if n % 7 == 3:
            burst.append(junk[n % len(junk)])
        else:
            burst.append(with_id(qs[n % len(qs)], n))
    with client(loop) as c:
        for raw in burst:
            c.send(raw)
        loop.start()
        try:
            want = [r for r in map(expected, burst) if r is not None]
            got = [c.recv(4096) for _ in want]
            c.send(SENTINEL)
            assert c.recv(4096) == expected(SENTINEL)  # nothing else came back before it
        finally:
            loop.stop()
    assert got == want
    assert not loop.errors
    if batched:
        assert batches[0] == len(burst)  # all of it in one recvmmsg


@pytest.mark.parametrize("batched", LOOPS)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_miss_handler_gets_the_source_address_as_recvfrom_gives_it(batched: bool, host: str) -> None:
    try:
        loop = Loop(batched, host)
    except OSError:
        pytest.skip(f"no {host} here")
    loop.start()
    try:
        with client(loop) as c:
            c.send(SENTINEL)
            assert c.recv(4096) == expected(SENTINEL)
            assert loop.miss_sources == [c.getsockname()]
    finally:
        loop.stop()


@pytest.mark.parametrize("batched", LOOPS)
def test_a_reply_longer_than_a_buffer_slot_goes_out_whole(batched: bool) -> None:
    query = bytes(DNSRecord.question("big.mesh").pack())
    big = b"\x81\x80" + b"x" * (dnsloop.UDP_RECV + 100)
    with running(batched, answers={query[2:]: big}, miss=lambda _d, _a: None) as loop, client(loop) as c:
        c.send(with_id(query, 7))
        assert c.recv(2 * dnsloop.UDP_RECV) == b"\x00\x07" + big


@pytest.mark.parametrize("batched", LOOPS)
def test_a_failing_miss_handler_is_reported_and_the_loop_goes_on(batched: bool) -> None:
    def miss(data: bytes, _addr: Any) -> bytes | None:
        if data[:2] == b"\x00\x01":
            raise ValueError("a bug in the handler")
        return expected(data)

    with running(batched, miss=miss) as loop, client(loop) as c:
        c.send(with_id(SENTINEL, 1))
        c.send(SENTINEL)
        assert c.recv(4096) == expected(SENTINEL)
    assert [str(e) for e in loop.errors] == ["a bug in the handler"]


def test_a_socket_with_a_timeout_uses_the_plain_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """recvmmsg's wait needs a blocking socket; with a timeout (non-blocking underneath) the plain loop runs."""
    used: list[str] = []
    monkeypatch.setattr(dnsloop, "serve_udp_batched", lambda *a: used.append("batched"))
    monkeypatch.setattr(dnsloop, "serve_udp_plain", lambda *a: used.append("plain"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        dnsloop.serve_udp(s, dict, lambda _d, _a: None, lambda: True, lambda _e: None)
        s.settimeout(None)
        dnsloop.serve_udp(s, dict, lambda _d, _a: None, lambda: True, lambda _e: None)
    assert used == ["plain", "batched" if mmsg.available() else "plain"]
