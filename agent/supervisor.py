"""Envoy as a supervised child of kuma-dp.

- Started with `--disable-hot-restart` (no shared memory left in /dev/shm, no base-id clashes between
  dataplanes), `--drain-strategy immediate`, the chosen `--concurrency`, log level and drain time, and
  `--admin-address-path` in the runtime directory. It dies with kuma-dp (`agent.proc`: PR_SET_PDEATHSIG).
- Its stdout/stderr pass through kuma-dp's stderr unchanged (Envoy's own log format), and the last lines are
  kept to explain a failure.
- An unexpected exit is restarted with exponential backoff (`KUMA_DATAPLANE_RUNTIME_ENVOY_RESTART_BACKOFF`,
  doubling up to 30 s). A run that lasted `STABLE_AFTER` seconds resets the count; more than
  `KUMA_DATAPLANE_RUNTIME_ENVOY_MAX_RESTARTS` consecutive deaths raise `EnvoyCrashLoop` and kuma-dp exits 1
  for systemd's restart policy to take over.
- An Envoy that exits before ever getting live because it rejected its configuration raises
  `EnvoyConfigRejected` at once (restarting with the same bootstrap cannot help), with Envoy's own reason.
- A hung Envoy counts as dead: the `hung(generation, started_at)` callback (kuma-dp's: not LIVE within
  `KUMA_DATAPLANE_RUNTIME_ENVOY_START_TIMEOUT` of starting, or its admin API silent for
  `KUMA_DATAPLANE_RUNTIME_ENVOY_LIVENESS_TIMEOUT` once live) is checked every `HANG_CHECK` seconds; a verdict
  kills Envoy's process tree and the restart policy above applies, with the verdict as the reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable

from agent.config import ENVOY_RESTART_BACKOFF_CAP
from agent.envoy.options import EnvoyOptions as EnvoyOptions  # kept importable here, beside its supervisor
from agent.proc import Child
from agent.start_steps import spawn_envoy

log = logging.getLogger("kuma-dp.envoy")

STABLE_AFTER = 30.0
HANG_CHECK = 0.5
TAIL_LINES = 40
_REJECTED_MARKERS = ("error initializing config", "unable to parse", "[critical]", "error:")


class EnvoyFailure(Exception):
    def __init__(self, message: str, tail: list[str]) -> None:
        super().__init__(message)
        self.message, self.tail = message, tail


class EnvoyCrashLoop(EnvoyFailure):
    pass


class EnvoyConfigRejected(EnvoyFailure):
    pass


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def rejection_reason(tail: list[str]) -> str | None:
    """Envoy's own reason when its output says it refused to start: a bad bootstrap or argument (not a port
    that was taken, which a restart on another port can fix)."""
    for line in reversed(tail):
        low = line.lower()
        if any(m in low for m in _REJECTED_MARKERS) and "address already in use" not in low:
            return line.strip()
    return None


class Supervisor:
    def __init__(self, options: EnvoyOptions, *, env: dict[str, str], max_restarts: int, backoff: float,
                 before_start: Callable[[], None] | None = None,
                 on_started: Callable[[Child, int], None] | None = None,
                 on_exited: Callable[[int, float, float | None, int], None] | None = None,
                 was_live: Callable[[int], bool] | None = None,
                 hung: Callable[[int, float], str | None] | None = None) -> None:
        self.options, self.env = options, env
        self.max_restarts, self.backoff = max_restarts, backoff
        self.before_start, self.on_started, self.on_exited = before_start, on_started, on_exited
        self.was_live = was_live or (lambda generation: False)
        self.hung = hung or (lambda generation, started_at: None)
        self.hang_reason: str | None = None  # why the current Envoy was killed as hung
        self.child: Child | None = None
        self.generation = 0
        self.failures = 0
        self.restarts = 0
        self.stopping = asyncio.Event()
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._pump: asyncio.Task[None] | None = None
        self.started_at = 0.0

    async def start(self) -> Child:
        if self.before_start is not None:
            self.before_start()
        child = spawn_envoy(self.options, self.env)
        self.adopt(child, time.monotonic())
        return child

    def adopt(self, child: Child, started_at: float) -> None:
        """Supervise `child` as the next Envoy: one `start()` spawned, or the first one, spawned by kuma-dp's
        head start (agent/head_start.py) as `start()` spawns, its output on a pipe, but reading its bootstrap
        from a pipe (`options.argv(config_path=...)`); `started_at` is when it was handed the bootstrap."""
        self.tail.clear()
        self.hang_reason = None
        self.generation += 1
        self.child, self.started_at = child, started_at
        self._pump = asyncio.create_task(self._pump_output(child))
        log.info("Envoy started", extra={"pid": child.pid, "generation": self.generation})
        if self.on_started is not None:
            self.on_started(child, self.generation)

    async def _pump_output(self, child: Child) -> None:
        stream = child.proc.stdout
        assert stream is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
        out = sys.stderr.buffer
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line over the limit: pass what we have
                    line = await reader.read(1 << 16)
                if not line:
                    return
                self.tail.append(line.decode("utf-8", "replace").rstrip("\n"))
                with contextlib.suppress(OSError, ValueError):
                    out.write(line)
                    out.flush()
        finally:
            transport.close()

    async def run(self) -> None:
        """Keep Envoy running until `stop()`; raises EnvoyCrashLoop / EnvoyConfigRejected."""
        while not self.stopping.is_set():
            child = self.child if self.child is not None and self.child.alive() else await self.start()
            code = await self._wait_exit_or_hang(child)
            if self._pump is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
            child.close()
            if self.stopping.is_set():
                return
            ran = time.monotonic() - self.started_at
            tail = list(self.tail)
            how = f"hung ({self.hang_reason}) and was killed" if self.hang_reason else describe_exit(code)
            reason = None if code != 1 or self.was_live(self.generation) else rejection_reason(tail)
            if reason is not None:
                raise EnvoyConfigRejected(f"Envoy rejected its configuration ({describe_exit(code)}): {reason}",
                                          tail)
            if ran >= STABLE_AFTER:
                self.failures = 0
            self.failures += 1
            if self.failures > self.max_restarts:
                if self.on_exited is not None:
                    self.on_exited(code, ran, None, self.failures)
                raise EnvoyCrashLoop(f"Envoy {how} after {ran:.1f}s; it died {self.failures} times "
                                     f"in a row (limit {self.max_restarts}): giving up", tail)
            delay = min(self.backoff * 2 ** (self.failures - 1), max(ENVOY_RESTART_BACKOFF_CAP, self.backoff))
            log.warning("Envoy exited unexpectedly; restarting",
                        extra={"pid": child.pid, "how": how, "ran_s": round(ran, 1),
                               "restart_in_s": delay, "failures": self.failures})
            if self.on_exited is not None:
                self.on_exited(code, ran, delay, self.failures)
            stopping = asyncio.ensure_future(self.stopping.wait())
            try:
                await asyncio.wait({stopping}, timeout=delay)  # not wait_for: it can swallow a cancellation
            finally:
                stopping.cancel()
            if self.stopping.is_set():
                return
            self.restarts += 1
            await self.start()

    async def _wait_exit_or_hang(self, child: Child) -> int:
        """Envoy's exit status; an Envoy found hung is killed first (its status is then SIGKILL's)."""
        exited = asyncio.ensure_future(child.wait())
        try:
            while True:
                done, _ = await asyncio.wait({exited}, timeout=HANG_CHECK)
                if done:
                    return exited.result()
                if self.stopping.is_set():
                    continue  # being stopped on purpose: stop() ends it
                reason = self.hung(self.generation, self.started_at)
                if reason is not None:
                    self.hang_reason = reason
                    log.error("Envoy is hung; killing it", extra={"pid": child.pid, "reason": reason,
                                                                  "generation": self.generation})
                    child.kill_tree()
                    return await exited
        finally:
            if not exited.done():
                exited.cancel()

    def forward(self, sig: int) -> None:
        if self.child is not None:
            self.child.send_signal(sig)

    async def stop(self, timeout: float = 5.0) -> int | None:
        """Stop supervising and terminate Envoy (SIGTERM, then SIGKILL of the whole tree)."""
        self.stopping.set()
        child = self.child
        if child is None:
            return None
        code = await child.terminate(timeout)
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
        child.close()
        return code

    def kill_now(self) -> None:
        self.stopping.set()
        if self.child is not None:
            self.child.kill_tree()
