"""The HTTP client of the control plane's API (stdlib urllib + ssl): base URL, CA file, bearer token, timeout.

Every failure becomes a `KumactlError` that says what to do: an unreachable control plane names its address
and how to configure another one; a TLS verification failure says to pass `--ca-cert-file`; an API error
prints its title and each invalid parameter as `field: reason`. TLS certificates are always verified (against
the configured CA file, or the system's trust store when there is none).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import ControlPlane
from .errors import KumactlError, api_error_lines

__all__ = ["ApiClient", "ApiResponse", "KumactlError"]

log = logging.getLogger("kumactl")

DEFAULT_TIMEOUT = 60.0
ADD_HINT = "kumactl config control-planes add --name NAME --address URL"


@dataclass
class ApiResponse:
    status: int
    body: Any  # parsed JSON when the answer is JSON, else text
    headers: Mapping[str, str] = field(default_factory=dict)


class ApiError(KumactlError):
    """The control plane answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body
        super().__init__(*api_error_lines(body, status))

    @property
    def not_found(self) -> bool:
        """A 404 about the resource itself (not about an unknown type or path)."""
        title = self.body.get("title") if isinstance(self.body, Mapping) else None
        return self.status == 404 and title in (None, "Not found", "Not Found")


class ApiClient:
    def __init__(self, url: str, *, ca_cert_file: str | None = None, token: str | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 name: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.ca_cert_file = ca_cert_file
        self.token = token
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.name = name
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def for_control_plane(cls, cp: ControlPlane, timeout: float = DEFAULT_TIMEOUT) -> ApiClient:
        return cls(cp.url, ca_cert_file=cp.ca_cert_file, token=cp.token, headers=cp.headers, timeout=timeout,
                   name=cp.name)

    # --- transport ---------------------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context()
            if self.ca_cert_file:
                try:
                    ctx.load_verify_locations(cafile=self.ca_cert_file)
                except FileNotFoundError:
                    raise KumactlError(f"the CA file {self.ca_cert_file} does not exist",
                                       "point --ca-cert-file at the control plane's CA certificate "
                                       "(<kuma-cp work dir>/tls/ca.crt)") from None
                except (ssl.SSLError, OSError) as e:
                    raise KumactlError(f"cannot use {self.ca_cert_file} as a CA file: {e}",
                                       "it must be a PEM certificate (the control plane's tls/ca.crt)") from None
            self._ssl = ctx
        return self._ssl

    def _full_url(self, path: str, query: Mapping[str, Any] | None) -> str:
        url = self.url + (path if path.startswith("/") else "/" + path)
        if query:
            q = {k: str(v) for k, v in query.items() if v is not None}
            if q:
                url += ("&" if "?" in url else "?") + urllib.parse.urlencode(q)
        return url

    def request(self, method: str, path: str, *, body: Any = None, query: Mapping[str, Any] | None = None,
                ok: tuple[int, ...] = ()) -> ApiResponse:
        """Send one request. Statuses >= 400 raise `ApiError` unless listed in `ok`."""
        url = self._full_url(path, query)
        data = None
        headers = {"Accept": "application/json", "User-Agent": "kumactl", **self.headers}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        context = self._ssl_context() if url.startswith("https:") else None
        log.debug("%s %s", method, url)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=context) as resp:
                return ApiResponse(resp.status, _decode(resp.read(), resp.headers.get("Content-Type", "")),
                                   dict(resp.headers.items()))
        except urllib.error.HTTPError as e:
            with e:
                parsed = _decode(e.read(), e.headers.get("Content-Type", "") if e.headers else "")
            log.debug("-> %s %s", e.code, parsed)
            if e.code in ok:
                return ApiResponse(e.code, parsed, dict(e.headers.items()) if e.headers else {})
            raise ApiError(e.code, parsed) from None
        except urllib.error.URLError as e:
            raise self._transport_error(e.reason) from None
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError, http.client.HTTPException) as e:
            raise self._transport_error(e) from None

    def _transport_error(self, reason: Any) -> KumactlError:
        where = f"the control plane at {self.url}" + (f" (context {self.name!r})" if self.name else "")
        if isinstance(reason, ssl.SSLCertVerificationError):
            detail = reason.verify_message or str(reason)
            ca = f"the CA in {self.ca_cert_file}" if self.ca_cert_file else "the system's trusted CAs"
            return KumactlError(f"TLS verification of {where} failed: {detail} (checked against {ca})",
                                "pass the control plane's CA certificate with --ca-cert-file "
                                "(kumactl config control-planes add --name NAME --address URL "
                                "--ca-cert-file <kuma-cp work dir>/tls/ca.crt --overwrite)")
        if isinstance(reason, ssl.SSLError):
            return KumactlError(f"TLS handshake with {where} failed: {reason.reason or reason}",
                                "is the address right (https:// for the HTTPS port, http:// for the HTTP port)?")
        if isinstance(reason, TimeoutError):
            return KumactlError(f"{where} did not answer within {self.timeout:g}s",
                                "is it overloaded or the address wrong? --api-timeout sets a longer wait")
        if isinstance(reason, socket.gaierror):
            return KumactlError(f"cannot resolve the host of {where}: {reason.strerror or reason}",
                                f"configure another control plane: {ADD_HINT}")
        if isinstance(reason, http.client.RemoteDisconnected) and self.url.startswith("http:"):
            return KumactlError(f"{where} closed the connection without answering",
                                "is this an HTTPS port? then the address starts with https:// "
                                "(and needs --ca-cert-file)")
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        return KumactlError(f"cannot reach {where}: {text}",
                            "is kuma-cp running there? To use another control plane: " + ADD_HINT)

    # --- helpers ------------------------------------------------------------------------------------------------

    def get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, query=query).body

    def list_all(self, path: str, query: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Pages of a list endpoint, following `next` (only its path and query: it stays on this server)."""
        page = self.get(path, query)
        while True:
            if not isinstance(page, Mapping) or not isinstance(page.get("items"), list):
                raise KumactlError(f"unexpected answer from {self.url}{path}: not a list")
            yield dict(page)
            nxt = page.get("next")
            if not nxt:
                return
            parts = urllib.parse.urlsplit(str(nxt))
            page = self.get(parts.path + (f"?{parts.query}" if parts.query else ""))


def _decode(raw: bytes, content_type: str) -> Any:
    text = raw.decode("utf-8", errors="replace")
    if "json" in content_type or text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
