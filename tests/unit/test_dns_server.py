"""The authoritative `.mesh` server: every answer over real UDP and TCP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from dnslib import CLASS, EDNS0, OPCODE, QTYPE, RCODE, RR, SOA, A, DNSRecord, EDNSOption

from controlplane.dns import wire
from controlplane.dns.names import zone_names
from controlplane.dns.server import DnsServer
from controlplane.dns.vips import VipMap, VipView
from controlplane.dns.wire import DnsTable
from controlplane.resources import Resource
from controlplane.resources.base import Meta
from controlplane.resources.vip import VIP_ALLOCATION, VIP_ALLOCATION_NAME, VipAllocationSpec
from controlplane.store.memory import MemoryStore

RECORDS = zone_names({
    "default": {"backend": "127.240.0.1", "web_ns_svc_8080": "127.240.0.2", "Mixed": "127.240.0.3"},
    "other": {"backend": "127.240.0.9", "only-other": "127.240.0.4"},
}, "mesh")


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    s = DnsServer("127.0.0.1", 0, domain="mesh", ttl=60)
    s.set_records(RECORDS)
    await s.start()
    yield s
    await s.stop()


def udp(server: DnsServer, payload: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", server.port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def tcp(server: DnsServer, *payloads: bytes) -> list[bytes]:
    """Send every message on one connection (pipelined), read as many replies."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        s.sendall(b"".join(len(p).to_bytes(2, "big") + p for p in payloads))
        out = []
        for _ in payloads:
            size = int.from_bytes(recv_exact(s, 2), "big")
            out.append(recv_exact(s, size))
        return out


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


async def ask(server: DnsServer, q: DNSRecord, transport: str = "udp") -> DNSRecord:
    if transport == "udp":
        raw = await asyncio.to_thread(udp, server, q.pack())
        assert raw is not None, "no UDP reply"
    else:
        raw = (await asyncio.to_thread(tcp, server, q.pack()))[0]
    reply = DNSRecord.parse(raw)
    assert reply.header.id == q.header.id
    assert reply.header.qr == 1
    assert [str(x.qname) for x in reply.questions] == [str(x.qname) for x in q.questions]
    return reply


def a_records(r: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A]


def soa_in_authority(r: DNSRecord) -> bool:
    return len(r.auth) == 1 and r.auth[0].rtype == QTYPE.SOA and str(r.auth[0].rname) == "mesh."


TRANSPORTS = ["udp", "tcp"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_for_service_names(server: DnsServer, transport: str) -> None:
    r = await ask(server, DNSRecord.question("backend.mesh", "A"), transport)
    assert RCODE.get(r.header.rcode) == "NOERROR" and r.header.aa == 1 and r.header.ra == 0
    assert a_records(r) == ["127.240.0.1"]  # mesh "default" before "other"
    assert r.rr[0].ttl == 60 and str(r.rr[0].rname) == "backend.mesh."
    # Kuma's `_` -> `.` variant, and the exact name.
    assert a_records(await ask(server, DNSRecord.question("web.ns.svc.8080.mesh"), transport)) == ["127.240.0.2"]
    assert a_records(await ask(server, DNSRecord.question("web_ns_svc_8080.mesh"), transport)) == ["127.240.0.2"]
    # A service of another mesh only.
    assert a_records(await ask(server, DNSRecord.question("only-other.mesh"), transport)) == ["127.240.0.4"]
    # Case-insensitive, the question echoed as asked; a trailing-dot-free and an ANY query.
    r = await ask(server, DNSRecord.question("MiXeD.MeSh"), transport)
    assert a_records(r) == ["127.240.0.3"] and str(r.q.qname) == "MiXeD.MeSh."
    assert a_records(await ask(server, DNSRecord.question("backend.mesh", "ANY"), transport)) == ["127.240.0.1"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("qtype", ["AAAA", "TXT", "MX", "SRV", "NS", "CNAME"])
async def test_other_types_of_an_existing_name_are_noerror_empty(server: DnsServer, transport: str,
                                                                 qtype: str) -> None:
    r = await ask(server, DNSRecord.question("backend.mesh", qtype), transport)
    assert RCODE.get(r.header.rcode) == "NOERROR" and r.header.aa == 1
    assert r.rr == [] and soa_in_authority(r)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unknown_names_in_the_zone_are_nxdomain_with_soa(server: DnsServer, transport: str) -> None:
    for name in ("nope.mesh", "a.b.backend.mesh", "x.mesh"):
        r = await ask(server, DNSRecord.question(name, "A"), transport)
        assert RCODE.get(r.header.rcode) == "NXDOMAIN" and r.header.aa == 1, name
        assert r.rr == [] and soa_in_authority(r), name
        soa = r.auth[0].rdata
        assert str(soa.mname) == "ns.mesh." and str(soa.rname) == "hostmaster.mesh." and soa.times[-1] == 5
    # Empty non-terminals of `web.ns.svc.8080.mesh` exist: NODATA, never NXDOMAIN (RFC 8020).
    for name in ("ns.svc.8080.mesh", "svc.8080.mesh", "8080.mesh"):
        r = await ask(server, DNSRecord.question(name, "A"), transport)
        assert RCODE.get(r.header.rcode) == "NOERROR" and r.rr == [] and soa_in_authority(r), name


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_apex(server: DnsServer, transport: str) -> None:
    r = await ask(server, DNSRecord.question("mesh", "SOA"), transport)
    assert RCODE.get(r.header.rcode) == "NOERROR" and len(r.rr) == 1 and r.rr[0].rtype == QTYPE.SOA
    r = await ask(server, DNSRecord.question("mesh", "A"), transport)
    assert RCODE.get(r.header.rcode) == "NOERROR" and r.rr == [] and soa_in_authority(r)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_outside_the_zone_is_refused(server: DnsServer, transport: str) -> None:
    for name, qtype in (("example.com", "A"), ("backend.mesh.example.com", "A"), ("notmesh", "A"),
                        ("xmesh", "A"), (".", "NS"), ("1.0.240.127.in-addr.arpa", "PTR")):
        r = await ask(server, DNSRecord.question(name, qtype), transport)
        assert RCODE.get(r.header.rcode) == "REFUSED" and r.header.aa == 0, name
        assert r.rr == [] and r.auth == []
    # Other classes, and zone transfers, are refused too.
    r = await ask(server, DNSRecord.question("backend.mesh", "A", "CH"), transport)
    assert RCODE.get(r.header.rcode) == "REFUSED"
    assert CLASS.get(r.q.qclass) == "CH"
    r = await ask(server, DNSRecord.question("mesh", "AXFR"), transport)
    assert RCODE.get(r.header.rcode) == "REFUSED"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_edns(server: DnsServer, transport: str) -> None:
    q = DNSRecord.question("backend.mesh")
    q.add_ar(EDNS0(udp_len=4096, flags="do", opts=[EDNSOption(10, os.urandom(8))]))  # DO bit + a cookie
    r = await ask(server, q, transport)
    assert a_records(r) == ["127.240.0.1"]
    opt = [rr for rr in r.ar if rr.rtype == QTYPE.OPT]
    assert len(opt) == 1 and opt[0].rclass == wire.EDNS_SIZE and opt[0].ttl & 0x8000  # DO copied
    # EDNS version 1: BADVERS (extended rcode 16).
    q = DNSRecord.question("backend.mesh")
    q.add_ar(EDNS0(version=1, udp_len=1232))
    r = await ask(server, q, transport)
    opt = [rr for rr in r.ar if rr.rtype == QTYPE.OPT]
    assert r.rr == [] and len(opt) == 1 and (opt[0].ttl >> 24) == 1 and r.header.rcode == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_rd_and_cd_are_copied_and_recursion_is_not_offered(server: DnsServer, transport: str) -> None:
    q = DNSRecord.question("backend.mesh")
    q.header.rd = 0
    q.header.cd = 1
    r = await ask(server, q, transport)
    assert r.header.rd == 0 and r.header.cd == 1 and r.header.ra == 0


async def test_truncation_over_udp_and_the_tcp_fallback(server: DnsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Answers here are one A record (always under 512 bytes); shrink the limit to exercise the path.
    monkeypatch.setattr(wire, "UDP_MIN", 40)
    monkeypatch.setattr(wire, "EDNS_SIZE", 40)
    server.set_records(RECORDS)  # a fresh table: no reply cached under the old limit
    q = DNSRecord.question("web.ns.svc.8080.mesh")
    r = await ask(server, q, "udp")
    assert r.header.tc == 1 and r.rr == [] and len(r.questions) == 1
    r = await ask(server, q, "tcp")
    assert r.header.tc == 0 and a_records(r) == ["127.240.0.2"]
    # A client's EDNS size above the limit counts only up to what we send.
    q.add_ar(EDNS0(udp_len=4096))
    assert (await ask(server, q, "udp")).header.tc == 1


async def test_opcodes_and_question_counts(server: DnsServer) -> None:
    q = DNSRecord.question("backend.mesh")
    q.header.opcode = OPCODE.NOTIFY
    r = await ask(server, q)
    assert RCODE.get(r.header.rcode) == "NOTIMP" and r.header.opcode == OPCODE.NOTIFY
    no_question = struct.pack(">HHHHHH", 0x4242, 0x0100, 0, 0, 0, 0)
    r = DNSRecord.parse(await asyncio.to_thread(udp, server, no_question) or b"")
    assert r.header.id == 0x4242 and RCODE.get(r.header.rcode) == "FORMERR"
    two = DNSRecord.question("backend.mesh")
    two.add_question(DNSRecord.question("web_ns_svc_8080.mesh").q)
    raw = await asyncio.to_thread(udp, server, two.pack())
    assert raw is not None and RCODE.get(DNSRecord.parse(raw).header.rcode) == "FORMERR"


async def test_garbage_is_ignored_and_the_server_keeps_answering(server: DnsServer) -> None:
    rnd = random.Random(7)
    q = DNSRecord.question("backend.mesh").pack()
    response = bytearray(DNSRecord.question("backend.mesh").pack())
    response[2] |= 0x80  # QR: a response, never answered (no reflection loops)
    junk = [b"", b"\x00", b"hello", os.urandom(11), bytes(response),
            q[:12] + b"\x3f" + b"a" * 10,  # a label running past the end
            q[:12] + b"\xc0\xff\x00\x01\x00\x01",  # a compression pointer to nowhere
            q[:-3],  # cut inside QTYPE/QCLASS
            ] + [rnd.randbytes(rnd.randint(1, 600)) for _ in range(300)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        for j in junk:
            s.sendto(j, ("127.0.0.1", server.port))
        # Malformed packets get no reply: the only datagrams back are for well-formed queries.
        replies = []
        while True:
            try:
                replies.append(s.recv(65535))
            except TimeoutError:
                break
    for raw in replies:
        DNSRecord.parse(raw)  # whatever was answered is a valid message
    assert not any(raw[:2] == response[:2] and raw[2] & 0x80 and raw[4:] == response[4:] for raw in replies)
    assert a_records(await ask(server, DNSRecord.question("backend.mesh"))) == ["127.240.0.1"]
    assert server.errors == 0
    # TCP: garbage closes the connection; the server goes on.
    def tcp_garbage() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as c:
            c.sendall(b"\x00\x05hello")
            closed = c.recv(100)
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as c:
            c.sendall(b"\x00\x10abc")  # a message cut short, then the client goes away
        return closed

    assert await asyncio.to_thread(tcp_garbage) == b""
    assert a_records(await ask(server, DNSRecord.question("backend.mesh"), "tcp")) == ["127.240.0.1"]


async def test_tcp_pipelines_several_queries_on_one_connection(server: DnsServer) -> None:
    qs = [DNSRecord.question(n) for n in ("backend.mesh", "nope.mesh", "example.com", "web.ns.svc.8080.mesh")]
    replies = [DNSRecord.parse(r) for r in await asyncio.to_thread(tcp, server, *(q.pack() for q in qs))]
    assert [RCODE.get(r.header.rcode) for r in replies] == ["NOERROR", "NXDOMAIN", "REFUSED", "NOERROR"]
    assert [r.header.id for r in replies] == [q.header.id for q in qs]


async def test_repeated_queries_get_their_own_id_and_a_new_table_replaces_the_cache(server: DnsServer) -> None:
    for _ in range(3):
        assert a_records(await ask(server, DNSRecord.question("backend.mesh"))) == ["127.240.0.1"]
    server.set_records({"backend.mesh": "127.240.0.77"})
    assert a_records(await ask(server, DNSRecord.question("backend.mesh"))) == ["127.240.0.77"]
    assert RCODE.get((await ask(server, DNSRecord.question("web.ns.svc.8080.mesh"))).header.rcode) == "NXDOMAIN"


async def test_server_follows_the_vip_view() -> None:
    store = MemoryStore()
    await store.start()
    spec = VipAllocationSpec.model_validate({"meshes": {"default": {"services": {"backend": {"ip": "127.240.0.5"}}}}})
    await store.create(Resource(VIP_ALLOCATION, Meta(name=VIP_ALLOCATION_NAME), spec))
    view = VipView(store)
    await view.start()
    server = DnsServer("127.0.0.1", 0, view=view)
    await server.start()
    try:
        assert a_records(await ask(server, DNSRecord.question("backend.mesh"))) == ["127.240.0.5"]
        cur = await store.get(VIP_ALLOCATION, VIP_ALLOCATION_NAME)
        spec2 = VipAllocationSpec.model_validate({"meshes": {"default": {"services": {
            "backend": {"ip": "127.240.0.5"}, "web": {"ip": "127.240.0.6"}}}}})
        await store.update(Resource(VIP_ALLOCATION, cur.meta, spec2))
        for _ in range(100):
            r = await ask(server, DNSRecord.question("web.mesh"))
            if a_records(r):
                break
            await asyncio.sleep(0.01)
        assert a_records(r) == ["127.240.0.6"]
    finally:
        await server.stop()
        await view.stop()
        await store.close()


async def test_port_in_use_is_a_clear_error(server: DnsServer) -> None:
    other = DnsServer("127.0.0.1", server.port)
    with pytest.raises(RuntimeError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*KUMA_DNS_SERVER_PORT"):
        await other.start()


# --- the table: both parsing paths agree ---------------------------------------------------------------------


def test_fast_and_dnslib_paths_give_the_same_bytes() -> None:
    table = DnsTable(RECORDS, "mesh", 60)
    queries = []
    for name in ("backend.mesh", "BACKEND.mesh", "web.ns.svc.8080.mesh", "nope.mesh", "ns.svc.8080.mesh", "mesh",
                 "example.com", "xmesh", "a.b.c.d.e.f.mesh"):
        for qtype in ("A", "AAAA", "SOA", "ANY", "TXT"):
            q = DNSRecord.question(name, qtype)
            queries.append(bytes(q.pack()))
            q.add_ar(EDNS0(udp_len=1400))
            queries.append(bytes(q.pack()))
    for raw in queries:
        assert table.answer(raw) == table._slow(raw, True) is not None, DNSRecord.parse(raw)


def test_unusual_queries_go_through_dnslib_and_get_the_same_answers() -> None:
    table = DnsTable(RECORDS, "mesh", 60)
    # An authority record in the query (as an IXFR query carries) and two additional records.
    q = DNSRecord.question("backend.mesh")
    q.add_auth(RR("mesh", QTYPE.SOA, rdata=SOA("ns.mesh", "hostmaster.mesh", (1, 2, 3, 4, 5))))
    q.add_ar(RR("extra.mesh", QTYPE.A, rdata=A("10.0.0.1")))
    q.add_ar(EDNS0(udp_len=1232))
    reply = table.answer(bytes(q.pack()))
    assert reply is not None
    r = DNSRecord.parse(reply)
    assert a_records(r) == ["127.240.0.1"] and [rr.rtype for rr in r.ar] == [QTYPE.OPT]
    # A compression pointer in the question can only point forward (nothing precedes it): not a query.
    plain = bytes(DNSRecord.question("backend.mesh").pack())
    odd = plain[:12] + b"\x07backend\xc0" + bytes([26]) + plain[-4:] + b"\x04mesh\x00"
    assert table.answer(odd) is None


def test_vip_map_to_zone_records() -> None:
    spec = VipAllocationSpec.model_validate({"meshes": {
        "b": {"services": {"svc": {"ip": "127.240.0.2"}}},
        "a": {"services": {"svc": {"ip": "127.240.0.1"}, "gone": {"ip": "127.240.0.3", "goneSince": "2024-01-01"}}},
    }})
    s = DnsServer()
    s.update_from_map(VipMap.from_spec(spec, "mesh"))
    assert s.table.records == {"svc.mesh": "127.240.0.1"}
