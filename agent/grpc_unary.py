"""One gRPC unary call over HTTP/2 without grpcio: kuma-dp's bootstrap call (agent/bootstrap_client.py), the
one call on its way to spawning Envoy.

Why not grpcio for it: `import grpc` loads its Cython core (~50 ms here, and asyncio with it when nothing had
loaded it yet), all on kuma-dp's critical path, before the call can go out. This needs Python's ssl, a socket
and `h2` (python-hyper's HTTP/2 state machine: HPACK, flow control and frame sizes are its job, not ours),
~15 ms of imports beside what kuma-dp loads anyway; bench/bench_agent.py measures both floors. It speaks to the
same dp-server port as every other kuma-dp call (gRPC over TLS, ALPN h2), so the control plane needs no second
endpoint. grpcio still carries kuma-dp's streams (MeshMetric follow, VIP watch), loaded once Envoy runs.

`Exchange` is the call without I/O (bytes in, bytes out); `call` drives it on a blocking socket and
`call_async` on asyncio streams.

gRPC's framing on top of HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md): a POST to /Service/Method with
`content-type: application/grpc` and `te: trailers`; each message is prefixed by a compressed flag (0) and its
length (4 bytes, big-endian); the status comes in the trailers (`grpc-status`, `grpc-message`), or in the only
HEADERS frame of a "trailers-only" answer.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
import urllib.parse
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

if TYPE_CHECKING:
    import asyncio

OK = 0
# grpc/doc/statuscodes.md: the codes kuma-dp tells apart, by number.
STATUS_NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
                5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
                9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL",
                14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED"}
MAX_ANSWER = 64 * 1024 * 1024  # an answer larger than this is not a bootstrap: refuse it, do not buffer it
_WINDOW = 16 * 1024 * 1024  # the receive window we open: a bootstrap answer arrives without WINDOW_UPDATE stalls


class UnaryError(Exception):
    """The call failed. `status` is the gRPC status name (the control plane's own answer, e.g.
    "UNAUTHENTICATED"), or "UNAVAILABLE" / "DEADLINE_EXCEEDED" when it could not be reached or did not answer,
    as grpcio would say."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class Exchange:
    """One unary call as HTTP/2 bytes: `outgoing()` what to send now; `feed(data)` what came in, returning the
    answer's message once the call ended (or raising UnaryError with its status)."""

    def __init__(self, authority: str, method: str, body: bytes, timeout: float, user_agent: str) -> None:
        self._conn = conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW})
        conn.increment_flow_control_window(_WINDOW - 65535)
        self._stream = conn.get_next_available_stream_id()
        conn.send_headers(self._stream, [
            (":method", "POST"), (":scheme", "https"), (":path", method), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers"),
            ("grpc-timeout", f"{max(int(timeout * 1000), 1)}m"), ("user-agent", user_agent)])
        self._pending = struct.pack(">BI", 0, len(body)) + body
        self._answer = bytearray()
        self._headers: dict[str, str] = {}

    def outgoing(self) -> bytes:
        conn, stream = self._conn, self._stream
        while self._pending:  # as much as the peer's window and frame size allow; the rest after WINDOW_UPDATE
            size = min(len(self._pending), conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
            if size <= 0:
                break
            conn.send_data(stream, self._pending[:size], end_stream=size == len(self._pending))
            self._pending = self._pending[size:]
        return conn.data_to_send()

    def feed(self, data: bytes) -> bytes | None:
        if not data:
            raise UnaryError("UNAVAILABLE", "the control plane closed the connection before answering")
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            raise UnaryError("UNAVAILABLE", f"HTTP/2 protocol error from the control plane: {e}") from None
        for event in events:
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                self._headers.update((str(k), str(v)) for k, v in event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self._answer += event.data
                if len(self._answer) > MAX_ANSWER:
                    raise UnaryError("RESOURCE_EXHAUSTED", f"the answer is larger than {MAX_ANSWER} bytes")
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                raise UnaryError("UNAVAILABLE", f"the control plane reset the call (HTTP/2 error {event.error_code})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise UnaryError("UNAVAILABLE", f"the control plane ended the connection (GOAWAY {event.error_code})")
            elif isinstance(event, h2.events.StreamEnded):
                return _message(self._headers, bytes(self._answer))
        return None


def tls_context(ca_pem: bytes) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as e:
        raise UnaryError("UNAVAILABLE", f"the CA certificate is not usable: {e}") from None
    context.set_alpn_protocols(["h2"])
    return context


def call(host: str, port: int, ca_pem: bytes, method: str, body: bytes, *, timeout: float,
         user_agent: str = "kuma-dp") -> bytes:
    """The answer's bytes for one unary call of `method` with `body` (already serialised), TLS verified with
    `ca_pem` for `host`, on a blocking socket. Raises UnaryError."""
    deadline = time.monotonic() + timeout
    context = tls_context(ca_pem)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            _check_alpn(tls.selected_alpn_protocol(), host, port)
            exchange = Exchange(_authority(host, port), method, body, timeout, user_agent)
            while True:
                if out := exchange.outgoing():
                    tls.sendall(out)
                tls.settimeout(max(deadline - time.monotonic(), 0.001))
                if (answer := exchange.feed(tls.recv(65536))) is not None:
                    return answer
    except (ssl.SSLError, TimeoutError, OSError) as e:
        raise _transport_error(e, host, port, timeout) from None


async def call_async(host: str, port: int, ca_pem: bytes, method: str, body: bytes, *, timeout: float,
                     user_agent: str = "kuma-dp") -> bytes:
    """`call` on asyncio streams (asyncio imported here: kuma-dp's head start makes the blocking call before it
    loads asyncio)."""
    import asyncio

    context = tls_context(ca_pem)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
            ssl_object = writer.get_extra_info("ssl_object")
            _check_alpn(ssl_object.selected_alpn_protocol() if ssl_object else None, host, port)
            exchange = Exchange(_authority(host, port), method, body, timeout, user_agent)
            while True:
                if out := exchange.outgoing():
                    writer.write(out)
                    await writer.drain()
                if (answer := exchange.feed(await reader.read(65536))) is not None:
                    return answer
    except (ssl.SSLError, TimeoutError, OSError) as e:
        raise _transport_error(e, host, port, timeout) from None
    finally:
        if writer is not None:
            writer.close()


def _check_alpn(protocol: str | None, host: str, port: int) -> None:
    if protocol != "h2":
        raise UnaryError("UNAVAILABLE", f"{host}:{port} does not speak HTTP/2 (no ALPN h2): is it the dp-server?")


def _transport_error(e: Exception, host: str, port: int, timeout: float) -> UnaryError:
    """As grpcio reports it: a deadline, or the control plane unavailable (why: a TLS or connection error)."""
    if isinstance(e, TimeoutError):
        return UnaryError("DEADLINE_EXCEEDED", f"{host}:{port} did not answer within {timeout:g}s")
    if isinstance(e, ssl.SSLError):
        return UnaryError("UNAVAILABLE", f"TLS with {host}:{port} failed: {e.reason or e}")
    assert isinstance(e, OSError)
    reason = os.strerror(e.errno) if e.errno else str(e)  # asyncio's connect error has its own strerror
    return UnaryError("UNAVAILABLE", f"cannot reach {host}:{port}: {reason.lower()}")


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _message(headers: dict[str, str], framed: bytes) -> bytes:
    """The one message of a finished call, or UnaryError with the call's status."""
    if headers.get(":status") != "200":
        raise UnaryError("UNAVAILABLE", f"the control plane answered HTTP {headers.get(':status')}")
    status = headers.get("grpc-status")
    if status is None:
        raise UnaryError("INTERNAL", "the control plane's answer carries no grpc-status")
    code = int(status) if status.isdigit() else 2
    if code != OK:
        raise UnaryError(STATUS_NAMES.get(code, "UNKNOWN"),
                         urllib.parse.unquote(headers.get("grpc-message", "")))
    if len(framed) < 5:
        raise UnaryError("INTERNAL", "the control plane's answer has no message")
    compressed, length = struct.unpack(">BI", framed[:5])
    if compressed:
        raise UnaryError("INTERNAL", "the control plane compressed its answer; kuma-dp asked for none")
    if length != len(framed) - 5:
        raise UnaryError("INTERNAL", f"the answer's message is {len(framed) - 5} bytes, its frame says {length}")
    return framed[5:]
