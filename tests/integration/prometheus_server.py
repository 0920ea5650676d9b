"""A real Prometheus (Debian's `prometheus` binary) for tests: loopback only, a temporary config and storage
directory, a free port; stopped by its PID when the test ends, whatever happened.

    prom = start_prometheus(tmp_path, scrape_configs=[...])
    prom.targets()           # /api/v1/targets activeTargets
    prom.query("up")         # /api/v1/query result vector
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.integration.mesh_harness import eventually
from tests.ports import free_port
from tests.requirements import unavailable


@dataclass
class PrometheusProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as r:
            body = json.loads(r.read())
        assert body.get("status") == "success", body
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/targets", state="active")["activeTargets"])

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/query", query=expr)["result"])

    def logs(self, tail: int = 40) -> str:
        lines = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def prometheus_binary() -> str:
    exe = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if exe is None:
        unavailable("prometheus", "Debian's prometheus is not installed (scripts/setup.sh installs it)")
    return exe


@contextlib.contextmanager
def running_prometheus(directory: Path, scrape_configs: list[dict[str, Any]]) -> Iterator[PrometheusProcess]:
    """Prometheus with these scrape configs (1 s global intervals), ready when the context is entered."""
    exe = prometheus_binary()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                      "scrape_configs": scrape_configs}))
    port = free_port()
    log_file = directory / "prometheus.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([exe, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=debug"],
                                cwd=directory, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    prom = PrometheusProcess(proc, port, log_file)
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited {proc.returncode}:\n{prom.logs()}"
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        eventually(ready, timeout=30, message="prometheus ready")
        yield prom
    finally:
        prom.stop()
        print(f"--- prometheus (pid {proc.pid}) exited {proc.returncode}; log tail ---\n{prom.logs(20)}")
