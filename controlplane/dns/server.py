"""The control plane's authoritative `.mesh` DNS server (KUMA_DNS_SERVER_PORT, UDP and TCP).

UDP, the hot path, runs in a dedicated thread with the blocking loop over precomputed replies shared with
kuma-dp's stub (kuma_shared/dnsloop.py: batches through recvmmsg/sendmmsg, the id patched in place; DESIGN:
the asyncio event loop, not DNS parsing, is what costs; a plain thread answers several times faster).
TCP (clients retrying a truncated answer, zone tools) is served by asyncio: length-prefixed
messages, several per connection, an idle timeout, a cap on connections in total and per source address
(sized from the open files limit unless configured: see controlplane/netguard.py). Both read the current
`DnsTable`, an immutable generation swapped in whole when the VIP map changes. It never forwards anything:
names outside the zone are REFUSED.

Which names: every mesh's services (`<service>.mesh` and Kuma's `_` -> `.` variant) with their VIP from the
primary range. DNS queries carry no mesh, so a service name present in several meshes resolves to its VIP
in the first of those meshes by name; the kuma-dp stub, which serves only its own mesh, has no such
ambiguity (see names.zone_names).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Mapping

from controlplane.netguard import ACCEPT_ERROR_INTERVAL, ConnectionBudget, ConnectionLimits, chosen, current_nofile
from kuma_shared.aio import within
from kuma_shared.dnsloop import serve_udp, wake
from kuma_shared.logs import ErrorLog

from .names import zone_names
from .vips import VipMap, VipView
from .wire import TCP_MAX, DnsTable

log = logging.getLogger("kuma.dns")

TCP_IDLE_TIMEOUT = 10.0
UDP_BUFFER = 4 << 20


class DnsServer:
    name = "dns-server"

    def __init__(self, interface: str = "0.0.0.0", port: int = 5653, *, domain: str = "mesh", ttl: int = 60,
                 view: VipView | None = None, tcp_idle_timeout: float = TCP_IDLE_TIMEOUT,
                 tcp_max_connections: int = 0, tcp_max_connections_per_source: int = 0) -> None:
        self.interface, self.requested_port = interface, port
        self.tcp_idle_timeout = tcp_idle_timeout
        max_total = chosen(tcp_max_connections, ConnectionBudget.from_limit(current_nofile()).dns_tcp)
        self.tcp_limits = ConnectionLimits("dns-tcp", max_total, chosen(tcp_max_connections_per_source,
                                                                        ConnectionBudget.per_source(max_total)))
        self._refusals = ErrorLog(log, interval=ACCEPT_ERROR_INTERVAL)
        self.domain, self.ttl, self.view = domain, ttl, view
        self.table = DnsTable({}, domain, ttl)
        self.port = 0
        self.errors = 0  # packets whose handling raised (a bug): logged, never fatal
        self._udp: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._tcp: asyncio.Server | None = None
        self._tcp_conns: set[asyncio.Task[None]] = set()

    # --- the zone ------------------------------------------------------------------------------------------

    def set_records(self, records: Mapping[str, str]) -> None:
        """Swap in a new generation of the zone: DNS name -> IPv4 address."""
        serial = max(self.table.serial + 1, int(time.time())) & 0xFFFFFFFF
        self.table = DnsTable(records, self.domain, self.ttl, serial)

    def update_from_map(self, vip_map: VipMap, changed: set[str] | None = None) -> None:
        self.set_records(zone_names({m: v.vips for m, v in vip_map.meshes.items()}, self.domain))
        log.debug("DNS zone updated", extra={"names": len(self.table.records), "serial": self.table.serial})

    # --- component -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.view is not None:
            self.update_from_map(self.view.map)
            self.view.on_change(self.update_from_map)
        udp, tcp = self._bind()
        self._udp = udp
        self.port = udp.getsockname()[1]
        self._stopping = False
        try:
            self._tcp = await asyncio.start_server(self._tcp_client, sock=tcp)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        self._thread = threading.Thread(target=self._serve_udp, name="dns-udp", daemon=True)
        self._thread.start()
        log.info("DNS server listening", extra={"address": f"{self.interface}:{self.port}", "domain": self.domain})

    async def stop(self) -> None:
        self._stopping = True
        if self._udp is not None:
            self._wake_udp()
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join, 5.0)
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._tcp_conns):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 5.0)
            self._tcp = None

    def _family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.interface else socket.AF_INET

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP sockets on the same port (with port 0: a free port for both)."""
        family = self._family()
        attempts = 1 if self.requested_port else 50
        for _ in range(attempts):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    with contextlib.suppress(OSError):
                        udp.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp.bind((self.interface, self.requested_port))
                tcp.bind((self.interface, udp.getsockname()[1]))
                tcp.listen(128)
                tcp.setblocking(False)
                return udp, tcp
            except OSError as e:
                udp.close()
                tcp.close()
                if self.requested_port:
                    raise RuntimeError(f"cannot listen on {self.interface}:{self.requested_port} (UDP and TCP) for "
                                       f"the DNS server: {e.strerror}; is another kuma-cp or DNS server running? "
                                       "change KUMA_DNS_SERVER_PORT") from e
        raise RuntimeError("cannot find a free port for the DNS server on both UDP and TCP")

    # --- UDP: a blocking loop in its own thread ------------------------------------------------------------

    def _wake_udp(self) -> None:
        assert self._udp is not None
        wake(self._family(), self.interface, self.port)

    def _serve_udp(self) -> None:
        assert self._udp is not None
        serve_udp(self._udp, lambda: self.table.cache, lambda data, _addr: self.table.answer_udp(data),
                  lambda: self._stopping,
                  self._udp_error)

    def _udp_error(self, e: BaseException) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 10000 == 0:
            log.error("DNS query handling failed (packet ignored)", extra={"errors": self.errors}, exc_info=e)

    # --- TCP ------------------------------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        why = self.tcp_limits.admit(source)
        if why is not None:
            writer.transport.abort()  # a reset: the descriptor is free again at once
            self._refusals.report("refused", "DNS TCP connection refused", traceback=False, level=logging.WARNING,
                                  extra={"source": source, "reason": why, "open": self.tcp_limits.open,
                                         "tcpMaxConnections": self.tcp_limits.max_total,
                                         "tcpMaxConnectionsPerSource": self.tcp_limits.max_per_source})
            return
        self._tcp_conns.add(task)
        timeout = self.tcp_idle_timeout
        try:
            while True:
                size = int.from_bytes(await within(timeout, reader.readexactly(2)), "big")
                data = await within(timeout, reader.readexactly(size))
                try:
                    reply = self.table.answer(data, udp=False)
                except Exception:
                    self.errors += 1
                    log.exception("DNS query handling failed (connection closed)")
                    return
                if reply is None:
                    return  # not a DNS query: RFC 7766 lets a server close the connection
                writer.write(len(reply[:TCP_MAX]).to_bytes(2, "big") + reply[:TCP_MAX])
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tcp_conns.discard(task)
            self.tcp_limits.release(source)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
