"""Child processes that cannot outlive kuma-dp.

Every child (Envoy, the bootstrap worker) is started with `PR_SET_PDEATHSIG=SIGKILL` (Linux `prctl`, set in
the child between fork and exec), so the kernel kills it the moment kuma-dp dies, even by SIGKILL, when no
cleanup code can run. The child also re-checks its parent after `prctl`, closing the window where kuma-dp
dies between fork and prctl. Children get their own process group: a terminal's Ctrl-C reaches only
kuma-dp, which then drains Envoy in order instead of Envoy dying mid-request.

`Child.wait()` is asynchronous without helper threads (asyncio is imported there: kuma-dp spawns Envoy before
its event loop exists, agent/head_start.py): it watches a pidfd (Linux >= 5.3) with the event
loop, or polls when pidfds are unavailable. (A thread-free parent matters: forking while another thread
holds a lock can deadlock the child before exec.)

Note: PDEATHSIG reaches only the direct child. A `--binary-path` wrapper script must `exec` Envoy (as
`exec envoy "$@"`), otherwise killing kuma-dp with SIGKILL would leave the wrapper's Envoy behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.pdeathsig import die_with_parent

if TYPE_CHECKING:
    import asyncio

    import psutil


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    argv: list[str]
    _pidfd: int | None = field(default=None, repr=False)
    _exited: asyncio.Future[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def wait(self) -> int:
        """The exit status (negative: killed by that signal), without blocking the event loop."""
        import asyncio

        if self.proc.poll() is not None:
            return self.proc.returncode
        if self._pidfd is None:
            while self.proc.poll() is None:
                await asyncio.sleep(0.05)
            return self.proc.returncode
        if self._exited is None:  # one reader on the pidfd, shared by every waiter
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()
            pidfd = self._pidfd

            def on_readable() -> None:
                if self.proc.poll() is not None:
                    loop.remove_reader(pidfd)
                    if not exited.done():
                        exited.set_result(None)

            loop.add_reader(pidfd, on_readable)
            self._exited = exited
        await asyncio.shield(self._exited)
        return self.proc.wait()

    def send_signal(self, sig: int, *, group: bool = True) -> None:
        """Signal the child (and its process group: a wrapper and what it started)."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    async def terminate(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL (to the child and every descendant) after `timeout`; returns the status."""
        import asyncio

        if self.proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.wait(), timeout)
            except TimeoutError:
                self.kill_tree()
        return await self.wait()

    def kill_tree(self) -> None:
        """SIGKILL the child and all its descendants (found with psutil), now."""
        import psutil  # loaded when needed: not on kuma-dp's start-up path
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        self.send_signal(signal.SIGKILL)
        for p in descendants:
            with contextlib.suppress(psutil.Error):
                p.kill()

    def close(self) -> None:
        if self._exited is not None and not self._exited.done():
            return  # still watched: closed once the process is gone
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None


def spawn(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
          stdin: int | None = subprocess.DEVNULL, stdout: int | None = None,
          stderr: int | None = None, pass_fds: Sequence[int] = ()) -> Child:
    """Start `argv` as a child that dies with kuma-dp, in its own process group."""
    proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                            preexec_fn=die_with_parent(), process_group=0, close_fds=True, pass_fds=pass_fds)
    return adopt(proc)


def adopt(proc: subprocess.Popen[bytes]) -> Child:
    """A `Child` for a process started elsewhere (as a child of this process)."""
    pidfd = None
    if hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(proc.pid)
    return Child(proc, [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)], pidfd)


def process_is(pid: int, needle: str) -> psutil.Process | None:
    """The live process `pid` if its command line contains `needle` (e.g. our bootstrap path), else None."""
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p if any(needle in part for part in p.cmdline()) else None
    except psutil.Error:
        return None
