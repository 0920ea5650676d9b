"""A tiny HTTP client for API tests: real requests to a real kuma-cp, answers as (status, headers, body)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def fields(self) -> dict[str, str]:
        """invalid_parameters as {field: reason}."""
        return {p["field"]: p["reason"] for p in self.json.get("invalid_parameters", [])}


def call(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
         ca_file: Path | None = None, raw: bytes | None = None, token: str | None = None,
         timeout: float = 10) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers), e.read())
