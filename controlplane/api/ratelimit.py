"""Per-client request rate limit (token bucket keyed by the client's address)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from .errors import Handler, error_response


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, client: str, now: float | None = None) -> float:
        """0 when allowed; otherwise seconds until the next request would be."""
        now = time.monotonic() if now is None else now
        b = self._buckets.get(client)
        if b is None:
            if len(self._buckets) >= self.max_clients:
                # Forget full buckets first: they carry no state a fresh bucket wouldn't.
                self._buckets = {k: v for k, v in self._buckets.items()
                                 if v.tokens + (now - v.updated) * self.rate < self.burst}
            b = self._buckets[client] = _Bucket(float(self.burst), now)
        b.tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
        b.updated = now
        if b.tokens >= 1:
            b.tokens -= 1
            return 0.0
        return (1 - b.tokens) / self.rate

    def middleware(self) -> web.middleware:  # type: ignore[valid-type]
        @web.middleware
        async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
            wait = self.allow(request.remote or "unknown")
            if wait:
                return error_response(429, "Too many requests",
                                      f"this client sent more than {self.rate:g} requests/s: retry in {wait:.1f}s",
                                      headers={"Retry-After": str(max(1, round(wait)))})
            return await handler(request)

        return rate_limit
