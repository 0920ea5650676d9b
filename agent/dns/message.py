"""The few facts about a DNS message the stub needs, read by hand (no dnslib on these paths): the header, the
one question, the EDNS(0) OPT record of a query, and the TTLs of a reply's records.

    q = parse_query(data)          # Query, or None for what is not a plain query (garbage, a response)
    q.key                          # what a cached reply depends on: the question (lowercase), RD, CD, EDNS, DO
    facts = reply_facts(reply)     # rcode, TC, the question's end, every TTL's offset, the cacheable TTL

Every reader checks bounds and raises `Malformed` (a ValueError) on anything it cannot follow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

QR, OPCODE, AA, TC, RD, RA, AD, CD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
TYPE_A, TYPE_SOA, TYPE_OPT = 1, 6, 41
UDP_MIN = 512
_HEADER = struct.Struct(">HHHHHH")
_RR = struct.Struct(">HHIH")


class Malformed(ValueError):
    pass


def skip_name(data: bytes, off: int) -> int:
    """The offset just after the (possibly compressed) name at `off`."""
    n = len(data)
    while True:
        if off >= n:
            raise Malformed("name runs past the end")
        length = data[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            if off + 2 > n:
                raise Malformed("truncated compression pointer")
            return off + 2
        if length & 0xC0:
            raise Malformed("reserved label type")
        off += length + 1


def question_end(data: bytes) -> int:
    """End of the first question (uncompressed name, type, class), which starts at offset 12."""
    off = 12
    n = len(data)
    while True:
        if off >= n:
            raise Malformed("question runs past the end")
        length = data[off]
        if length == 0:
            break
        if length > 63:
            raise Malformed("compressed or reserved label in a question")
        off += length + 1
    end = off + 5
    if end > n or end - 16 > 255:
        raise Malformed("question too long or truncated")
    return end


@dataclass(frozen=True, slots=True)
class Query:
    qid: int
    flags: int
    qend: int  # offset just after the question
    question: bytes  # name + type + class, as sent
    qtype: int
    has_opt: bool
    udp_size: int  # what the client can take over UDP: 512, or its EDNS size
    do: bool
    opt_options: bool  # the OPT record carries options (cookies, ECS, ...): the reply is the client's own

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE) >> 11

    @property
    def name(self) -> bytes:
        return self.question[:-4].lower()

    @property
    def key(self) -> bytes:
        """A cached reply answers queries with the same key (the id and the name's case do not matter)."""
        bits = (self.flags & (RD | CD)) | (1 if self.has_opt else 0) | (2 if self.do else 0)
        return self.question.lower() + bits.to_bytes(2, "big")


def parse_query(data: bytes) -> Query | None:
    """A query with exactly one question (any opcode); None for a response, or anything unparseable."""
    data = bytes(data)
    if len(data) < 17:
        return None
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & QR or qd != 1:
        return None
    try:
        qend = question_end(data)
        has_opt, size, do, options = False, UDP_MIN, False, False
        off = qend
        for _ in range(an + ns + ar):  # a query normally has only the OPT record (and maybe a TSIG)
            start = off
            off = skip_name(data, off)
            if off + 10 > len(data):
                raise Malformed("record header truncated")
            rtype, rclass, ttl, rdlen = _RR.unpack_from(data, off)
            off += 10 + rdlen
            if off > len(data):
                raise Malformed("record data truncated")
            if rtype == TYPE_OPT and not has_opt and data[start] == 0:
                has_opt, size, do, options = True, max(rclass, UDP_MIN), bool(ttl & 0x8000), rdlen > 0
    except Malformed:
        return None
    question = data[12:qend]
    return Query(qid, flags, qend, question, int.from_bytes(question[-4:-2], "big"), has_opt, size, do, options)


@dataclass(frozen=True, slots=True)
class ReplyFacts:
    rcode: int
    truncated: bool
    qend: int
    ttl_offsets: tuple[int, ...]  # every record's TTL field except OPT's
    ttl: int | None  # how long the reply may be cached (None: not at all)


def reply_facts(data: bytes, *, max_ttl: int, max_negative_ttl: int) -> ReplyFacts:
    """What the cache needs from a reply: positive answers live for their smallest TTL; NXDOMAIN and NODATA
    for their SOA's min(TTL, MINIMUM) (RFC 2308), and not at all without an SOA. Both bounded."""
    if len(data) < 12:
        raise Malformed("shorter than a header")
    _qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if qd != 1:
        raise Malformed("not one question")
    qend = question_end(data)
    rcode = flags & 0x000F
    offsets: list[int] = []
    ttls: list[int] = []
    soa_negative: int | None = None
    off = qend
    for index in range(an + ns + ar):
        off = skip_name(data, off)
        if off + 10 > len(data):
            raise Malformed("record header truncated")
        rtype, _rclass, ttl, rdlen = _RR.unpack_from(data, off)
        end = off + 10 + rdlen
        if end > len(data):
            raise Malformed("record data truncated")
        if rtype != TYPE_OPT:
            offsets.append(off + 4)
            ttls.append(ttl & 0x7FFFFFFF)
            if rtype == TYPE_SOA and an <= index < an + ns and rdlen >= 22:
                minimum = int.from_bytes(data[end - 4:end], "big")
                soa_negative = min(ttl, minimum)
        off = end
    if off != len(data):
        raise Malformed("trailing bytes")
    truncated = bool(flags & TC)
    ttl_out: int | None = None
    if not truncated and rcode in (NOERROR, NXDOMAIN):
        if rcode == NOERROR and an > 0:
            # Every record's TTL counts down while cached: the smallest bounds the whole reply.
            ttl_out = min(min(ttls), max_ttl)
        elif soa_negative is not None:
            ttl_out = min(soa_negative, max_negative_ttl)
    if ttl_out is not None and ttl_out <= 0:
        ttl_out = None
    return ReplyFacts(rcode, truncated, qend, tuple(offsets), ttl_out)


def error_reply(data: bytes, query: Query | None, rcode: int) -> bytes | None:
    """A reply with `rcode`, the question echoed (when there is one), RD and CD copied, RA set; None when
    `data` has no header to answer to."""
    if len(data) < 12:
        return None
    flags = QR | RA | (int.from_bytes(data[2:4], "big") & (OPCODE | RD | CD)) | rcode
    if query is None:
        return data[:2] + struct.pack(">HHHHH", flags, 0, 0, 0, 0)
    return data[:2] + struct.pack(">HHHHH", flags, 1, 0, 0, 0) + query.question


def truncated_reply(reply: bytes, qend: int) -> bytes:
    """`reply` cut to its header and question, TC set: the client asks again over TCP."""
    flags = int.from_bytes(reply[2:4], "big") | TC
    return reply[:2] + struct.pack(">HHHHH", flags, 1, 0, 0, 0) + reply[12:qend]
