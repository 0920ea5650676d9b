"""The stub's `.mesh` zone: one mesh's names and VIPs, every reply precomputed, so answering is joining bytes.

The same answers as the control plane's authoritative server (controlplane/dns/wire.py, which the agent may
not import; this is the same approach, kept small):
- A (and ANY) for a known name: its VIP, AA set, RD and CD copied;
- another type for a known name, or an empty non-terminal (`svc.8080.mesh` when `a.svc.8080.mesh` exists):
  NOERROR, no answer, the zone's SOA in the authority section (NODATA, RFC 2308), so AAAA is "no such record";
- SOA at the apex; an unknown name in the zone: NXDOMAIN with the SOA; a class other than IN or a zone
  transfer: REFUSED;
- until the first VIP map arrives: SERVFAIL (never a negative answer a client would cache);
- EDNS(0): an OPT in the reply (size 1232, DO copied); a reply larger than the client takes over UDP: the
  header and question with TC set.

`Zone.from_map(vip_map)` builds a generation from the control plane's VIP map
(`{"vips": {service: vip}, "names": {"backend.mesh": "backend"}, "version": ...}`); a new map builds a new
generation that replaces the old one whole (readers never see half of one).
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .message import AA, CD, NOTIMP, NXDOMAIN, QR, RD, REFUSED, SERVFAIL, TC, TYPE_A, TYPE_SOA, Query

QTYPE_ANY, CLASS_IN = 255, 1
EDNS_SIZE = 1232
UDP_MIN = 512
TTL = 60
NEGATIVE_TTL = 5

_RR = struct.Struct(">HHIH")
_QTC = {t: struct.pack(">HH", t, CLASS_IN) for t in (TYPE_A, TYPE_SOA, QTYPE_ANY)}
_OPT = b"\x00\x00\x29" + EDNS_SIZE.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
_OPT_DO = b"\x00\x00\x29" + EDNS_SIZE.to_bytes(2, "big") + b"\x00\x00\x80\x00\x00\x00"


def encode_name(name: str) -> bytes:
    labels = [lab for lab in name.lower().rstrip(".").split(".") if lab]
    return b"".join(bytes([len(lab)]) + lab.encode("ascii") for lab in labels) + b"\x00"


@dataclass(frozen=True, slots=True)
class Reply:
    flags: int
    counts: bytes  # ANCOUNT, NSCOUNT
    tail: bytes  # the records after the question (pointers into the echoed question)


def records_from_map(vip_map: Mapping[str, Any]) -> dict[str, str]:
    """DNS name -> VIP from the control plane's VIP map of one mesh."""
    vips = vip_map.get("vips") or {}
    names = vip_map.get("names") or {}
    return {str(name).lower(): str(vips[svc]) for name, svc in names.items() if svc in vips}


class Zone:
    def __init__(self, records: Mapping[str, str] | None, domain: str = "mesh", ttl: int = TTL,
                 version: str = "") -> None:
        self.domain = domain.lower().strip(".")
        self.zone = encode_name(self.domain)
        self.loaded = records is not None
        self.records = dict(records or {})
        self.version = version
        self.ttl = ttl
        self.neg_ttl = min(NEGATIVE_TTL, ttl)
        self.serial = int(time.time()) & 0xFFFFFFFF
        self.refused = Reply(QR | REFUSED, b"\x00\x00\x00\x00", b"")
        self.servfail = Reply(QR | SERVFAIL, b"\x00\x00\x00\x00", b"")
        self._soa: dict[int, bytes] = {}
        self._nx: dict[int, Reply] = {}
        self.names: dict[bytes, tuple[dict[bytes, Reply], Reply]] = {}
        for name, ip in sorted(self.records.items()):
            wire = encode_name(name)
            if not wire.endswith(self.zone) or wire == self.zone or len(wire) > 255:
                continue
            try:
                packed = ipaddress.IPv4Address(ip).packed
            except ValueError:
                continue
            a = Reply(QR | AA, b"\x00\x01\x00\x00", b"\xc0\x0c" + _RR.pack(TYPE_A, CLASS_IN, ttl, 4) + packed)
            self.names[wire] = ({_QTC[TYPE_A]: a, _QTC[QTYPE_ANY]: a}, self._nodata(wire))
            parent = wire[wire[0] + 1:]
            while parent != self.zone and parent not in self.names:  # empty non-terminals exist
                self.names[parent] = ({}, self._nodata(parent))
                parent = parent[parent[0] + 1:]
        apex = Reply(QR | AA, b"\x00\x01\x00\x00", self._soa_rr(12))
        self.names[self.zone] = ({_QTC[TYPE_SOA]: apex}, self._nodata(self.zone))

    @classmethod
    def from_map(cls, vip_map: Mapping[str, Any] | None, domain: str = "mesh", ttl: int = TTL) -> Zone:
        if vip_map is None:
            return cls(None, domain, ttl)
        return cls(records_from_map(vip_map), domain, ttl, str(vip_map.get("version", "")))

    # --- precomputed pieces ----------------------------------------------------------------------------

    def _soa_rr(self, zone_offset: int) -> bytes:
        rr = self._soa.get(zone_offset)
        if rr is None:
            ptr = (0xC000 | zone_offset).to_bytes(2, "big")
            rdata = (b"\x02ns" + ptr + b"\x0ahostmaster" + ptr
                     + struct.pack(">IIIII", self.serial, 3600, 600, 86400, self.neg_ttl))
            rr = self._soa[zone_offset] = ptr + _RR.pack(TYPE_SOA, CLASS_IN, self.neg_ttl, len(rdata)) + rdata
        return rr

    def _nodata(self, wire: bytes) -> Reply:
        return Reply(QR | AA, b"\x00\x00\x00\x01", self._soa_rr(12 + len(wire) - len(self.zone)))

    def _nxdomain(self, wire: bytes) -> Reply:
        off = 12 + len(wire) - len(self.zone)
        r = self._nx.get(off)
        if r is None:
            r = self._nx[off] = Reply(QR | AA | NXDOMAIN, b"\x00\x00\x00\x01", self._soa_rr(off))
        return r

    def owns(self, wire: bytes) -> bool:
        """Is this (lowercase, uncompressed) name in the zone? The suffix must start on a label boundary."""
        if not wire.endswith(self.zone):
            return False
        i, end = 0, len(wire) - len(self.zone)
        while i < end:
            i += wire[i] + 1
        return i == end

    def lookup(self, wire: bytes, qtc: bytes) -> Reply:
        if not self.loaded:
            return self.servfail
        if qtc[2:] != b"\x00\x01" or qtc[:2] in (b"\x00\xfb", b"\x00\xfc"):  # not IN, or IXFR/AXFR
            return self.refused
        entry = self.names.get(wire)
        if entry is not None:
            return entry[0].get(qtc, entry[1])
        return self._nxdomain(wire)

    # --- answering -------------------------------------------------------------------------------------

    def answer(self, data: bytes, query: Query, udp: bool) -> bytes:
        """The reply to a query for a name in the zone (`query` is `parse_query(data)`)."""
        qflags = query.flags & (RD | CD)
        opt = (_OPT_DO if query.do else _OPT) if query.has_opt else b""
        arcount = b"\x00\x01" if opt else b"\x00\x00"
        if query.opcode != 0:
            return b"".join((data[:2], (QR | (query.flags & 0x7800) | qflags | NOTIMP).to_bytes(2, "big"),
                             b"\x00\x01\x00\x00\x00\x00", arcount, query.question, opt))
        r = self.lookup(query.name, query.question[-4:])
        flags = r.flags | qflags
        out = b"".join((data[:2], flags.to_bytes(2, "big"), b"\x00\x01", r.counts, arcount, query.question,
                        r.tail, opt))
        if udp and len(out) > min(query.udp_size, EDNS_SIZE):
            return b"".join((data[:2], (flags | TC).to_bytes(2, "big"), b"\x00\x01\x00\x00\x00\x00", arcount,
                             query.question, opt))
        return out
