"""VIP ranges: which addresses of a CIDR may be handed out, and the next free one after a cursor."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection


class VipRangeError(RuntimeError):
    """A VIP range setting that cannot work (kuma-cp refuses to start with it)."""


class VipRange:
    """An IPv4 CIDR without its network and broadcast addresses (240.0.0.0/4 ends in 255.255.255.255)."""

    def __init__(self, cidr: str, setting: str = "KUMA_DNS_SERVER_CIDR") -> None:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise VipRangeError(f"{setting}={cidr!r} is not a CIDR such as 127.240.0.0/12") from None
        if net.version != 4:
            raise VipRangeError(f"{setting}={cidr!r}: VIP ranges are IPv4 (DNS answers A records)")
        self.cidr = str(net)
        self.setting = setting
        first, last = int(net.network_address), int(net.broadcast_address)
        if net.num_addresses > 2:
            first, last = first + 1, last - 1
        self.first, self.last = first, last

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, int) and self.first <= ip <= self.last

    def overlaps(self, other: VipRange) -> bool:
        return self.first <= other.last and other.first <= self.last

    def next_free(self, used: Collection[int], cursor: int | None) -> int | None:
        """The first address after `cursor` (wrapping around) not in `used`; None when all are taken.
        `used` holds only addresses of this range."""
        if len(used) >= self.size:
            return None
        start = cursor + 1 if cursor is not None and self.first <= cursor < self.last else self.first
        for ip in range(start, self.last + 1):
            if ip not in used:
                return ip
        for ip in range(self.first, start):
            if ip not in used:
                return ip
        return None  # pragma: no cover - len(used) < size guarantees a free address

    def __repr__(self) -> str:
        return f"VipRange({self.cidr!r})"


def ip_to_int(text: str | None) -> int | None:
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return int(addr) if addr.version == 4 else None


def int_to_ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def check_ranges(primary: VipRange, tproxy: VipRange | None) -> None:
    if tproxy is not None and primary.overlaps(tproxy):
        raise VipRangeError(f"{primary.setting}={primary.cidr} and {tproxy.setting}={tproxy.cidr} overlap: "
                            "give the transparent-proxy VIPs a range of their own")
