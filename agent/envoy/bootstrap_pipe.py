"""Envoy's bootstrap handed over a pipe, so that Envoy can be spawned before its bootstrap exists.

Why: Envoy spends ~45 ms of its ~70 ms start (on this project's bench machine) loading its binary and
initialising, before it reads the bootstrap at all. kuma-dp spawns the first Envoy as soon as its runtime
directory exists, with `-c /dev/fd/N`, the read end of this pipe: Envoy initialises while kuma-dp checks its
inputs and asks the control plane, then blocks reading the pipe until kuma-dp writes the answer and closes it.
Envoy allows `/dev/fd/*` config paths for exactly this ("config passed in a file descriptor from a bootstrap
script via exec", Filesystem::illegalPath) and parses a path without a .yaml/.pb extension as JSON.

Delivery never blocks: the pipe is grown to hold the whole bootstrap (F_SETPIPE_SZ; a few KB in practice,
up to the host's pipe-max-size, 1 MiB by default) and written without blocking. When it cannot be delivered
whole (too big, or Envoy already gone) the caller kills that Envoy and spawns one from the bootstrap file, as
every restart does.
"""

from __future__ import annotations

import fcntl
import os


class BootstrapPipe:
    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()  # both close-on-exec: the read end is passed explicitly
        os.set_blocking(self.write_fd, False)

    @property
    def config_path(self) -> str:
        """Envoy's `-c` (the same fd number in the child: subprocess's pass_fds keeps it)."""
        return f"/dev/fd/{self.read_fd}"

    def spawned(self) -> None:
        """The child holds the read end now; kuma-dp's copy goes, so that Envoy's exit breaks the pipe."""
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def deliver(self, bootstrap: bytes) -> bool:
        """Write the whole bootstrap and close the pipe: Envoy reads it to its end. False when it does not fit
        the pipe or Envoy has gone; then the pipe stays open, so that the caller kills Envoy before closing
        it (`close`) and Envoy never reads a partial document."""
        try:
            if len(bootstrap) > fcntl.fcntl(self.write_fd, fcntl.F_GETPIPE_SZ):
                fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, len(bootstrap))
            if len(bootstrap) > fcntl.fcntl(self.write_fd, fcntl.F_GETPIPE_SZ):
                return False
            written = os.write(self.write_fd, bootstrap)  # into an empty pipe that holds it: all at once
        except OSError:  # EPERM: larger than the host's pipe-max-size; EPIPE: Envoy exited
            return False
        if written != len(bootstrap):
            return False
        self.close()
        return True

    def close(self) -> None:
        self.spawned()
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
