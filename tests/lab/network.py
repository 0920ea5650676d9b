"""The lab's network: one bridge per lab on this machine, one network namespace + veth pair per host.

The bridge holds the lab subnet's .1; each host's `eth0` (the veth end inside its netns) holds .2, .3, ...
with a default route via .1. Bridging is L2, so hosts reach each other and this machine without forwarding,
NAT or firewall rules; nothing here routes anywhere outside the lab's /24.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

from .system import run

NETNS_DIR = Path("/run/netns")


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def used_networks() -> list[ipaddress.IPv4Network]:
    """Networks of every IPv4 address and route on this machine (a new lab subnet must overlap none)."""
    nets: list[ipaddress.IPv4Network] = []
    addrs = json.loads(run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in addrs:
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default" and r.get("type", "unicast") == "unicast":
            try:
                nets.append(ipaddress.IPv4Network(dst, strict=False))
            except ValueError:
                continue
    return nets


def ensure_bridge(name: str, gateway: str, prefixlen: int) -> None:
    if not link_exists(name):
        run(["ip", "link", "add", name, "type", "bridge"])
    addr = f"{gateway}/{prefixlen}"
    current = run(["ip", "-j", "-4", "addr", "show", "dev", name]).stdout
    if gateway not in current:
        run(["ip", "addr", "add", addr, "dev", name])
    run(["ip", "link", "set", name, "up"])


def add_host(netns: str, veth: str, bridge: str, address: str, prefixlen: int, gateway: str | None) -> None:
    """A netns with loopback up and `eth0` (address, default route via `gateway`), the other end on the bridge."""
    if not netns_exists(netns):
        run(["ip", "netns", "add", netns])
    if not link_exists(veth):
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
    run(["ip", "link", "set", veth, "master", bridge, "up"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    run(["ip", "-n", netns, "addr", "replace", f"{address}/{prefixlen}", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    if gateway is not None:
        run(["ip", "-n", netns, "route", "replace", "default", "via", gateway])


def remove_host(netns: str, veth: str) -> None:
    """Deleting the netns destroys `eth0` and with it the veth's other end; delete that too if it is left."""
    if netns_exists(netns):
        run(["ip", "netns", "delete", netns], check=False)
    deadline = time.monotonic() + 5
    while link_exists(veth) and time.monotonic() < deadline:
        run(["ip", "link", "delete", veth], check=False)
        time.sleep(0.05)


def remove_bridge(name: str) -> None:
    if link_exists(name):
        run(["ip", "link", "delete", name, "type", "bridge"], check=False)
