"""The named pipe Envoy writes MeshAccessLog's Tcp backend lines to (path: kuma_shared.access_logs), created
before Envoy starts: an Envoy that found no pipe there would create a plain file and the lines would never
reach kuma-dp. Separate from agent/access_logs.py (the asyncio reader and senders) because kuma-dp creates it
before its event loop exists (agent/head_start.py)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pipe:
    path: Path
    fd: int  # open read-write and non-blocking: see create()
    inode: int  # which pipe is ours when another kuma-dp of the same dataplane replaced it

    def close(self) -> None:
        """Close it (once), and remove it unless another kuma-dp of the same dataplane replaced it since."""
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino == self.inode:
                self.path.unlink()


def create(path: str | Path) -> Pipe:
    """Create the pipe (replacing a stale one) and open it. Read-write, so that it neither blocks waiting for
    Envoy nor reads end-of-file whenever Envoy reopens it. OSError when it cannot be made."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    return Pipe(path, fd, os.fstat(fd).st_ino)
