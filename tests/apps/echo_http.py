"""An HTTP/1.1 echo server for integration tests (stdlib only).

Every answer is JSON (except HEAD, which has no body):

    {"service": NAME, "instance": "host:port", "method": ..., "path": ..., "query": ...,
     "headers": {lower-case name: value, ...}, "body": request body as text, "status": status sent}

so a test can tell which instance answered and which headers (e.g. `x-forwarded-client-cert`) arrived.
The response also carries `x-echo-service` and `x-echo-instance` headers.

Special paths:
    /status/<code>              answer with that status code
    /delay/<ms>                 sleep <ms> milliseconds, then answer 200
    /flaky/<n>?key=K            503 for the first n requests with key K (default key ""), 200 afterwards
    /healthz                    200 while healthy, 503 after /admin/health?state=fail
    /admin/health?state=fail|ok switch /healthz
    /admin/reset                forget the /flaky counters
Any other path answers 200.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: str) -> None:
        super().__init__(address, EchoHandler)
        self.service = service
        self.instance = f"{address[0]}:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.healthy = True
        self.flaky_counts: dict[str, int] = {}


class EchoHandler(BaseHTTPRequestHandler):
    server: EchoServer
    protocol_version = "HTTP/1.1"
    server_version = "echo-http"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            return self.rfile.read(length)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the empty line
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _headers_dict(self) -> dict[str, str]:
        """Request headers by lower-case name; repeated headers joined with ", " (as HTTP allows)."""
        out: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            out[key] = f"{out[key]}, {value}" if key in out else value
        return out

    def _handle(self) -> None:
        body = self._body()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = [p for p in url.path.split("/") if p]
        status = 200
        srv = self.server
        try:
            if parts[:1] == ["status"] and len(parts) >= 2:
                status = int(parts[1])
            elif parts[:1] == ["delay"] and len(parts) >= 2:
                time.sleep(int(parts[1]) / 1000.0)
            elif parts[:1] == ["flaky"] and len(parts) >= 2:
                failures = int(parts[1])
                key = query.get("key", [""])[0]
                with srv.lock:
                    seen = srv.flaky_counts.get(key, 0)
                    srv.flaky_counts[key] = seen + 1
                status = 503 if seen < failures else 200
            elif parts == ["healthz"]:
                status = 200 if srv.healthy else 503
            elif parts == ["admin", "health"]:
                state = query.get("state", [""])[0]
                if state not in ("ok", "fail"):
                    status = 400
                else:
                    srv.healthy = state == "ok"
            elif parts == ["admin", "reset"]:
                with srv.lock:
                    srv.flaky_counts.clear()
        except ValueError:
            status = 400
        if not 200 <= status <= 599:
            status = 400
        payload = {
            "service": srv.service,
            "instance": srv.instance,
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": self._headers_dict(),
            "body": body.decode("utf-8", "replace"),
            "status": status,
        }
        data = json.dumps(payload).encode()
        bodyless = status in (204, 304)
        self.send_response(status)
        if not bodyless:
            self.send_header("Content-Type", "application/json")
        if status != 204:
            self.send_header("Content-Length", "0" if bodyless else str(len(data)))
        self.send_header("x-echo-service", srv.service)
        self.send_header("x-echo-instance", srv.instance)
        self.end_headers()
        if self.command != "HEAD" and not bodyless:
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="echo", help="service name reported in every answer")
    args = parser.parse_args(argv)
    server = EchoServer((args.host, args.port), args.name)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"echo_http {args.name} listening on {server.instance}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
