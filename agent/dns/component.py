"""kuma-dp's side of the host's DNS: one owner per host, the listening sockets, the DNS worker, the host's
resolver configuration, and putting everything back.

    dns = HostDns(DnsOptions(listen="127.0.1.53:53", host_config="auto"), env)
    dns.prepare()                # before the bootstrap call: lock, crash recovery, upstreams, bind (DnsError)
    await dns.start(vips, watch) # after it: the worker serves, then the host is pointed at it
    await dns.stop()             # host restored first, then the worker stopped, sockets closed, lock released

Order matters for the host: it is pointed at the stub only once the stub answers, and put back before the
stub goes away.

Changing the host's resolver takes root: systemd-resolved (257, Debian 13) accepts per-link DNS over D-Bus
only from uid 0 when there is no polkit (CAP_NET_ADMIN is not enough), and /etc/resolv.conf is root's. So a
kuma-dp that runs as root does it all itself; one that does not (the packaged kuma-dp.service runs as user
kuma) serves the stub and leaves the host to `kuma-dp dns configure` (run as root once the stub answers: the
unit's `ExecStartPost=+`) and `kuma-dp dns restore` (`ExecStartPre=-+` and `ExecStopPost=-+`), which use the
same state directory, lock and code.

A worker that dies is restarted (the sockets stay bound here meanwhile, so queries wait in the socket buffer
rather than fail), with the newest VIP map it reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.pdeathsig import die_with_parent

from .forward import Upstream
from .guard import ResolvConfGuard
from .host import Host, HostDnsError, HostPaths, OwnerBusy, OwnerLock, Runner, run_command
from .server import bind
from .settings import DEFAULT_LISTEN, DEFAULT_RESOLV_CONF, DOMAIN, default_state_dir, format_address, parse_address
from .watch import WatchParams
from .zone import encode_name

log = logging.getLogger("kuma-dp.dns")

EXIT_FAILURE, EXIT_USAGE = 1, 2
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
READY_TIMEOUT = 20.0
RESTART_BACKOFF_CAP = 30.0


class DnsError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


@dataclass(frozen=True)
class DnsOptions:
    listen: str = DEFAULT_LISTEN
    upstreams: tuple[str, ...] = ()  # empty: the host's resolv.conf servers, as they were before kuma-dp
    host_config: str = "none"
    state_dir: str | None = None  # None: $STATE_DIRECTORY/dns, else /var/lib/kuma/kuma-dp/dns
    resolv_conf: str = DEFAULT_RESOLV_CONF
    domain: str = DOMAIN


def is_self(upstream: tuple[str, int], listen: tuple[str, int]) -> bool:
    """Would forwarding to `upstream` reach this stub? (a wildcard listener is every local address)"""
    (uh, up), (lh, lp) = upstream, listen
    if up != lp:
        return False
    u, lip = ipaddress.ip_address(uh), ipaddress.ip_address(lh)
    if lip.is_unspecified:
        return u.is_loopback or u.is_unspecified or _is_local(uh)
    return u == lip


def _is_local(host: str) -> bool:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, 0))
            return True
        except OSError:
            return False


class HostDns:
    def __init__(self, options: DnsOptions, env: dict[str, str] | None = None, *, runner: Runner = run_command,
                 log_level: str = "info", log_format: str = "text", privileged: bool | None = None) -> None:
        self.options = options
        self.privileged = os.geteuid() == 0 if privileged is None else privileged  # may change the host itself
        self.env = dict(os.environ if env is None else env)
        self.state_dir = Path(options.state_dir) if options.state_dir else default_state_dir(self.env)
        self.host = Host(self.state_dir, HostPaths(resolv_conf=Path(options.resolv_conf)), runner, options.domain)
        self.lock = OwnerLock(self.state_dir)
        self.log_level, self.log_format = log_level, log_format
        self.listen = parse_address(options.listen)
        self.upstreams: list[Upstream] = []
        self.sockets: tuple[Any, Any] | None = None
        self.vips: dict[str, Any] | None = None
        self.watch: WatchParams | None = None
        self.configured: str | None = None  # what was done to the host
        self.recovered: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self._failures = 0  # consecutive quick worker deaths
        self.on_status: Callable[[str], None] | None = None  # kuma-dp's STATUS= line, for what the guard finds
        self.guard: ResolvConfGuard | None = None
        # The host resolver's state for the dataplane's insight: the worker sends it to the control plane (it
        # has the gRPC client); kept here so a restarted worker gets it again.
        self.host_report: dict[str, str] | None = None

    # --- before the bootstrap ------------------------------------------------------------------------------

    def prepare(self) -> None:
        try:
            self._prepare()
        except BaseException:
            self._close_sockets()
            self.lock.release()
            raise

    def _prepare(self) -> None:
        listen = format_address(*self.listen)
        try:
            self.lock.acquire()
        except OwnerBusy as e:
            who = f"pid {e.pid}" if e.pid else "another process"
            raise DnsError(f"another dataplane ({who}) owns this host's .mesh DNS and VIP listeners (lock "
                           f"{e.path}); run this one without --dns-enabled", EXIT_USAGE) from None
        except OSError as e:
            raise DnsError(f"--dns-state-dir {self.state_dir}: cannot use it ({e.strerror or e}); kuma-dp keeps "
                           "the host's DNS backup and its lock there", EXIT_USAGE) from None
        # A host.json here means the last owner did not finish (a crash, a kill -9): undo its change first.
        try:
            self.recovered = self.host.restore() if self.privileged else None
        except HostDnsError as e:
            raise DnsError(f"the host's DNS was left configured by a previous kuma-dp and cannot be restored: "
                           f"{e}", EXIT_FAILURE) from None
        if not self.privileged and self.host.state.path.exists():
            log.warning("the host's DNS is still configured from an earlier run; `kuma-dp dns restore` (as root: the "
                        "packaged unit's ExecStartPre) undoes that", extra={"state": str(self.host.state.path)})
        if self.recovered:
            log.warning("host DNS left configured by a kuma-dp that did not stop cleanly: restored",
                        extra={"what": self.recovered})
        self.upstreams = self._upstreams()
        try:
            self.sockets = bind(*self.listen)
        except OSError as e:
            raise DnsError(self._bind_error(listen, e), EXIT_USAGE) from None
        self.listen = (self.listen[0], int(self.sockets[0].getsockname()[1]))  # port 0: the one chosen

    def _upstreams(self) -> list[Upstream]:
        given = [parse_address(u) for u in self.options.upstreams]
        source = "--dns-upstream"
        if not given:
            given = [(ns, 53) for ns in self.host.original_nameservers()]
            source = f"the nameservers of {self.options.resolv_conf}"
        out = []
        for host, port in given:
            if is_self((host, port), self.listen):
                log.warning("upstream DNS server skipped: it is this stub", extra={"upstream": f"{host}:{port}"})
                continue
            out.append(Upstream(host, port))
        if not out:
            log.warning(f"no upstream DNS server ({source} names none but this stub): names outside "
                        f".{self.options.domain} get SERVFAIL; pass --dns-upstream ADDR:PORT")
        return out

    def _bind_error(self, listen: str, e: OSError) -> str:
        if e.errno == errno.EADDRINUSE:
            owner = _port_owner(self.listen)
            return (f"--dns-listen {listen} is already in use{f' by {owner}' if owner else ''}: another dataplane "
                    "with --dns-enabled (or another DNS server) serves it; run this one without --dns-enabled, or "
                    "give it another --dns-listen")
        if e.errno == errno.EACCES:
            return (f"--dns-listen {listen}: permission denied (port {self.listen[1]} needs root or "
                    "CAP_NET_BIND_SERVICE, as the packaged kuma-dp.service grants)")
        if e.errno == errno.EADDRNOTAVAIL:
            return f"--dns-listen {listen}: the address is not on this host"
        return f"--dns-listen {listen}: cannot listen there: {e.strerror or e}"

    # --- after the bootstrap -------------------------------------------------------------------------------

    async def start(self, vips: dict[str, Any] | None, watch: WatchParams | None = None) -> None:
        assert self.sockets is not None, "prepare() first"
        self.vips, self.watch = vips, watch
        await self._spawn()
        if self.options.host_config != "none" and not self.privileged:
            self.configured = (f"host DNS ({self.options.host_config}) left to `kuma-dp dns configure`, run as root "
                               f"(kuma-dp runs as uid {os.geteuid()})")
            log.info(self.configured)
            self.report_host_dns("delegated", self.configured)
        elif self.options.host_config != "none":
            try:
                self.configured = self.host.configure(self.options.host_config, self.listen)
            except HostDnsError as e:
                raise DnsError(f"--dns-host-config {self.options.host_config}: {e}", EXIT_USAGE) from None
            log.info("host DNS configured", extra={"what": self.configured})
            self.report_host_dns("configured", self.configured)
        if self.options.host_config != "none":
            self.guard = ResolvConfGuard(self.host, self.listen, may_reapply=self.privileged,
                                         on_status=self.on_status, on_report=self.report_host_dns)
            self.guard.start()

    def report_host_dns(self, state: str, message: str) -> None:
        """Tell the control plane (through the worker) what state the host's resolver is in."""
        self.host_report = {"state": state, "message": message}
        proc = self.proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return  # a restarted worker gets it with its payload
        try:
            proc.stdin.write((json.dumps({"hostDns": self.host_report}) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the worker died: its restart sends the report

    def summary(self) -> str:
        names = len((self.vips or {}).get("names") or {})
        ups = ", ".join(str(u) for u in self.upstreams) or "none"
        host = self.configured or "host DNS left alone"
        return (f"DNS stub on {format_address(*self.listen)} ({names} .{self.options.domain} names; upstreams {ups}; "
                f"{host})")

    async def _spawn(self) -> None:
        assert self.sockets is not None
        udp, tcp = self.sockets
        env = {k: v for k, v in self.env.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env.setdefault("GRPC_VERBOSITY", "ERROR")
        argv = [sys.executable, *(["-I"] if sys.flags.isolated else []), "-m", "agent.dns.worker"]
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                pass_fds=(udp.fileno(), tcp.fileno()), preexec_fn=die_with_parent(),
                                process_group=0, close_fds=True)
        self.proc = proc
        payload = {"udpFd": udp.fileno(), "tcpFd": tcp.fileno(), "upstreams": [str(u) for u in self.upstreams],
                   "vips": self.vips, "domain": self.options.domain, "logLevel": self.log_level,
                   "logFormat": self.log_format,
                   "watch": None if self.watch is None else {
                       "cp": self.watch.cp, "caPem": self.watch.ca_pem.decode(), "mesh": self.watch.mesh,
                       "token": self.watch.token, "name": self.watch.name},
                   "hostDns": self.host_report}
        assert proc.stdin is not None and proc.stdout is not None
        try:  # stdin stays open: later host DNS reports follow as lines
            proc.stdin.write((json.dumps(payload) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._reader = asyncio.create_task(self._follow(proc, reader, ready))
        try:
            self.ready = await asyncio.wait_for(asyncio.shield(ready), READY_TIMEOUT)
        except TimeoutError:
            raise DnsError(f"the DNS worker (pid {proc.pid}) did not start serving within {READY_TIMEOUT:g}s") from None

    async def _follow(self, proc: subprocess.Popen[bytes], reader: asyncio.StreamReader,
                      ready: asyncio.Future[dict[str, Any]]) -> None:
        """Read the worker's lines; when it dies unexpectedly, start another."""
        started = time.monotonic()
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "ready" in message and not ready.done():
                ready.set_result(message["ready"])
            elif "vips" in message:
                self.vips = message["vips"]
        status = await _wait(proc)
        _close_stdin(proc)
        if not ready.done():
            ready.set_exception(DnsError(f"the DNS worker exited with status {status} before serving (its error "
                                         "is logged above)"))
            return
        if self._stopping:
            return
        self._failures = 1 if time.monotonic() - started > 60 else self._failures + 1
        delay = min(RESTART_BACKOFF_CAP, 0.5 * 2 ** self._failures)
        log.error("the DNS worker exited; restarting it (the sockets stay bound: queries wait meanwhile)",
                  extra={"status": status, "restart_in_s": delay})
        await asyncio.sleep(delay)
        if not self._stopping:
            try:
                await self._spawn()
            except DnsError as e:
                log.error("the DNS worker could not be restarted", extra={"error": e.message})

    # --- stop ----------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Put the host back, then stop the worker; safe to call at any point, and more than once."""
        self._stopping = True
        if self.guard is not None:  # before the restore: putting the original back is not a foreign rewrite
            self.guard.stop()
            self.guard = None
        if self.lock.fd is not None and self.privileged:  # unprivileged: `kuma-dp dns restore` does it, as root
            try:
                text = self.host.restore()
                if text:
                    log.info("host DNS restored", extra={"what": text})
            except HostDnsError as e:
                log.error("cannot restore the host's DNS (the backup stays; `kuma-dp dns restore` retries)",
                          extra={"error": str(e)})
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(_wait(proc), 5.0)
            except TimeoutError:
                proc.kill()
                await _wait(proc)
        if proc is not None:
            _close_stdin(proc)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        self._close_sockets()
        self.lock.release()

    def _close_sockets(self) -> None:
        if self.sockets is not None:
            for s in self.sockets:
                s.close()
            self.sockets = None


def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _port_owner(listen: tuple[str, int]) -> str | None:
    """Who listens on this UDP address ("pid N (name)"), when the system tells (root sees every process)."""
    try:
        import psutil

        for conn in psutil.net_connections("udp"):
            if conn.laddr and conn.laddr.port == listen[1] and conn.pid and \
                    conn.laddr.ip in (listen[0], "0.0.0.0", "::"):
                with contextlib.suppress(psutil.Error):
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                return f"pid {conn.pid}"
    except Exception:
        return None
    return None


def stub_answers(listen: tuple[str, int], domain: str = DOMAIN, timeout: float = 1.0) -> bool:
    """Does something answer DNS at the stub's address (the zone's SOA query gets any reply at all)?"""
    import socket
    import struct

    host, port = listen
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        host = "127.0.0.1" if ip.version == 4 else "::1"
    qid = os.urandom(2)
    query = qid + struct.pack(">HHHHH", 0x0100, 1, 0, 0, 0) + encode_name(domain) + struct.pack(">HH", 6, 1)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(query, (host, port))
            return s.recv(4096)[:2] == qid
        except OSError:
            return False


def configure_for_owner(host: Host, mode: str, listen: tuple[str, int], *, wait: float = 30.0) -> str:
    """`kuma-dp dns configure`: point the host's resolver at the stub of the kuma-dp that owns it (it holds
    the lock and its stub answers), waiting up to `wait` seconds for both. For a kuma-dp that cannot do it
    itself (not root); run as root, e.g. the packaged unit's `ExecStartPost=+`."""
    lock = OwnerLock(host.state_dir)
    deadline = time.monotonic() + wait
    while True:
        owner: int | str | None = None
        try:
            if lock.acquire(create=False):
                lock.release()
        except OwnerBusy as e:
            owner = e.pid or "unknown pid"
        if owner is not None and stub_answers(listen, host.domain):
            break
        if time.monotonic() >= deadline:
            why = (f"its stub does not answer on {format_address(*listen)}" if owner is not None
                   else f"no kuma-dp with --dns-enabled holds {lock.path}")
            raise HostDnsError(f"nothing to point the host's resolver at: {why} (waited {wait:g}s)")
        time.sleep(0.2)
    leftover = host.restore()
    if leftover:
        log.warning("host DNS left configured earlier: restored first", extra={"what": leftover})
    return host.configure(mode, listen)


def for_config(cfg: Any, env: dict[str, str]) -> HostDns:
    """The component for kuma-dp's DpConfig (its dns_* settings)."""
    options = DnsOptions(listen=cfg.dns_listen, upstreams=tuple(cfg.dns_upstreams), host_config=cfg.dns_host_config,
                         state_dir=cfg.dns_state_dir, resolv_conf=cfg.dns_resolv_conf)
    return HostDns(options, env, log_level=cfg.log_level, log_format=cfg.log_format)


async def _wait(proc: subprocess.Popen[bytes]) -> int:
    while proc.poll() is None:
        await asyncio.sleep(0.02)
    return proc.returncode
