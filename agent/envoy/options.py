"""Envoy's command line as kuma-dp runs it (agent/supervisor.py says why each flag). Its own module: kuma-dp's
head start (agent/head_start.py) spawns the first Envoy before the supervisor, and asyncio, are loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class EnvoyOptions:
    binary: Path
    bootstrap_file: Path
    admin_address_file: Path
    concurrency: int
    drain_time: float
    log_level: str
    component_log_level: str | None = None

    def argv(self, config_path: str | None = None) -> list[str]:
        """Envoy's command line; `config_path` instead of the bootstrap file for the first Envoy, which reads
        its bootstrap from a pipe (agent/envoy/bootstrap_pipe.py)."""
        argv = [str(self.binary), "-c", config_path or str(self.bootstrap_file),
                "--disable-hot-restart",
                "--drain-time-s", str(math.ceil(self.drain_time)),
                "--drain-strategy", "immediate",
                "--log-level", self.log_level,
                "--concurrency", str(self.concurrency),
                "--admin-address-path", str(self.admin_address_file)]
        if self.component_log_level:
            argv += ["--component-log-level", self.component_log_level]
        return argv
