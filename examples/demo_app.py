"""A demo service for scripts/mesh-up.sh (standard library only).

    python examples/demo_app.py --name web --port 18001 [--upstream http://127.0.0.1:10002]

GET /       -> JSON: {"service", "caller", "upstream"}: `caller` is the SPIFFE identity of whoever called
               this service through the mesh (the URI in the `x-forwarded-client-cert` header its Envoy
               added after the mTLS handshake), or null when called from outside the mesh; with
               --upstream, `upstream` is that service's own answer (called through this service's Envoy).
GET /trace  -> the same, as text: one line per hop.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_URI = re.compile(r"URI=([^;,]+)")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def caller(xfcc: str | None) -> str | None:
    """The caller's SPIFFE identity from x-forwarded-client-cert (the URI SANs of the client certificate
    this service's Envoy verified), or its first URI if none is a SPIFFE ID."""
    found = _URI.findall(xfcc or "")
    return next((u for u in found if u.startswith("spiffe://")), found[0] if found else None)


def render(answer: dict[str, Any], depth: int = 0) -> list[str]:
    who = answer.get("caller") or "outside the mesh (no client certificate)"
    line = f"{'   ' * depth}{'└─ ' if depth else ''}{answer['service']:<8} answered; caller: {who}"
    lines = [line]
    up = answer.get("upstream")
    if isinstance(up, dict) and "service" in up:
        lines += render(up, depth + 1)
    elif up is not None:
        lines.append(f"{'   ' * (depth + 1)}└─ upstream failed: {up}")
    return lines


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-app"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        cfg = self.server.cfg  # type: ignore[attr-defined]
        answer: dict[str, Any] = {"service": cfg.name, "caller": caller(self.headers.get("x-forwarded-client-cert")),
                                  "upstream": None}
        if cfg.upstream:
            try:
                with _OPENER.open(cfg.upstream + "/", timeout=5) as r:
                    answer["upstream"] = json.loads(r.read())
            except urllib.error.HTTPError as e:
                answer["upstream"] = f"HTTP {e.code} from {cfg.upstream}: {e.read()[:200].decode(errors='replace')}"
            except (OSError, ValueError) as e:
                answer["upstream"] = f"{cfg.upstream}: {e}"
        if self.path.startswith("/trace"):
            body, ctype = ("\n".join(render(answer)) + "\n").encode(), "text/plain; charset=utf-8"
        else:
            body, ctype = json.dumps(answer).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description="demo service for scripts/mesh-up.sh")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream", default=None, help="URL of the next service (this service's outbound)")
    cfg = parser.parse_args()
    server = ThreadingHTTPServer((cfg.host, cfg.port), Handler)
    server.daemon_threads = True
    server.cfg = cfg  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
