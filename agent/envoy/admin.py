"""A small asyncio client for Envoy's admin API on loopback (`/ready`, `/stats`, `/drain_listeners`, ...).

HTTP/1.1 with `Connection: close`, bodies by Content-Length, chunked encoding or end of stream. It exists so
kuma-dp does not load an HTTP client library for a handful of loopback calls (kuma-dp stays small: see
bench/bench_agent.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any


class AdminError(Exception):
    """Envoy's admin API cannot be reached or answered badly."""


@dataclass(frozen=True)
class AdminResponse:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class AdminClient:
    host: str
    port: int
    timeout: float = 2.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def request(self, method: str, path: str, *, timeout: float | None = None) -> AdminResponse:
        try:
            return await asyncio.wait_for(self._request(method, path), timeout or self.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
            raise AdminError(f"Envoy admin {method} {path} on {self.host}:{self.port}: "
                             f"{type(e).__name__}: {e}") from None

    async def _request(self, method: str, path: str) -> AdminResponse:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                         f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = await _read_chunked(reader)
            elif "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            else:
                body = await reader.read()
            return AdminResponse(status, body)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def get(self, path: str, *, timeout: float | None = None) -> AdminResponse:
        return await self.request("GET", path, timeout=timeout)

    async def post(self, path: str, *, timeout: float | None = None) -> AdminResponse:
        return await self.request("POST", path, timeout=timeout)

    async def stats(self, *names: str) -> dict[str, Any]:
        """Counters and gauges by exact name (absent names are left out)."""
        pattern = "^(" + "|".join(_re_escape(n) for n in names) + ")$"
        r = await self.get("/stats?format=json&filter=" + urllib.parse.quote(pattern, safe=""))
        if r.status != 200:
            raise AdminError(f"Envoy admin /stats answered {r.status}: {r.text[:200]}")
        return {e["name"]: e.get("value") for e in r.json().get("stats", []) if "name" in e}


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = await reader.readline()
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _re_escape(name: str) -> str:
    return "".join("\\" + c if c in ".^$*+?{}[]\\|()" else c for c in name)
