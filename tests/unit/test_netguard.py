"""controlplane/netguard.py on real loopback sockets: caps per listener and per address, the TLS handshake and
idle (slowloris) timeouts of the guarded HTTPS listener, the open files limit, the accept-error log."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controlplane.config import ConfigError, load
from controlplane.dns.server import DnsServer
from controlplane.netguard import (
    ACCEPT_FAILED,
    ConnectionBudget,
    ConnectionLimits,
    GuardedListener,
    bind_listener,
    install_accept_error_log,
    warn_if_caps_overcommit,
)
from controlplane.tls import CpTls, ensure_cp_tls
from tests.unit.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- the arithmetic --------------------------------------------------------------------------------------------


def test_limits_count_per_address_and_in_total() -> None:
    limits = ConnectionLimits("test", max_total=3, max_per_source=2)
    assert limits.admit("10.0.0.1") is None
    assert limits.admit("10.0.0.1") is None
    assert "the cap per address" in (limits.admit("10.0.0.1") or "")
    assert limits.admit("10.0.0.2") is None
    assert "its cap" in (limits.admit("10.0.0.3") or "")
    assert (limits.open, limits.refused) == (3, 2)
    limits.release("10.0.0.1")
    assert limits.admit("10.0.0.3") is None
    for source in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.3"):  # one release too many is ignored
        limits.release(source)
    assert (limits.open, limits.by_source) == (0, {})


def test_the_budget_keeps_a_reserve_and_caps_one_address_at_a_fraction() -> None:
    small = ConnectionBudget.from_limit(1024)
    assert small.reserved == 256
    assert small.dp_server + small.https_api + small.dns_tcp == 1024 - 256
    assert ConnectionBudget.per_source(small.https_api) == small.https_api // 4
    big = ConnectionBudget.from_limit(1 << 20)
    assert big.reserved == 1 << 18
    assert ConnectionBudget.per_source(big.dp_server) == 1024
    assert ConnectionBudget.per_source(10) == 8


def test_caps_set_beyond_the_limit_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    assert not warn_if_caps_overcommit(1024, 0, 0, 0)  # computed: they fit by construction
    assert not warn_if_caps_overcommit(1024, 500, 100, 100)
    with caplog.at_level(logging.WARNING, "kuma.netguard"):
        assert warn_if_caps_overcommit(1024, 5000, 0, 0)
    assert "KUMA_DP_SERVER_MAX_CONNECTIONS" in caplog.text


def test_negative_caps_are_refused_by_name() -> None:
    with pytest.raises(ConfigError) as e:
        load(None, {"KUMA_API_SERVER_HTTPS_MAX_CONNECTIONS_PER_SOURCE": "-1"})
    assert "KUMA_API_SERVER_HTTPS_MAX_CONNECTIONS_PER_SOURCE" in str(e.value)
    assert "zero (computed from the open files limit) or greater" in str(e.value)
    cfg = load(None, {"KUMA_DP_SERVER_MAX_CONNECTIONS": "100", "KUMA_DNS_SERVER_TCP_IDLE_TIMEOUT": "2.5"})
    assert (cfg.dp_server.max_connections, cfg.dns_server.tcp_idle_timeout) == (100, 2.5)


# --- the open files limit ----------------------------------------------------------------------------------------


def run_with_nofile(soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent("""
        import resource
        from kuma_shared import logs
        from controlplane.netguard import raise_nofile_limit
        logs.setup("info")
        print(raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    """)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                          preexec_fn=limit, check=True)


def test_the_soft_limit_is_raised_to_the_hard_one_and_a_low_one_is_reported() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"this process's hard open files limit is {hard}")
    raised = run_with_nofile(512, 2048)
    assert raised.stdout.split() == ["2048", "2048"]
    assert "raised the open files limit from=512 to=2048" in raised.stderr
    assert "the open files limit is low" in raised.stderr and "LimitNOFILE=1048576" in raised.stderr
    stuck = run_with_nofile(1024, 1024)
    assert stuck.stdout.split() == ["1024", "1024"]
    assert "raised" not in stuck.stderr and "limit=1024 hard=1024 recommended=65536" in stuck.stderr


# --- asyncio's accept errors ------------------------------------------------------------------------------------


async def test_failed_accepts_make_one_line_per_listener_not_a_traceback_each(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    others: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: others.append(context))
    install_accept_error_log(loop)
    try:
        with socket.socket() as listener, caplog.at_level(logging.WARNING, "kuma.netguard"):
            listener.bind(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            for _ in range(500):
                loop.call_exception_handler({"message": ACCEPT_FAILED, "socket": listener,
                                             "exception": OSError(24, "Too many open files")})
            loop.call_exception_handler({"message": "something else"})
        lines = [r for r in caplog.records if r.name == "kuma.netguard"]
        assert len(lines) == 1 and lines[0].exc_info is None
        assert lines[0].address == f"127.0.0.1:{port}"  # type: ignore[attr-defined]
        assert "Too many open files" in lines[0].error  # type: ignore[attr-defined]
        assert [c["message"] for c in others] == ["something else"]  # the rest still reaches the old handler
    finally:
        loop.set_exception_handler(None)


# --- the guarded HTTPS listener ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> CpTls:
    return ensure_cp_tls(tmp_path_factory.mktemp("tls"), None, None, [])


class Guarded:
    def __init__(self, listener: GuardedListener, runner: web.AppRunner, port: int) -> None:
        self.listener, self.runner, self.port = listener, runner, port


@pytest.fixture
async def guarded(tls: CpTls) -> AsyncIterator[Callable[..., Any]]:
    made: list[Guarded] = []

    async def make(*, per_source: int = 2, total: int = 10, handshake: float = 30.0, idle: float = 30.0) -> Guarded:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello")

        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=idle)
        await runner.setup()
        sock = bind_listener("127.0.0.1", 0)
        assert runner.server is not None
        listener = GuardedListener(sock, runner.server, ConnectionLimits("test", total, per_source),
                                   ssl_context=tls.server_ssl_context(), handshake_timeout=handshake)
        listener.start()
        g = Guarded(listener, runner, sock.getsockname()[1])
        made.append(g)
        return g

    yield make
    for g in made:
        await g.listener.close()
        await g.runner.cleanup()


def closed_by_server(s: socket.socket, timeout: float = 10.0) -> bool:
    """True when the server closed or reset this silent connection (within `timeout`)."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def https_get(port: int, tls: CpTls) -> str:
    ctx = ssl.create_default_context(cadata=(tls.ca_pem or tls.cert_pem).decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode()


async def test_an_address_over_its_cap_is_reset_and_others_are_served(guarded: Callable[..., Any],
                                                                      tls: CpTls) -> None:
    g = await guarded(per_source=2)
    idle = [socket.create_connection(("127.0.0.1", g.port)) for _ in range(2)]
    try:
        await wait_until(lambda: g.listener.limits.open == 2, timeout=10.0)
        with socket.socket() as third:
            third.bind(("127.0.0.1", 0))
            third.connect(("127.0.0.1", g.port))
            assert await asyncio.to_thread(closed_by_server, third)
        assert g.listener.limits.refused == 1
        # Another address still gets in, over TLS, and is answered.
        ctx = ssl.create_default_context(cadata=(tls.ca_pem or tls.cert_pem).decode())

        def from_other_address() -> str:
            with socket.socket() as raw:
                raw.bind(("127.0.0.2", 0))
                raw.connect(("127.0.0.1", g.port))
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    return s.recv(4096).decode()

        reply = await asyncio.to_thread(from_other_address)
        assert reply.startswith("HTTP/1.1 200")
    finally:
        for s in idle:
            s.close()
    await wait_until(lambda: g.listener.limits.open == 0, timeout=10.0)


async def test_a_client_that_never_completes_tls_is_closed_and_its_slot_freed(guarded: Callable[..., Any],
                                                                            tls: CpTls) -> None:
    g = await guarded(per_source=1, handshake=0.5)
    with socket.create_connection(("127.0.0.1", g.port)) as idle:
        await wait_until(lambda: g.listener.limits.open == 1, timeout=10.0)
        assert await asyncio.to_thread(closed_by_server, idle)
    await wait_until(lambda: g.listener.limits.open == 0, timeout=10.0)
    assert "hello" in await asyncio.to_thread(https_get, g.port, tls)  # the address's slot is back


async def test_idle_and_slowloris_connections_after_tls_are_closed(guarded: Callable[..., Any], tls: CpTls) -> None:
    g = await guarded(per_source=4, idle=1.0)
    ctx = ssl.create_default_context(cadata=(tls.ca_pem or tls.cert_pem).decode())

    def slow_client(partial: bytes) -> bool:
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            if partial:
                s.sendall(partial)  # headers started, never finished
            s.settimeout(10)
            try:
                return s.recv(1) == b""
            except (ConnectionResetError, ssl.SSLError):
                return True
            except TimeoutError:
                return False

    idle, slow = await asyncio.gather(asyncio.to_thread(slow_client, b""),
                                      asyncio.to_thread(slow_client, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: "))
    assert idle and slow
    await wait_until(lambda: g.listener.limits.open == 0, timeout=10.0)


# --- the DNS server's TCP side -----------------------------------------------------------------------------------


async def test_dns_tcp_caps_connections_per_address() -> None:
    server = DnsServer("127.0.0.1", 0, tcp_max_connections=10, tcp_max_connections_per_source=2, tcp_idle_timeout=30)
    await server.start()
    try:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        await wait_until(lambda: server.tcp_limits.open == 2, timeout=10.0)
        with socket.create_connection(("127.0.0.1", server.port)) as third:
            assert await asyncio.to_thread(closed_by_server, third)
        assert server.tcp_limits.refused == 1
        for s in held:
            s.close()
        await wait_until(lambda: server.tcp_limits.open == 0, timeout=10.0)
    finally:
        await server.stop()
