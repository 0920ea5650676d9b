"""Keeping kuma-cp's listeners up under a connection flood.

Every accepted connection costs a file descriptor, and with the 1024 descriptors a shell gives `kuma-cp run`
about a thousand idle connections to the public ports used to take every listener down (the local HTTP API
and `/ready` included: accept() fails with EMFILE everywhere once the process is out of descriptors). So:

- `raise_nofile_limit()` raises the soft RLIMIT_NOFILE to the hard limit at start, and says when it is low;
- `ConnectionBudget` splits the descriptor limit: a reserve (files, the store, the local listeners and their
  clients) that public listeners never get, and a cap per public listener, with a cap per source address
  so one client cannot take more than a fraction of a listener's share;
- `GuardedListener` accepts in Python for an aiohttp (HTTPS API) server: it refuses a connection over a cap at
  once (RST), then hands it to asyncio with a TLS handshake timeout; no byte is copied by us afterwards;
- `install_accept_error_log()` turns asyncio's traceback per failed accept ("socket.accept() out of system
  resource", EMFILE) into one line per listener per interval with a count of the suppressed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from kuma_shared.logs import ErrorLog

log = logging.getLogger("kuma.netguard")

NOFILE_WARN_BELOW = 65536  # what a busy zone needs; the packaged unit sets LimitNOFILE=1048576
ACCEPT_ERROR_INTERVAL = 10.0  # seconds between two log lines about the same listener's failed accepts
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_RETRY_DELAY = 0.5  # seconds a guarded listener waits after running out of descriptors
MAX_PER_SOURCE_AUTO = 1024  # the automatic per-source cap never exceeds this, however large the limit


CONNECTIONS_OPEN = Gauge("kuma_cp_connections_open", "Connections a capped public listener holds now",
                         ["listener"])
CONNECTIONS_REFUSED = Counter("kuma_cp_connections_refused", "Connections a capped public listener reset at "
                              "once: over its cap (listener) or over the cap per client address (source)",
                              ["listener", "cap"])


def raise_nofile_limit(warn_below: int = NOFILE_WARN_BELOW) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (no privilege needed); returns the soft limit in force
    and logs a warning naming the fix when it stays below `warn_below`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("raised the open files limit", extra={"from": soft, "to": target})
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open files limit", extra={"soft": soft, "hard": hard, "error": str(e)})
    if soft != resource.RLIM_INFINITY and soft < warn_below:
        log.warning("the open files limit is low: connection caps are sized from it, so few dataplanes and "
                    "API clients fit; raise the hard limit (LimitNOFILE=1048576 in a systemd unit, as the packaged "
                    "one does, or ulimit -Hn in the shell that starts kuma-cp)",
                    extra={"limit": soft, "hard": hard, "recommended": warn_below})
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def current_nofile() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass(frozen=True)
class ConnectionBudget:
    """How the descriptor limit is shared. A quarter (at least 256) is never given to public listeners; of
    the rest the dp-server (every Envoy and kuma-dp) gets half, the HTTPS API and the DNS server's TCP side a
    quarter each. A configured cap (> 0) replaces the computed one."""

    nofile: int
    reserved: int
    dp_server: int
    https_api: int
    dns_tcp: int

    @classmethod
    def from_limit(cls, nofile: int) -> ConnectionBudget:
        reserved = max(256, nofile // 4)
        public = max(nofile - reserved, 64)
        return cls(nofile=nofile, reserved=reserved, dp_server=public // 2, https_api=public // 4,
                   dns_tcp=public // 4)

    @staticmethod
    def per_source(listener_cap: int) -> int:
        """One address gets at most a quarter of a listener's share (at least 8, at most 1024)."""
        return min(MAX_PER_SOURCE_AUTO, max(8, listener_cap // 4))


def chosen(configured: int, computed: int) -> int:
    """A configured cap when set (> 0), else the one computed from the descriptor limit."""
    return configured if configured > 0 else computed


def warn_if_caps_overcommit(nofile: int, dp_server: int, https_api: int, dns_tcp: int) -> bool:
    """Configured caps (0: computed) that add up to more than the limit leaves after the reserve let a flood
    take every descriptor again, the local API and /ready included: say so at start, naming the settings."""
    budget = ConnectionBudget.from_limit(nofile)
    total = chosen(dp_server, budget.dp_server) + chosen(https_api, budget.https_api) + chosen(dns_tcp,
                                                                                             budget.dns_tcp)
    available = nofile - budget.reserved
    if total <= available:
        return False
    log.warning("the connection caps add up to more than the open files limit leaves for public listeners: a "
                "flood can exhaust every descriptor; lower KUMA_DP_SERVER_MAX_CONNECTIONS, "
                "KUMA_API_SERVER_HTTPS_MAX_CONNECTIONS, KUMA_DNS_SERVER_TCP_MAX_CONNECTIONS (0: computed) or raise "
                "the limit", extra={"caps": total, "available": available, "limit": nofile})
    return True


class ConnectionLimits:
    """Open connections of one listener, in total and per source address."""

    def __init__(self, listener: str, max_total: int, max_per_source: int) -> None:
        self.listener, self.max_total, self.max_per_source = listener, max_total, max_per_source
        self.open = 0
        self.by_source: dict[str, int] = {}
        self.refused = 0
        self._open_metric = CONNECTIONS_OPEN.labels(listener)
        self._open_metric.set(0)

    def admit(self, source: str) -> str | None:
        """Count a new connection from `source`, or say why it is refused (then nothing is counted)."""
        if self.open >= self.max_total:
            self.refused += 1
            CONNECTIONS_REFUSED.labels(self.listener, "listener").inc()
            return f"the listener has {self.open} connections, its cap"
        held = self.by_source.get(source, 0)
        if held >= self.max_per_source:
            self.refused += 1
            CONNECTIONS_REFUSED.labels(self.listener, "source").inc()
            return f"this address has {held} connections, the cap per address"
        self.open += 1
        self.by_source[source] = held + 1
        self._open_metric.set(self.open)
        return None

    def release(self, source: str) -> None:
        held = self.by_source.get(source, 0)
        if held <= 0:
            return
        self.open -= 1
        self._open_metric.set(self.open)
        if held == 1:
            del self.by_source[source]
        else:
            self.by_source[source] = held - 1


def refuse(sock: socket.socket) -> None:
    """Close with a reset: the client learns at once, and no TIME_WAIT is left on our side."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Released(asyncio.Protocol):
    """Passes every event to the server's protocol and gives the connection's slot back when it ends."""

    def __init__(self, inner: asyncio.Protocol, on_close: Callable[[], None]) -> None:
        self.inner, self.on_close = inner, on_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self.on_close()


class GuardedListener:
    """A TCP listener whose accept() is ours: connections over `limits` are reset at once, the others get
    `handshake_timeout` seconds to complete TLS before asyncio hands them to `protocol_factory`'s protocol.
    Idle and slow (slowloris) connections after the handshake are the protocol's business (aiohttp's
    keepalive timeout runs from the connection's start and closes one still waiting for its headers)."""

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 limits: ConnectionLimits, *, ssl_context: ssl.SSLContext | None, handshake_timeout: float,
                 errors: ErrorLog | None = None) -> None:
        self.sock, self.protocol_factory, self.limits = sock, protocol_factory, limits
        self.ssl_context, self.handshake_timeout = ssl_context, handshake_timeout
        self.errors = errors or ErrorLog(log, interval=ACCEPT_ERROR_INTERVAL)
        self._task: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self.sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop(), name=f"accept {self.address}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._handshakes):
            task.cancel()
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)
        self.sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as e:
                if e.errno in OUT_OF_RESOURCES:
                    self.errors.report(("accept", self.limits.listener), "cannot accept connections: out of "
                                       "file descriptors; retrying", error=e, traceback=False,
                                       level=logging.WARNING,
                                       extra={"listener": self.limits.listener, "address": self.address,
                                              "limit": current_nofile()})
                    await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue  # ECONNABORTED and friends: that client is gone, the next one is not
            source = str(peer[0])
            why = self.limits.admit(source)
            if why is not None:
                refuse(conn)
                self.errors.report(("refused", self.limits.listener), "connection refused", traceback=False,
                                   level=logging.WARNING,
                                   extra={"listener": self.limits.listener, "source": source, "reason": why,
                                          "open": self.limits.open, "maxConnections": self.limits.max_total,
                                          "maxConnectionsPerSource": self.limits.max_per_source})
                continue
            task = loop.create_task(self._handshake(conn, source))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, source: str) -> None:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.limits.release(source)

        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if self.ssl_context is not None:
            kwargs = {"ssl": self.ssl_context, "ssl_handshake_timeout": self.handshake_timeout}
        try:
            await loop.connect_accepted_socket(lambda: _Released(self.protocol_factory(), release), conn,
                                               **kwargs)
        except asyncio.CancelledError:
            release()
            conn.close()
            raise
        except Exception as e:
            # A client that never finished TLS (idle, slow, or not TLS at all; ConnectionAbortedError after
            # the handshake timeout): asyncio closed its transport, the slot is free again.
            release()
            conn.close()
            log.debug("TLS handshake failed", extra={"listener": self.limits.listener, "source": source,
                                                     "error": str(e) or type(e).__name__})


def bind_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message (selector_events.py)


def install_accept_error_log(loop: asyncio.AbstractEventLoop, interval: float = ACCEPT_ERROR_INTERVAL) -> ErrorLog:
    """asyncio logs a traceback for every accept() that fails with EMFILE on any of its servers (the local
    API, diagnostics, DNS over TCP): log one line per listener per `interval` instead, with a count."""
    errors = ErrorLog(log, interval=interval)
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_FAILED:
            sock = context.get("socket")
            address = "?"
            with contextlib.suppress(Exception):
                host, port = sock.getsockname()[:2]  # type: ignore[union-attr]
                address = f"{host}:{port}"
            errors.report(("accept", address), "cannot accept connections: out of file descriptors; retrying",
                          error=context.get("exception"), traceback=False, level=logging.WARNING,
                          extra={"address": address, "limit": current_nofile()})
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return errors
