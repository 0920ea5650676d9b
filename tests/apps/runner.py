"""Start the test apps as subprocesses, and stop them by PID.

    start_app(module, *args, port=None, host="127.0.0.1", log_dir=None, timeout=15.0) -> App
    app_factory   (pytest fixture, function scope)   `app_factory(module, *args, port=None, ...)` -> App;
                                                     everything it started is stopped when the test ends

`module` is a module path (`tests.apps.echo_http`) or a short name in this package (`echo_http`). The app is
started as `python -m MODULE --port PORT [--host HOST] *args`; with `port=None` a free loopback port is chosen.
`start_app` returns once the port accepts TCP connections. An `App` has `.port`, `.host`, `.address`
(`"host:port"`), `.pid`, `.log()`, `.alive()`, `.stop()`, and is a context manager.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port
from tests.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

__all__ = ["App", "AppStartError", "app_factory", "start_app"]


class AppStartError(RuntimeError):
    pass


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class App:
    module: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_file: Path
    _owned_dir: Path | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int = 50) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-tail:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM by PID, SIGKILL after `timeout`; returns the exit status. Safe to call twice."""
        if self._stopped:
            assert self.returncode is not None
            return self.returncode
        self._stopped = True
        self.returncode = stop_process(self.proc, timeout)
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
        return self.returncode

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _module_name(module: str) -> str:
    return module if "." in module else f"{__package__}.{module}"


def start_app(module: str, *args: str, port: int | None = None, host: str = "127.0.0.1",
              log_dir: str | os.PathLike[str] | None = None, timeout: float = START_TIMEOUT,
              env: dict[str, str] | None = None) -> App:
    """Run `python -m module --port PORT [--host HOST] *args` and wait until the port accepts connections.

    `--host` is passed only when `host` is not 127.0.0.1 (the apps' default). The app's stdout/stderr go to
    `<log_dir>/<name>-<port>.log` (with `log_dir=None`, a temporary directory removed by `stop()`). On failure
    the process is stopped and the error carries its log.
    """
    module = _module_name(module)
    port = free_port(host) if port is None else port
    argv = [sys.executable, "-m", module, "--port", str(port)]
    if host != "127.0.0.1":
        argv += ["--host", host]
    argv += [str(a) for a in args]
    owned = None if log_dir is not None else Path(tempfile.mkdtemp(prefix="kuma-vm-app-"))
    directory = Path(log_dir) if log_dir is not None else owned
    assert directory is not None
    directory.mkdir(parents=True, exist_ok=True)
    log_file = directory / f"{module.rsplit('.', 1)[-1]}-{port}.log"
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p)
    full_env.update(env or {})
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    app = App(module=module, host=host, port=port, proc=proc, log_file=log_file, _owned_dir=owned)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise AppStartError(f"{module} (port {port}) exited with status {proc.returncode} before it "
                                    f"listened:\n{app.log()}")
            if port_open(host, port):
                return app
            if time.monotonic() > deadline:
                raise AppStartError(f"{module} (pid {proc.pid}) did not listen on {host}:{port} within "
                                    f"{timeout:g}s:\n{app.log()}")
            time.sleep(0.05)
    except BaseException:
        app.stop()
        raise


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """`app_factory(module, *args, port=None, **kwargs)`: start a test app; all are stopped after the test."""
    started: list[App] = []

    def factory(module: str, *args: str, port: int | None = None, **kwargs: Any) -> App:
        kwargs.setdefault("log_dir", tmp_path / "apps")
        app = start_app(module, *args, port=port, **kwargs)
        started.append(app)
        return app

    try:
        yield factory
    finally:
        for app in reversed(started):
            app.stop()
