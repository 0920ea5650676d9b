"""The private runtime directory of one dataplane: the Envoy bootstrap (it carries the dataplane token),
Envoy's admin address, pid and lock files.

Where (first that applies):
1. `--config-dir` / `--runtime-dir` / `$KUMA_DATAPLANE_RUNTIME_CONFIG_DIR`: exactly that directory;
2. `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`, already private to the unit): that directory;
3. as root: `/run/kuma-dp/<mesh>.<name>`;
4. otherwise: `$XDG_RUNTIME_DIR/kuma-dp/<mesh>.<name>`, else a new temporary directory.

It is made mode 0700 (and refused if another user owns it). A lock file (`flock`) makes a second kuma-dp
for the same dataplane on the same host stop with a clear message instead of fighting over files and ports.
On exit kuma-dp removes what it wrote; a directory it created itself (3, 4) is removed entirely.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BOOTSTRAP = "bootstrap.json"
ADMIN_ADDRESS = "admin-address"
ENVOY_PID = "envoy.pid"
LOCK = "kuma-dp.lock"
READINESS = "readiness-address"
FILES = (BOOTSTRAP, ADMIN_ADDRESS, ENVOY_PID, READINESS, LOCK)


class RuntimeDirError(Exception):
    pass


@dataclass
class RuntimeDir:
    path: Path
    owned: bool  # created by us: removed entirely on exit
    _lock_fd: int | None = field(default=None, repr=False)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_private(self, name: str, data: bytes) -> Path:
        """Write atomically, mode 0600."""
        target = self.file(name)
        tmp = self.path / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        return target

    def lock(self, label: str) -> None:
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode().strip() or "?"
            finally:
                os.close(fd)
            other = ("another name" if self.owned  # a directory named after the dataplane
                     else "another runtime directory (--runtime-dir; systemd: another unit instance)")
            raise RuntimeDirError(f"another kuma-dp (pid {holder}) is already running {label} with runtime "
                                  f"directory {self.path}: stop it first, or give this one {other}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def cleanup(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            for name in FILES:
                with contextlib.suppress(OSError):
                    self.file(name).unlink()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None


def _safe_component(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "_"


def fixed(explicit: str | None, env: dict[str, str]) -> RuntimeDir | None:
    """The directory when it does not depend on the dataplane's name (1, 2: a flag, or systemd's), made;
    None otherwise. kuma-dp spawns Envoy in it before reading the definition (agent/head_start.py)."""
    if explicit:
        return _make(Path(explicit), owned=False)
    if env.get("RUNTIME_DIRECTORY"):
        return _make(Path(env["RUNTIME_DIRECTORY"].split(":")[0]), owned=False)
    return None


def prepare(explicit: str | None, mesh: str, name: str, *, env: dict[str, str] | None = None) -> RuntimeDir:
    env = dict(os.environ) if env is None else env
    leaf = _safe_component(f"{mesh}.{name}")
    if (given := fixed(explicit, env)) is not None:
        return given
    if os.geteuid() == 0:
        base = Path("/run/kuma-dp")
        base.mkdir(mode=0o755, exist_ok=True)
        return _make(base / leaf, owned=True)
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir() and os.access(xdg, os.W_OK):
        base = Path(xdg) / "kuma-dp"
        base.mkdir(mode=0o700, exist_ok=True)
        return _make(base / leaf, owned=True)
    return RuntimeDir(Path(tempfile.mkdtemp(prefix=f"kuma-dp-{leaf}-")), owned=True)


def _make(path: Path, *, owned: bool) -> RuntimeDir:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
        if st.st_uid != os.geteuid():
            raise RuntimeDirError(f"runtime directory {path} belongs to uid {st.st_uid}, not to this user "
                                  f"({os.geteuid()}): the Envoy bootstrap holds the dataplane token, so kuma-dp "
                                  "uses only a directory of its own")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
    except PermissionError as e:
        raise RuntimeDirError(f"cannot create the runtime directory {path}: {e.strerror} (pass --config-dir "
                              "with a directory this user may write)") from None
    except OSError as e:
        raise RuntimeDirError(f"cannot use the runtime directory {path}: {e.strerror or e}") from None
    return RuntimeDir(path, owned=owned)
