"""A minimal asyncio HTTP/1.1 server for kuma-dp's two loopback endpoints (`/ready`, `/metrics`).

GET and HEAD only, one request per connection, no keep-alive: these endpoints are probed and scraped, not
browsed. Small on purpose: kuma-dp does not load a web framework to answer two paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable

from agent.ports import listen as listen  # kept importable here: the servers and their sockets go together
from kuma_shared.aio import within

log = logging.getLogger("kuma-dp.http")

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]  # -> (status, content type, body)
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable",
            500: "Internal Server Error"}


async def serve(sock: socket.socket, routes: dict[str, Handler], *,
                ssl: ssl_module.SSLContext | None = None) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await within(5.0, reader.readline())
            while (await within(5.0, reader.readline())) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                status, ctype, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method, target = parts[0], parts[1]
                path = target.split("?", 1)[0]
                handler = routes.get(path)
                if handler is None:
                    status, ctype, body = 404, "text/plain", f"not found; try {', '.join(routes)}\n".encode()
                elif method not in ("GET", "HEAD"):
                    status, ctype, body = 405, "text/plain", b"GET only\n"
                else:
                    try:
                        status, ctype, body = await handler()
                    except Exception:
                        log.exception("handler failed", extra={"path": path})
                        status, ctype, body = 500, "text/plain", b"internal error\n"
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, UnicodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, sock=sock, ssl=ssl)
