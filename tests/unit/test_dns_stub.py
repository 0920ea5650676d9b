"""The kuma-dp DNS stub over real sockets: `.mesh` from its table, everything else forwarded to a real (small,
dnslib-based) DNS server on 127.0.0.1 that the test controls: ids, spoofing, timeouts and failover, TCP
fallback, the cache's TTLs, and bad input that must neither crash nor wedge it."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord

from agent.dns.cache import MAX_NEGATIVE_TTL, MAX_TTL, Cache
from agent.dns.message import parse_query, reply_facts
from agent.dns.zone import Zone
from tests.unit.test_dns_stub_support import VIP_MAP, TestUpstream, addresses, ask, stub, udp_exchange


@pytest.fixture
def upstream() -> TestUpstream:
    up = TestUpstream()
    up.add("www.example", "A", "192.0.2.1")
    up.add("www.example", "AAAA", "2001:db8::1")
    up.add("txt.example", "TXT", "hello", "world")
    up.add("short.example", "A", "192.0.2.7", ttl=3)
    yield up
    up.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- .mesh from the table ------------------------------------------------------------------------------------


def test_mesh_names_answered_from_the_table(upstream: TestUpstream) -> None:
    with stub([upstream.address]) as s:
        r = ask(s.port, "backend.mesh")
        assert addresses(r) == ["127.240.0.1"] and r.header.aa and r.rr[0].ttl == 60
        assert addresses(ask(s.port, "db.ns.svc.5432.mesh")) == ["127.240.0.3"]  # Kuma's `_` -> `.` name
        assert addresses(ask(s.port, "db_ns_svc_5432.mesh")) == ["127.240.0.3"]
        mixed = ask(s.port, "BaCkEnD.MeSh")
        assert addresses(mixed) == ["127.240.0.1"] and str(mixed.q.qname) == "BaCkEnD.MeSh."  # case echoed
        aaaa = ask(s.port, "backend.mesh", "AAAA")
        assert aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr and aaaa.auth[0].rtype == QTYPE.SOA
        nx = ask(s.port, "nope.mesh")
        assert nx.header.rcode == RCODE.NXDOMAIN and nx.auth[0].rtype == QTYPE.SOA and nx.header.aa
        ent = ask(s.port, "svc.5432.mesh")  # between db.ns.svc.5432.mesh and the zone: exists, no data
        assert ent.header.rcode == RCODE.NOERROR and not ent.rr
        assert ask(s.port, "mesh", "SOA").rr[0].rtype == QTYPE.SOA
        assert addresses(ask(s.port, "web.mesh", tcp=True)) == ["127.240.0.2"]
        edns = ask(s.port, "web.mesh", edns=4096)
        assert addresses(edns) == ["127.240.0.2"] and edns.ar[0].rtype == QTYPE.OPT
    assert not upstream.seen  # never forwarded


def test_mesh_before_any_map_is_servfail_and_the_rest_still_forwards(upstream: TestUpstream) -> None:
    with stub([upstream.address], vips=None) as s:
        assert ask(s.port, "backend.mesh").header.rcode == RCODE.SERVFAIL  # never a cacheable "no"
        assert addresses(ask(s.port, "www.example")) == ["192.0.2.1"]
        s.call(s.server.set_zone, Zone.from_map(VIP_MAP))
        assert addresses(ask(s.port, "backend.mesh")) == ["127.240.0.1"]


def test_a_new_map_replaces_the_zone_whole(upstream: TestUpstream) -> None:
    with stub([upstream.address]) as s:
        assert addresses(ask(s.port, "backend.mesh")) == ["127.240.0.1"]  # now in the zone's reply cache
        new = {"version": "v2", "vips": {"api": "127.240.0.9"}, "names": {"api.mesh": "api"}}
        s.call(s.server.set_zone, Zone.from_map(new))
        assert ask(s.port, "backend.mesh").header.rcode == RCODE.NXDOMAIN
        assert addresses(ask(s.port, "api.mesh")) == ["127.240.0.9"]


# --- forwarding ----------------------------------------------------------------------------------------------


def test_everything_else_is_forwarded_unchanged(upstream: TestUpstream) -> None:
    with stub([upstream.address]) as s:
        assert addresses(ask(s.port, "www.example")) == ["192.0.2.1"]
        assert addresses(ask(s.port, "www.example", "AAAA")) == ["2001:db8::1"]
        txt = ask(s.port, "txt.example", "TXT")
        assert [str(rr.rdata) for rr in txt.rr] == ['"hello"', '"world"']
        nx = ask(s.port, "missing.example")
        assert nx.header.rcode == RCODE.NXDOMAIN and nx.auth[0].rtype == QTYPE.SOA
        assert addresses(ask(s.port, "www.example", tcp=True)) == ["192.0.2.1"]
    assert {seen.qtype for seen in upstream.seen} >= {"A", "AAAA", "TXT"}


def test_upstream_ids_are_random_and_the_client_gets_its_own_back(upstream: TestUpstream) -> None:
    with stub([upstream.address], cache=False) as s:
        for _ in range(20):
            assert ask(s.port, "www.example", qid=4242).header.id == 4242
    ids = [seen.qid for seen in upstream.seen]
    assert len(ids) == 20 and len(set(ids)) >= 18 and 4242 not in ids
    assert len({seen.source[1] for seen in upstream.seen}) >= 18  # and a fresh source port each time


def test_spoofed_replies_are_ignored(upstream: TestUpstream) -> None:
    upstream.spoof = True  # wrong id, then another question, then the right id from another port: all first
    with stub([upstream.address], cache=False) as s:
        for _ in range(3):
            assert addresses(ask(s.port, "www.example")) == ["192.0.2.1"]
        assert s.forwarder.stats["mismatched"] >= 6  # the other port's reply never even reaches the stub


def test_timeout_fails_over_to_the_next_upstream_and_remembers_it(upstream: TestUpstream) -> None:
    silent = TestUpstream(mode="drop")
    try:
        with stub([silent.address, upstream.address], cache=False, attempt_timeout=0.3) as s:
            started = time.monotonic()
            assert addresses(ask(s.port, "www.example")) == ["192.0.2.1"]
            assert 0.25 < time.monotonic() - started < 1.5
            assert s.forwarder.stats["timeouts"] == 1
            for _ in range(3):  # the one that answered is asked first from now on
                assert addresses(ask(s.port, "www.example")) == ["192.0.2.1"]
            assert len(silent.seen) == 1 and len(upstream.seen) == 4
    finally:
        silent.close()


def test_a_closed_port_fails_over_at_once(upstream: TestUpstream) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    with stub([closed, upstream.address], cache=False, attempt_timeout=2.0) as s:
        started = time.monotonic()
        assert addresses(ask(s.port, "www.example")) == ["192.0.2.1"]
        assert time.monotonic() - started < 1.0  # ICMP port unreachable, not a 2 s timeout
        assert s.forwarder.stats["upstream_errors"] == 1


def test_servfail_from_one_upstream_asks_the_next(upstream: TestUpstream) -> None:
    broken = TestUpstream(mode="servfail")
    try:
        with stub([broken.address, upstream.address], cache=False) as s:
            assert addresses(ask(s.port, "www.example")) == ["192.0.2.1"]
    finally:
        broken.close()


def test_every_upstream_silent_gives_servfail_before_the_client_gives_up() -> None:
    a, b = TestUpstream(mode="drop"), TestUpstream(mode="drop")
    try:
        with stub([a.address, b.address], attempt_timeout=0.2, deadline=1.0) as s:
            started = time.monotonic()
            r = ask(s.port, "www.example", timeout=5)
            assert r.header.rcode == RCODE.SERVFAIL and 0.8 < time.monotonic() - started < 2.0
            assert len(a.seen) == 2 and len(b.seen) == 2  # each asked twice, alternating
            assert addresses(ask(s.port, "backend.mesh")) == ["127.240.0.1"]  # .mesh never waits on them
    finally:
        a.close()
        b.close()


def test_no_upstream_at_all_is_servfail_not_a_loop() -> None:
    with stub([]) as s:
        assert ask(s.port, "www.example").header.rcode == RCODE.SERVFAIL


def test_truncated_udp_answer_is_fetched_over_tcp(upstream: TestUpstream) -> None:
    upstream.add("mid.example", "TXT", *["m" * 200 for _ in range(3)])  # ~700 bytes
    upstream.add("big.example", "TXT", *["b" * 200 for _ in range(10)])  # ~2.2 kB
    upstream.udp_limit = 512  # this server truncates above 512 whatever the client says
    with stub([upstream.address], cache=False) as s:
        mid = ask(s.port, "mid.example", "TXT", edns=1232)
        assert not mid.header.tc and len(mid.rr) == 3  # fits the client's 1232: the full answer over UDP
        assert [seen.transport for seen in upstream.seen] == ["udp", "tcp"]
        big = ask(s.port, "big.example", "TXT", edns=1232)
        assert big.header.tc and not big.rr  # does not fit: TC, so the client comes back over TCP ...
        full = ask(s.port, "big.example", "TXT", tcp=True)
        assert not full.header.tc and len(full.rr) == 10  # ... and the stub asks over TCP too
        assert upstream.seen[-1].transport == "tcp"
        assert s.forwarder.stats["tcp_fallback"] == 1


def test_an_upstream_reply_too_big_for_the_client_is_truncated(upstream: TestUpstream) -> None:
    upstream.add("big.example", "TXT", *["b" * 200 for _ in range(10)])
    upstream.udp_limit = 65000  # an upstream that ignores the client's 512
    with stub([upstream.address], cache=False) as s:
        r = ask(s.port, "big.example", "TXT")
        assert r.header.tc and not r.rr


# --- cache ---------------------------------------------------------------------------------------------------


def test_cache_serves_until_the_ttl_runs_out_counting_it_down(upstream: TestUpstream) -> None:
    with stub([upstream.address]) as s:
        assert s.cache is not None
        clock = Clock()
        s.cache.clock = clock
        assert ask(s.port, "short.example").rr[0].ttl == 3
        clock.now += 1
        again = ask(s.port, "SHORT.example", qid=777)
        assert again.rr[0].ttl == 2 and str(again.q.qname) == "SHORT.example." and len(upstream.seen) == 1
        clock.now += 2  # 3 s: expired
        assert ask(s.port, "short.example").rr[0].ttl == 3 and len(upstream.seen) == 2
        ask(s.port, "short.example", "A", edns=1232)  # another key (EDNS): forwarded
        assert len(upstream.seen) == 3


def test_the_udp_loop_serves_a_cached_answer_by_itself_until_its_ttl_ticks(upstream: TestUpstream) -> None:
    """After one answer from the cache, the same query (any id) is answered by the UDP loop without the
    cache, with the same bytes, until the entry's age reaches its next whole second; then the cache counts
    the TTLs down again, and at expiry the upstream is asked."""
    with stub([upstream.address]) as s:
        assert s.cache is not None
        clock = Clock()
        s.cache.clock = clock
        assert ask(s.port, "short.example").rr[0].ttl == 3  # forwarded
        clock.now += 0.5
        first = ask(s.port, "short.example", qid=1)  # from the cache, and now the loop's
        hits = s.cache.hits
        again = [ask(s.port, "short.example", qid=q) for q in (2, 3)]
        assert s.cache.hits == hits  # the loop answered both itself
        assert [r.header.id for r in again] == [2, 3]
        assert {bytes(r.pack())[2:] for r in again} == {bytes(first.pack())[2:]}
        assert [r.rr[0].ttl for r in again] == [3, 3]
        clock.now += 0.5  # one second old: the TTL counts down, so the cache is asked again
        assert ask(s.port, "short.example").rr[0].ttl == 2 and s.cache.hits == hits + 1
        assert ask(s.port, "short.example").rr[0].ttl == 2 and s.cache.hits == hits + 1
        clock.now += 0.99
        assert ask(s.port, "short.example").rr[0].ttl == 2 and s.cache.hits == hits + 1
        clock.now += 1.01  # 3 s old: expired
        assert ask(s.port, "short.example").rr[0].ttl == 3 and len(upstream.seen) == 2


def test_negative_answers_are_cached_for_the_soa_minimum(upstream: TestUpstream) -> None:
    with stub([upstream.address]) as s:
        assert s.cache is not None
        clock = Clock()
        s.cache.clock = clock
        assert ask(s.port, "gone.example").header.rcode == RCODE.NXDOMAIN
        clock.now += 29  # SOA TTL 120, MINIMUM 30: kept 30 s
        assert ask(s.port, "gone.example").header.rcode == RCODE.NXDOMAIN and len(upstream.seen) == 1
        clock.now += 2
        ask(s.port, "gone.example")
        assert len(upstream.seen) == 2
        # NODATA (the name exists, not the type) likewise
        ask(s.port, "txt.example", "MX")
        ask(s.port, "txt.example", "MX")
        assert len(upstream.seen) == 3


def test_errors_are_not_cached() -> None:
    broken = TestUpstream(mode="servfail")
    try:
        with stub([broken.address]) as s:
            for _ in range(3):
                assert ask(s.port, "www.example").header.rcode == RCODE.SERVFAIL
            assert len(broken.seen) == 3
    finally:
        broken.close()


def test_cache_is_bounded() -> None:
    cache = Cache(max_entries=3)
    for i in range(10):
        q = DNSRecord.question(f"n{i}.example")
        query = parse_query(q.pack())
        assert query is not None
        reply = q.reply()
        reply.add_answer(RR(f"n{i}.example", QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        cache.put(query, bytes(reply.pack()), 60, ())
    assert len(cache) == 3 and cache.bytes < 3 * 100
    # A SOA MINIMUM of a day is kept only MAX_NEGATIVE_TTL (300 s); a positive TTL of a week only MAX_TTL.
    nx = DNSRecord.question("x.example").reply()
    nx.header.rcode = RCODE.NXDOMAIN
    nx.add_auth(RR("example.", QTYPE.SOA, ttl=86400, rdata=SOA("ns.example.", "a.example.", (1, 1, 1, 1, 86400))))
    assert reply_facts(bytes(nx.pack()), max_ttl=MAX_TTL, max_negative_ttl=MAX_NEGATIVE_TTL).ttl == MAX_NEGATIVE_TTL
    long = DNSRecord.question("x.example").reply()
    long.add_answer(RR("x.example", QTYPE.A, rdata=A("192.0.2.1"), ttl=604800))
    assert reply_facts(bytes(long.pack()), max_ttl=MAX_TTL, max_negative_ttl=MAX_NEGATIVE_TTL).ttl == MAX_TTL
    # NXDOMAIN without an SOA: not cached at all (RFC 2308)
    bare = DNSRecord.question("x.example").reply()
    bare.header.rcode = RCODE.NXDOMAIN
    assert reply_facts(bytes(bare.pack()), max_ttl=MAX_TTL, max_negative_ttl=MAX_NEGATIVE_TTL).ttl is None


# --- bad input -----------------------------------------------------------------------------------------------


GARBAGE = [
    b"",
    b"\x00",
    b"\x12\x34",
    os.urandom(11),
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",  # one question announced, none there
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f" + b"a" * 20,  # label runs past the end
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer loop in a question
    b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + b"\x03www\x07example\x00\x00\x01\x00\x01" * 2,  # 2 qs
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x05\x03www\x07example\x00\x00\x01\x00\x01",  # ghost records
    b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x07backend\x04mesh\x00\x00\x01\x00\x01",  # a response
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 + b"\x00\x00\x01",  # truncated type
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",
]


def test_garbage_never_crashes_or_wedges_it(upstream: TestUpstream) -> None:
    with stub([upstream.address]) as s:
        for data in [*GARBAGE, *(os.urandom(n) for n in (12, 17, 40, 300, 1500, 4000) for _ in range(20))]:
            reply = udp_exchange(s.port, data, timeout=0.05)
            if reply is not None:
                assert reply[:2] == data[:2] and reply[2] & 0x80  # answers only as a reply to that id
            if data[2:3] and data[2] & 0x80:
                assert reply is None  # a response is never answered
        big = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x00\x00\x01\x00\x01" + \
            os.urandom(60000)
        udp_exchange(s.port, big, timeout=0.2)  # oversized: ignored or FORMERR, never a crash
        assert addresses(ask(s.port, "backend.mesh")) == ["127.240.0.1"]
        assert addresses(ask(s.port, "www.example")) == ["192.0.2.1"]
        assert s.server.stats["errors"] == 0
        # TCP: garbage closes the connection, the server goes on
        with socket.create_connection(("127.0.0.1", s.port), timeout=2) as c:
            c.sendall(struct.pack(">H", 5) + b"hello")
            assert c.recv(10) == b""
        with socket.create_connection(("127.0.0.1", s.port), timeout=2) as c:
            c.sendall(b"\x00")  # a length cut short, then the connection just closes
        assert addresses(ask(s.port, "web.mesh", tcp=True)) == ["127.240.0.2"]


def test_other_opcodes_are_not_implemented(upstream: TestUpstream) -> None:
    with stub([upstream.address]) as s:
        q = DNSRecord.question("www.example")
        q.header.opcode = 2  # STATUS
        reply = DNSRecord.parse(udp_exchange(s.port, q.pack()) or b"")
        assert reply.header.rcode == RCODE.NOTIMP
    assert not upstream.seen


def test_a_flood_of_forwarded_queries_is_bounded_and_mesh_still_answers() -> None:
    silent = TestUpstream(mode="drop")
    try:
        with stub([silent.address], max_pending=8, attempt_timeout=1.0, deadline=2.0) as s:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                for i in range(200):
                    c.sendto(DNSRecord.question(f"n{i}.example").pack(), ("127.0.0.1", s.port))
            time.sleep(0.2)
            assert s.server.stats["dropped"] > 100
            started = time.monotonic()
            assert addresses(ask(s.port, "backend.mesh")) == ["127.240.0.1"]
            assert time.monotonic() - started < 0.5
    finally:
        silent.close()


def test_a_retransmitted_query_is_forwarded_once(upstream: TestUpstream) -> None:
    upstream.delay = 0.3
    with stub([upstream.address], cache=False, attempt_timeout=1.0) as s:
        q = DNSRecord.question("www.example").pack()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(2)
            c.sendto(q, ("127.0.0.1", s.port))
            c.sendto(q, ("127.0.0.1", s.port))
            assert addresses(DNSRecord.parse(c.recv(2048))) == ["192.0.2.1"]
        assert len(upstream.seen) == 1 and s.server.stats["duplicates"] == 1


# --- many clients at once --------------------------------------------------------------------------------------


def test_a_burst_from_many_clients_gets_each_its_own_reply(upstream: TestUpstream) -> None:
    with stub([upstream.address]) as s:
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]
        try:
            for i, c in enumerate(clients):  # 100 queries at once, from 100 ports
                q = DNSRecord.question("backend.mesh" if i % 2 else "web.mesh")
                q.header.id = i
                c.sendto(q.pack(), ("127.0.0.1", s.port))
            for i, c in enumerate(clients):
                c.settimeout(2)
                reply = DNSRecord.parse(c.recv(2048))
                assert reply.header.id == i
                assert addresses(reply) == (["127.240.0.1"] if i % 2 else ["127.240.0.2"])
        finally:
            for c in clients:
                c.close()
