"""systemd's sd_notify for kuma-cp: READY=1 once every local listener is up, STATUS= lines, STOPPING=1, and
WATCHDOG=1 pings from the event loop when the unit sets WatchdogSec= (a stuck loop stops pinging, and systemd
restarts kuma-cp).

Outside systemd (no NOTIFY_SOCKET) it does nothing. A dozen lines over the datagram socket do what
systemd-python's `daemon.notify` does, without a compiled dependency (kuma-dp does the same, separately,
since the agent may not import the control plane).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("kuma.runtime")


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=...") to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as e:
        log.warning("cannot notify systemd", extra={"socket": address.lstrip("\0"), "error": str(e)})
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of systemd's WatchdogSec=), or None when there is no watchdog
    for this process ($WATCHDOG_USEC unset, or $WATCHDOG_PID naming another process)."""
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


async def ping_watchdog(interval: float) -> None:
    """Ping systemd's watchdog every `interval` seconds, from the event loop: if the loop stalls, pings stop."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
