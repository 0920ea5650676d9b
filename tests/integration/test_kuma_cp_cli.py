"""`kuma-cp` as operators (and Ansible handlers) run it: validate, refuse bad config, signals, ports in use."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess, CpStartError, start_cp


def kuma_cp(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KUMA_")}
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_validate_accepts_a_good_file(tmp_path: Path) -> None:
    cfg = tmp_path / "kuma-cp.yaml"
    cfg.write_text("store:\n  type: memory\napiServer:\n  http:\n    port: 15681\n")
    r = kuma_cp("validate", "-c", str(cfg))
    assert r.returncode == 0 and "configuration is valid" in r.stdout


def test_validate_names_every_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "kuma-cp.yaml"
    cfg.write_text("store:\n  type: cassandra\ndpServer:\n  port: 99999\nbogus: 1\n")
    r = kuma_cp("validate", "-c", str(cfg))
    assert r.returncode == 2
    assert "store.type: must be one of sqlite, postgres, memory" in r.stderr
    assert "dpServer.port: port 99999 must be in the range" in r.stderr
    assert "bogus: unknown setting" in r.stderr


def test_run_refuses_bad_env_and_says_which(tmp_path: Path) -> None:
    r = kuma_cp("run", env={"KUMA_GENERAL_WORK_DIR": str(tmp_path), "KUMA_DIAGNOSTICS_SERVER_PORT": "-1"})
    assert r.returncode == 2
    assert "diagnostics.serverPort (from KUMA_DIAGNOSTICS_SERVER_PORT='-1')" in r.stderr
    assert not (tmp_path / "kuma.db").exists()  # nothing started, nothing written


def test_run_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            start_cp(tmp_path, KUMA_API_SERVER_HTTP_PORT=str(port), timeout=30)
        except CpStartError as e:
            assert f"cannot listen on 127.0.0.1:{port} for the HTTP API" in str(e)
        else:
            raise AssertionError("kuma-cp started although its port was taken")


def test_sigint_stops_cleanly_and_state_survives(cp_factory: Callable[..., CpProcess]) -> None:
    cp = cp_factory()
    assert call("PUT", cp.http_url + "/zones/kept", {"type": "Zone", "name": "kept"}).status == 201
    os.kill(cp.pid, signal.SIGINT)
    assert cp.proc.wait(timeout=15) == 0
    assert "control plane stopped" in cp.logs()
    # Same work dir again: the sqlite store kept the zone; the TLS CA is reused, not regenerated.
    ca_before = cp.ca_file.read_bytes()
    again = cp_factory(KUMA_GENERAL_WORK_DIR=str(cp.work_dir))
    assert call("GET", again.http_url + "/zones/kept").status == 200
    assert (Path(again.env["KUMA_GENERAL_WORK_DIR"]) / "tls" / "ca.crt").read_bytes() == ca_before
