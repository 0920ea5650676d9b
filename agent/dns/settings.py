"""kuma-dp's DNS settings: defaults and value parsers (stdlib only: agent/config.py imports this at start).

Default listen address 127.0.1.53:53. Why: glibc's resolv.conf cannot name a port, so a stub that is the
host's resolver must be on port 53; 127.0.0.53 and 127.0.0.54 belong to systemd-resolved (its stub and, since
v250, its proxy stub), 127.0.0.1:53 is where dnsmasq, unbound or a local BIND usually sit, Debian puts the
host name on 127.0.1.1, and the loopback VIP range is 127.240.0.0/12. 127.0.1.53 collides with none of them
on either kind of host, is local on every Linux (all of 127/8 is), and reads as "DNS". Kuma's own kuma-dp
listens on 127.0.0.1:15053 behind an iptables redirect; without iptables the stub has to be the resolver.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.1.53:53"
HOST_CONFIGS = ("auto", "resolved", "resolv.conf", "none")
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
DEFAULT_STATE_DIR = "/var/lib/kuma/kuma-dp"  # the packaged units' StateDirectory=kuma/kuma-dp
DOMAIN = "mesh"


def parse_address(text: Any, default_port: int = 53) -> tuple[str, int]:
    """`ADDR:PORT`, `ADDR` (port 53), `[V6]:PORT` or a bare IPv6 address -> (address, port)."""
    raw = str(text).strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not ADDR:PORT")
        port_text = rest[1:] if rest else ""
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    else:
        host, port_text = raw, ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (ADDR:PORT, e.g. 127.0.1.53:53)") from None
    port = default_port
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"{text!r}: {port_text!r} is not a port") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is not in [0, 65535]")
    return str(ip), port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: Any) -> str:
    host, port = parse_address(text)
    return format_address(host, port)


def parse_upstreams(value: Any) -> tuple[str, ...]:
    """Repeated `--dns-upstream`, or one comma-separated value (environment, YAML list)."""
    items: list[str] = []
    for chunk in ([value] if isinstance(value, str) else list(value)):
        items.extend(p.strip() for p in str(chunk).split(",") if p.strip())
    out = []
    for item in items:
        host, port = parse_address(item)
        if port == 0:
            raise ValueError(f"{item!r}: an upstream needs a port other than 0")
        out.append(format_address(host, port))
    return tuple(out)


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not true or false")


def parse_host_config(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in HOST_CONFIGS:
        raise ValueError(f"{value!r} is not one of {', '.join(HOST_CONFIGS)}")
    return text


def default_state_dir(env: dict[str, str] | None = None) -> Path:
    """`$STATE_DIRECTORY/dns` under systemd (its first entry), else /var/lib/kuma/kuma-dp/dns."""
    env = dict(os.environ) if env is None else env
    base = env.get("STATE_DIRECTORY", "").split(":")[0] or DEFAULT_STATE_DIR
    return Path(base) / "dns"
