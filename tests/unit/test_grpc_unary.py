"""kuma-dp's gRPC unary call without grpcio (agent/grpc_unary.py), both drivers (blocking and asyncio), against
a real grpcio server over TLS: answers of every size, the server's statuses by name with their messages, and
each way the call can fail to reach a gRPC server (refused, wrong CA, no HTTP/2, closed, too slow)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent import grpc_unary
from agent.grpc_unary import UnaryError
from tests.ports import free_port
from tests.unit.test_kumactl import self_signed

Call = Callable[..., bytes]


def _blocking(*args: Any, **kwargs: Any) -> bytes:
    return grpc_unary.call(*args, **kwargs)


def _asyncio(*args: Any, **kwargs: Any) -> bytes:
    return asyncio.run(grpc_unary.call_async(*args, **kwargs))


@pytest.fixture(params=[_blocking, _asyncio], ids=["blocking", "asyncio"])
def call(request: pytest.FixtureRequest) -> Call:
    driver: Call = request.param
    return driver


def _abort(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "not this dataplane: 100% sure, ñ")
    raise AssertionError("unreachable")


def _slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(3)
    return b"late"


HANDLERS = {
    "Echo": lambda request, context: b"echo:" + request,
    "Sized": lambda request, context: b"x" * int(request),  # an answer of the asked size
    "Abort": _abort,
    "Slow": _slow,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, bytes]]:
    """A grpcio server on TLS (a self-signed certificate for 127.0.0.1): (port, its CA)."""
    cert, key = self_signed(tmp_path_factory.mktemp("grpc-unary"), "127.0.0.1")
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                      options=[("grpc.max_receive_message_length", 32 * 1024 * 1024),
                               ("grpc.max_send_message_length", 32 * 1024 * 1024)])
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.T", {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in HANDLERS.items()}),))
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = srv.add_secure_port("127.0.0.1:0", credentials)
    srv.start()
    try:
        yield port, cert.read_bytes()
    finally:
        srv.stop(0)


def test_an_answer_comes_back_as_the_servers_bytes(call: Call, server: tuple[int, bytes]) -> None:
    port, ca = server
    assert call("127.0.0.1", port, ca, "/t.T/Echo", b'{"a": 1}', timeout=10) == b'echo:{"a": 1}'
    assert call("127.0.0.1", port, ca, "/t.T/Echo", b"", timeout=10) == b"echo:"


def test_bodies_and_answers_larger_than_a_frame_and_a_window_arrive_whole(call: Call,
                                                                          server: tuple[int, bytes]) -> None:
    port, ca = server
    body = bytes(range(256)) * 4096  # 1 MiB: many frames, past the server's initial 64 KiB window
    assert call("127.0.0.1", port, ca, "/t.T/Echo", body, timeout=20) == b"echo:" + body
    size = 20 * 1024 * 1024  # past the 16 MiB window the call opens: it must hand credit back as it reads
    assert call("127.0.0.1", port, ca, "/t.T/Sized", str(size).encode(), timeout=20) == b"x" * size


def test_the_servers_status_is_named_with_its_message(call: Call, server: tuple[int, bytes]) -> None:
    port, ca = server
    with pytest.raises(UnaryError) as e:
        call("127.0.0.1", port, ca, "/t.T/Abort", b"", timeout=10)
    assert (e.value.status, e.value.message) == ("PERMISSION_DENIED", "not this dataplane: 100% sure, ñ")
    with pytest.raises(UnaryError) as e:
        call("127.0.0.1", port, ca, "/t.T/Missing", b"", timeout=10)
    assert e.value.status == "UNIMPLEMENTED"


def test_a_server_slower_than_the_timeout_is_a_deadline(call: Call, server: tuple[int, bytes]) -> None:
    port, ca = server
    started = time.monotonic()
    with pytest.raises(UnaryError) as e:
        call("127.0.0.1", port, ca, "/t.T/Slow", b"", timeout=0.5)
    assert e.value.status == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 2.5  # it did not wait for the answer


def test_unreachable_and_untrusted_servers_are_unavailable_with_the_reason(call: Call, server: tuple[int, bytes],
                                                                            tmp_path: Path) -> None:
    port, _ = server
    other_ca, _ = self_signed(tmp_path / "other", "127.0.0.1")
    with pytest.raises(UnaryError) as e:
        call("127.0.0.1", port, other_ca.read_bytes(), "/t.T/Echo", b"", timeout=10)
    assert e.value.status == "UNAVAILABLE" and "CERTIFICATE_VERIFY_FAILED" in e.value.message
    with pytest.raises(UnaryError) as e:
        call("127.0.0.1", free_port(), other_ca.read_bytes(), "/t.T/Echo", b"", timeout=10)
    assert e.value.status == "UNAVAILABLE" and "connection refused" in e.value.message
    with pytest.raises(UnaryError) as e:
        call("127.0.0.1", port, b"not a certificate", "/t.T/Echo", b"", timeout=10)
    assert e.value.status == "UNAVAILABLE" and "CA certificate is not usable" in e.value.message


class _TlsPeer:
    """A TLS server that is not a gRPC server: it offers `alpn`, then closes each connection after the
    handshake (after reading what the client sent first)."""

    def __init__(self, directory: Path, alpn: str) -> None:
        cert, key = self_signed(directory, "127.0.0.1")
        self.ca = cert.read_bytes()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols([alpn])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    tls.recv(65536)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize("alpn, says", [("http/1.1", "does not speak HTTP/2"),
                                        ("h2", "closed the connection before answering")])
def test_a_tls_server_that_is_not_grpc_is_unavailable(call: Call, tmp_path: Path, alpn: str, says: str) -> None:
    peer = _TlsPeer(tmp_path, alpn)
    try:
        with pytest.raises(UnaryError) as e:
            call("127.0.0.1", peer.port, peer.ca, "/t.T/Echo", b"", timeout=10)
        assert e.value.status == "UNAVAILABLE" and says in e.value.message
    finally:
        peer.close()


@pytest.mark.parametrize("headers, framed, status, says", [
    ({":status": "503"}, b"", "UNAVAILABLE", "HTTP 503"),
    ({":status": "200"}, b"", "INTERNAL", "no grpc-status"),
    ({":status": "200", "grpc-status": "0"}, b"", "INTERNAL", "no message"),
    ({":status": "200", "grpc-status": "0"}, struct.pack(">BI", 1, 2) + b"zz", "INTERNAL", "compressed"),
    ({":status": "200", "grpc-status": "0"}, struct.pack(">BI", 0, 9) + b"zz", "INTERNAL", "its frame says 9"),
    ({":status": "200", "grpc-status": "77", "grpc-message": "x"}, b"", "UNKNOWN", "x"),
])
def test_answers_that_break_grpcs_framing_are_refused(headers: dict[str, str], framed: bytes, status: str,
                                                       says: str) -> None:
    with pytest.raises(UnaryError) as e:
        grpc_unary._message(headers, framed)
    assert e.value.status == status and says in e.value.message
