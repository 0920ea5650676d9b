"""Stopping a process a test started: by its PID only, SIGTERM first, SIGKILL after a timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then SIGKILL if it is still running after `timeout`; returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    assert proc.returncode is not None, f"pid {proc.pid} did not exit"
    return proc.returncode
