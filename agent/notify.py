"""systemd's notification protocol (sd_notify): `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`.

A tiny implementation instead of `systemd-python`: the protocol is one datagram of `KEY=VALUE` lines sent to
the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). systemd-python
would add a C extension that needs `libsystemd-dev` and `pkg-config` to build, for these ~40 lines; the
packages ship a self-contained runtime, and a compiler-built dependency is one more thing to break there.

Outside systemd (`$NOTIFY_SOCKET` unset) every call does nothing. The watchdog interval comes from
`$WATCHDOG_USEC` (honoured only when `$WATCHDOG_PID` is unset or names this process); kuma-dp pings at half
of it. Children (Envoy) get an environment without these variables, so only kuma-dp talks to systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

from agent.notify_vars import NOTIFY_VARS

log = logging.getLogger("kuma-dp.notify")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]  # abstract namespace
        elif path.startswith("/"):
            self.address = path
        elif path:
            log.warning("NOTIFY_SOCKET is not a path or an abstract socket name: ignored",
                        extra={"notify_socket": path})
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._sock: socket.socket | None = None
        self.ready_sent = False
        self.last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram with these `KEY=VALUE` lines; False (and a debug log) when it cannot."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as e:
            log.debug("sd_notify failed", extra={"error": str(e)})
            return False

    def status(self, text: str) -> None:
        text = " ".join(text.split())  # one line: systemctl status shows it as is
        if text != self.last_status:
            self.last_status = text
            self.send(f"STATUS={text}")

    def ready(self, status: str | None = None) -> None:
        if status is not None:
            self.last_status = " ".join(status.split())
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={self.last_status}")
        self.ready_sent = self.send(*lines) or self.ready_sent

    def stopping(self, status: str | None = None) -> None:
        lines = ["STOPPING=1"]
        if status is not None:
            self.last_status = " ".join(status.split())
            lines.append(f"STATUS={self.last_status}")
        self.send(*lines)

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more time to start or stop (while the control plane is unreachable, while draining)."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes: without systemd's notification / socket-activation variables."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k not in NOTIFY_VARS}
