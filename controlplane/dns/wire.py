"""The `.mesh` zone on the wire: replies precomputed per name, so answering is slicing and joining bytes.

`DnsTable.answer(packet)` gives the reply bytes for one query, or None for a packet to ignore:
- A (and ANY) for a known name: its VIP; AA set, RD and CD copied, TTL from the config;
- another type for a known name, or an empty non-terminal (`svc.8080.mesh` when `a.svc.8080.mesh` exists):
  NOERROR with no answer and the zone's SOA in the authority section (RFC 2308 NODATA);
- SOA at the apex: the SOA;
- an unknown name in the zone: NXDOMAIN with the SOA; a name outside it, a class other than IN, or a zone
  transfer: REFUSED;
- EDNS(0): an OPT record in the reply (our size 1232, the DO bit copied); a version other than 0: BADVERS;
- a reply larger than the client can take over UDP (512 bytes, or its EDNS size up to 1232): the header and
  question with TC set, so the client retries over TCP (answers here are small; the path exists anyway);
- another opcode: NOTIMP; not exactly one question: FORMERR; a packet that is not a DNS query (too short,
  unparseable, or a response): no reply at all.

The common case (a plain query, with or without an OPT record) is handled by hand; anything unusual goes
through dnslib's parser and then the same reply builder, so both paths give the same answers.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass

from dnslib import DNSRecord

QTYPE_A = 1
QTYPE_SOA = 6
QTYPE_OPT = 41
QTYPE_IXFR = 251
QTYPE_AXFR = 252
QTYPE_ANY = 255
CLASS_IN = 1

QR, AA, TC, RD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0010
NOERROR, FORMERR, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 3, 4, 5
BADVERS_EXT = 1  # extended rcode 16 = (1 << 4) | 0

UDP_MIN = 512
EDNS_SIZE = 1232  # what we advertise and the most we send over UDP (the DNS flag day 2020 value)
TCP_MAX = 65535
NEGATIVE_TTL = 5  # SOA TTL and minimum: how long a resolver may cache "no such name"
CACHE_MAX = 4096  # precomputed UDP replies by query bytes (less the id); cleared when full

_RR = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_QTC_IN = {qtype: struct.pack(">HH", qtype, CLASS_IN) for qtype in (QTYPE_A, QTYPE_SOA, QTYPE_ANY)}
_OPT = b"\x00\x00\x29" + EDNS_SIZE.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
_OPT_DO = b"\x00\x00\x29" + EDNS_SIZE.to_bytes(2, "big") + b"\x00\x00\x80\x00\x00\x00"
_OPT_BADVERS = b"\x00\x00\x29" + EDNS_SIZE.to_bytes(2, "big") + bytes([BADVERS_EXT]) + b"\x00\x00\x00\x00\x00"


def encode_name(name: str) -> bytes:
    """`backend.mesh` -> b'\\x07backend\\x04mesh\\x00' (lowercase; the name must be valid)."""
    labels = [lab for lab in name.lower().rstrip(".").split(".") if lab]
    return b"".join(bytes([len(lab)]) + lab.encode("ascii") for lab in labels) + b"\x00"


@dataclass(frozen=True, slots=True)
class Reply:
    """Everything of a reply after the question, for one (name, type): flags (QR, AA, rcode), the
    answer/authority counts packed, and the records (compression pointers into the echoed question)."""

    flags: int
    counts: bytes  # ANCOUNT, NSCOUNT
    tail: bytes


class DnsTable:
    """One immutable generation of the zone: every name's replies, built once when the VIP map changes."""

    def __init__(self, records: Mapping[str, str], domain: str = "mesh", ttl: int = 60,
                 serial: int | None = None) -> None:
        self.domain = domain.lower().strip(".")
        self.zone = encode_name(self.domain)
        self.ttl = ttl
        self.neg_ttl = min(NEGATIVE_TTL, ttl)
        self.serial = serial if serial is not None else int(time.time()) & 0xFFFFFFFF
        self.records = dict(records)
        self.refused = Reply(QR | REFUSED, b"\x00\x00\x00\x00", b"")
        self._soa: dict[int, bytes] = {}
        self._nx: dict[int, Reply] = {}
        # wire name (lowercase) -> (replies by QTYPE+QCLASS, reply for every other type)
        self.names: dict[bytes, tuple[dict[bytes, Reply], Reply]] = {}
        for name, ip in sorted(self.records.items()):
            wire = encode_name(name)
            if not wire.endswith(self.zone) or wire == self.zone:
                continue
            answer = Reply(QR | AA, b"\x00\x01\x00\x00", b"\xc0\x0c" + _RR.pack(QTYPE_A, CLASS_IN, ttl, 4)
                           + ipaddress.IPv4Address(ip).packed)
            self.names[wire] = ({_QTC_IN[QTYPE_A]: answer, _QTC_IN[QTYPE_ANY]: answer}, self._nodata(wire))
            # Empty non-terminals: names between this one and the zone exist (NODATA, never NXDOMAIN).
            parent = wire[wire[0] + 1:]
            while parent != self.zone and parent not in self.names:
                self.names[parent] = ({}, self._nodata(parent))
                parent = parent[parent[0] + 1:]
        apex_soa = Reply(QR | AA, b"\x00\x01\x00\x00", self._soa_rr(12))
        self.names[self.zone] = ({_QTC_IN[QTYPE_SOA]: apex_soa}, self._nodata(self.zone))
        self.cache: dict[bytes, bytes] = {}

    # --- precomputed pieces --------------------------------------------------------------------------------

    def _soa_rr(self, zone_offset: int) -> bytes:
        """The zone's SOA record, its names as pointers to the zone inside the echoed question."""
        rr = self._soa.get(zone_offset)
        if rr is None:
            ptr = (0xC000 | zone_offset).to_bytes(2, "big")
            rdata = (b"\x02ns" + ptr + b"\x0ahostmaster" + ptr
                     + struct.pack(">IIIII", self.serial, 3600, 600, 86400, self.neg_ttl))
            rr = self._soa[zone_offset] = ptr + _RR.pack(QTYPE_SOA, CLASS_IN, self.neg_ttl, len(rdata)) + rdata
        return rr

    def _zone_offset(self, wire: bytes) -> int:
        return 12 + len(wire) - len(self.zone)

    def _nodata(self, wire: bytes) -> Reply:
        return Reply(QR | AA, b"\x00\x00\x00\x01", self._soa_rr(self._zone_offset(wire)))

    def _nxdomain(self, wire: bytes) -> Reply:
        off = self._zone_offset(wire)
        r = self._nx.get(off)
        if r is None:
            r = self._nx[off] = Reply(QR | AA | NXDOMAIN, b"\x00\x00\x00\x01", self._soa_rr(off))
        return r

    def _in_zone(self, wire: bytes) -> bool:
        if not wire.endswith(self.zone):
            return False
        # The suffix must start on a label boundary.
        i, end = 0, len(wire) - len(self.zone)
        while i < end:
            i += wire[i] + 1
        return i == end

    def lookup(self, wire: bytes, qtc: bytes) -> Reply:
        """The reply for a (lowercase wire name, QTYPE+QCLASS)."""
        if qtc[2:] != b"\x00\x01" or qtc[:2] in (b"\x00\xfb", b"\x00\xfc"):  # not IN, or IXFR/AXFR
            return self.refused
        entry = self.names.get(wire)
        if entry is not None:
            return entry[0].get(qtc, entry[1])
        return self._nxdomain(wire) if self._in_zone(wire) else self.refused

    # --- answering -----------------------------------------------------------------------------------------

    def answer_udp(self, data: bytes) -> bytes | None:
        """A UDP reply, from the cache of earlier identical queries when possible."""
        cached = self.cache.get(data[2:])
        if cached is not None:
            return data[:2] + cached
        reply = self.answer(data, udp=True)
        if reply is not None:
            if len(self.cache) >= CACHE_MAX:
                self.cache.clear()
            self.cache[data[2:]] = reply[2:]
        return reply

    def answer(self, data: bytes, udp: bool = True) -> bytes | None:
        n = len(data)
        if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
            return self._slow(data, udp)  # a response, another opcode, or not one plain question
        i = 12
        while True:
            if i >= n:
                return self._slow(data, udp)
            length = data[i]
            if length == 0:
                break
            if length > 63:
                return self._slow(data, udp)  # a compression pointer or a reserved label type
            i += length + 1
        qend = i + 5  # after the root label, QTYPE and QCLASS
        if qend > n or qend - 16 > 255:
            return self._slow(data, udp)
        ar = data[10:12]
        if ar == b"\x00\x00":
            opt, limit = b"", UDP_MIN
        elif ar == b"\x00\x01":
            # One OPT record: root name, TYPE 41, CLASS = size, TTL = ext-rcode, version, flags; RDLENGTH.
            if (qend + 11 > n or data[qend] != 0 or data[qend + 1:qend + 3] != b"\x00\x29"
                    or data[qend + 5:qend + 7] != b"\x00\x00"
                    or qend + 11 + int.from_bytes(data[qend + 9:qend + 11], "big") != n):
                return self._slow(data, udp)
            opt = _OPT_DO if data[qend + 7] & 0x80 else _OPT
            limit = min(max(int.from_bytes(data[qend + 3:qend + 5], "big"), UDP_MIN), EDNS_SIZE)
        else:
            return self._slow(data, udp)
        r = self.lookup(data[12:qend - 4].lower(), data[qend - 4:qend])
        flags = r.flags | (((data[2] << 8) | data[3]) & (RD | CD))
        out = b"".join((data[:2], flags.to_bytes(2, "big"), b"\x00\x01", r.counts, ar, data[12:qend], r.tail, opt))
        if udp and len(out) > limit:
            return _truncated(data[:2], flags, ar, data[12:qend], opt)
        return out

    def _slow(self, data: bytes, udp: bool) -> bytes | None:
        """Anything but a plain query: parsed by dnslib; None for what is not a DNS query at all."""
        if len(data) < 12:
            return None
        try:
            rec = DNSRecord.parse(data)
        except Exception:  # dnslib raises several kinds on garbage: ignore the packet, never the server
            return None
        h = rec.header
        if h.qr:
            return None  # a response (or a reflection attempt): never answer it
        qid = data[:2]
        qflags = ((data[2] << 8) | data[3]) & (RD | CD)
        question = b""
        if len(rec.questions) == 1:
            q = rec.questions[0]
            try:
                labels = [bytes(lab) for lab in q.qname.label]
            except Exception:
                return None
            if any(not 0 < len(lab) < 64 for lab in labels) or sum(len(lab) + 1 for lab in labels) + 1 > 255:
                return None
            wire = b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\x00"
            question = wire + struct.pack(">HH", q.qtype & 0xFFFF, q.qclass & 0xFFFF)
        qd = 1 if question else 0
        opts = [rr for rr in rec.ar if rr.rtype == QTYPE_OPT]
        opt, limit = b"", UDP_MIN
        if opts:
            if (opts[0].ttl >> 16) & 0xFF:  # EDNS version other than 0
                return _header(qid, QR | qflags, qd, 0, 1) + question + _OPT_BADVERS
            opt = _OPT_DO if opts[0].ttl & 0x8000 else _OPT
            limit = min(max(opts[0].rclass, UDP_MIN), EDNS_SIZE)
        arc = 1 if opt else 0
        opcode = h.opcode
        if opcode != 0:
            return _header(qid, QR | (opcode << 11) | qflags | NOTIMP, qd, 0, arc) + question + opt
        if not question or len(rec.questions) != 1:
            return _header(qid, QR | qflags | FORMERR, 0, 0, arc) + opt
        r = self.lookup(question[:-4].lower(), question[-4:])
        flags = r.flags | qflags
        out = b"".join((qid, flags.to_bytes(2, "big"), b"\x00\x01", r.counts, arc.to_bytes(2, "big"), question,
                        r.tail, opt))
        if udp and len(out) > limit:
            return _truncated(qid, flags, arc.to_bytes(2, "big"), question, opt)
        return out


def _header(qid: bytes, flags: int, qd: int, an: int, ar: int) -> bytes:
    return qid + struct.pack(">HHHHH", flags, qd, an, 0, ar)


def _truncated(qid: bytes, flags: int, ar: bytes, question: bytes, opt: bytes) -> bytes:
    return qid + (flags | TC).to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00" + ar + question + opt
