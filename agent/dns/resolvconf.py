"""resolv.conf as glibc reads it: the nameservers in it, ours written in its place, and atomic file swaps.

`snapshot(path)` records exactly what is there (a file's bytes, mode and owner; a symlink's target; or
nothing), `put_back(path, snap)` recreates it, and `write_atomic` replaces a path (a symlink included: the
link itself is replaced, never the file it points to) by renaming a finished temporary file over it.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARK = "# kuma-dp"


def nameservers(text: str) -> list[str]:
    """The `nameserver` addresses, in order (glibc uses at most 3; an upstream list may use more)."""
    out = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
            except ValueError:
                continue
    return out


def render(original: str, listen_host: str, state_file: Path) -> str:
    """Our resolv.conf: only the stub as nameserver; the original's search/domain/options/sortlist kept."""
    kept = [line for line in original.splitlines()
            if line.split() and line.split()[0] in ("search", "domain", "options", "sortlist")]
    return "\n".join([
        f"{MARK}: this host's resolver is the kuma-dp DNS stub: <service>.mesh from the mesh, every other name",
        f"{MARK}: from the servers the original named. The original is kept in {state_file};",
        f"{MARK}: kuma-dp restores it when it stops, and `kuma-dp dns restore` does it by hand.",
        f"nameserver {listen_host}",
        *kept,
    ]) + "\n"


@dataclass(frozen=True)
class Snapshot:
    kind: str  # "file" | "symlink" | "absent"
    content: bytes = b""  # the file's bytes, or what the symlink pointed to (for its nameservers)
    target: str = ""
    mode: int = 0o644
    uid: int = -1
    gid: int = -1

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "content": base64.b64encode(self.content).decode(), "target": self.target,
                "mode": self.mode, "uid": self.uid, "gid": self.gid}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Snapshot:
        return cls(str(doc["kind"]), base64.b64decode(doc.get("content", "")), str(doc.get("target", "")),
                   int(doc.get("mode", 0o644)), int(doc.get("uid", -1)), int(doc.get("gid", -1)))

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def snapshot(path: Path) -> Snapshot:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Snapshot("absent")
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        try:
            content = path.read_bytes()
        except OSError:
            content = b""  # a dangling link (resolved not running yet)
        return Snapshot("symlink", content, target, 0o777, st.st_uid, st.st_gid)
    return Snapshot("file", path.read_bytes(), "", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.kuma-dp.{os.getpid()}.tmp")


def write_atomic(path: Path, content: bytes, mode: int = 0o644, uid: int = -1, gid: int = -1) -> None:
    tmp = _temp(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, content)
            os.fchmod(fd, mode)
            if (uid, gid) != (-1, -1) and os.geteuid() == 0:
                os.fchown(fd, uid, gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def symlink_atomic(path: Path, target: str) -> None:
    tmp = _temp(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def put_back(path: Path, snap: Snapshot) -> None:
    if snap.kind == "file":
        write_atomic(path, snap.content, snap.mode, snap.uid, snap.gid)
    elif snap.kind == "symlink":
        symlink_atomic(path, snap.target)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _fsync_dir(path.parent)
