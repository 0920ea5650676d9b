"""`PR_SET_PDEATHSIG=SIGKILL` for a child between fork and exec: the kernel kills the child the moment its
parent (kuma-dp) dies, even by SIGKILL. Kept apart from agent/proc.py and light to import (os, signal,
ctypes only), so `kuma-dp run` can start its bootstrap worker before loading anything else.

The child also re-checks its parent after `prctl`, closing the window where the parent dies between fork and
prctl. PDEATHSIG follows the *thread* that forked: kuma-dp forks from its main thread only.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's prctl included
    _libc.prctl  # noqa: B018  (fail here, not in the child, if it is missing)
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _libc = None


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen; call it in the parent (it captures the parent's pid)."""
    libc, parent_pid = _libc, os.getpid()

    def preexec() -> None:  # runs in the child after fork(): keep it to async-signal-safe calls
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
