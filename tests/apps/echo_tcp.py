"""A TCP echo server for integration tests (stdlib only).

On every connection it first sends `BANNER\\n` (default `echo-tcp 127.0.0.1:PORT`), then echoes back every
byte it receives until the peer closes. A test thus sees which instance it reached, and that a long-lived
connection survives (e.g. a config change in Envoy).

    python -m tests.apps.echo_tcp --port P [--banner NAME] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import signal
import socket
import socketserver
import sys
import threading
from typing import Any


class EchoTcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], banner: str | None) -> None:
        super().__init__(address, EchoTcpHandler)
        self.banner = banner or f"echo-tcp {address[0]}:{self.server_address[1]}"


class EchoTcpHandler(socketserver.BaseRequestHandler):
    server: EchoTcpServer
    request: socket.socket

    def handle(self) -> None:
        sock = self.request
        try:
            sock.sendall(self.server.banner.encode() + b"\n")
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                sock.sendall(data)
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--banner", default=None, help="first line sent on every connection")
    args = parser.parse_args(argv)
    server = EchoTcpServer((args.host, args.port), args.banner)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"echo_tcp listening on {args.host}:{server.server_address[1]} banner={server.banner!r}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
