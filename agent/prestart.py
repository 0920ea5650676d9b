"""Start the bootstrap worker process (agent/bootstrap_worker.py), optionally before anything else.

`kuma-dp run` calls `prestart()` first thing, before it imports asyncio, psutil or its own modules: the
worker's imports (~150 ms of pydantic models and grpcio) then overlap with kuma-dp's start instead of
following it (bench/agent.py measures the difference). Light on purpose: os, subprocess, sys only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.pdeathsig import die_with_parent

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
ARGV = [sys.executable, "-m", "agent.bootstrap_worker"]

_prestarted: subprocess.Popen[bytes] | None = None


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("GRPC_VERBOSITY", "ERROR")  # the worker explains TLS failures itself, once
    return subprocess.Popen(ARGV, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            preexec_fn=die_with_parent(), process_group=0, close_fds=True)


def prestart(env: dict[str, str]) -> None:
    global _prestarted
    _prestarted = start(env)


def take() -> subprocess.Popen[bytes] | None:
    """The pre-started worker, once (None if there is none or it already exited)."""
    global _prestarted
    proc, _prestarted = _prestarted, None
    return proc if proc is not None and proc.poll() is None else None
