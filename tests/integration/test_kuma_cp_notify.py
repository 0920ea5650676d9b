"""kuma-cp under systemd's notify protocol: READY=1 once it serves, STOPPING=1 when it stops, read from a
real NOTIFY_SOCKET datagram socket the test owns."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.integration.api_client import call
from tests.integration.cp_process import start_cp


def test_ready_and_stopping_reach_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        cp = start_cp(tmp_path / "cp", NOTIFY_SOCKET=str(path))
        try:
            ready = sock.recv(4096).decode()
            assert "READY=1" in ready and "STATUS=serving" in ready
            assert call("GET", cp.diagnostics_url + "/ready").status == 200
        finally:
            cp.stop()
        assert "STOPPING=1" in sock.recv(4096).decode()
