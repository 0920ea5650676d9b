"""systemd's sd_notify for kuma-cp: READY=1 once every local listener is up, STATUS= lines, STOPPING=1.

Outside systemd (no NOTIFY_SOCKET) it does nothing. A dozen lines over the datagram socket do what
systemd-python's `daemon.notify` does, without a compiled dependency (kuma-dp does the same, separately,
since the agent may not import the control plane).
"""

from __future__ import annotations

import logging
import os
import socket

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
