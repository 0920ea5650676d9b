"""Supervised background tasks: a loop that raises (or returns) is logged, counted and restarted, never lost.

Every long-running task of a component (the xDS reconciler, insights flushing, VIP allocation, the CA and VIP
watches, default policies) runs through `Supervisor.spawn()`. A crash is logged with the task's name and the
traceback, counted in `kuma_cp_task_restarts_total{task=...}`, and the task is started again after a back-off
that doubles from `backoff_min` to `backoff_max` while it keeps crashing (a run longer than `stable_after`
resets it). `unhealthy()` names the tasks that are down right now or crash-looping, which is what the
diagnostics server's `/healthy` and `/ready` answer 503 with, and `kuma_cp_task_up{task=...}` says the same to
Prometheus. A task's own loop should still catch errors of one mesh or one resource and keep the others
going; supervision is the net under that, for what nobody foresaw.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from kuma_shared.aio import within

log = logging.getLogger("kuma.supervise")

TASK_UP = Gauge("kuma_cp_task_up", "1 while a supervised background task runs, 0 while it is down (crashed, "
                "waiting to restart)", ["task"])
TASK_RESTARTS = Counter("kuma_cp_task_restarts", "Times a supervised background task crashed and was restarted",
                        ["task"])


@dataclass(slots=True)
class TaskHealth:
    name: str
    running: bool = False
    failures: int = 0  # crashes in a row: reset by a run longer than `stable_after`
    last_error: str = ""
    started_at: float = 0.0


class Supervisor:
    def __init__(self, *, backoff_min: float = 1.0, backoff_max: float = 30.0, crash_loop: int = 3,
                 stable_after: float = 60.0) -> None:
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.crash_loop = crash_loop  # this many crashes in a row make a running task count as unhealthy
        self.stable_after = stable_after
        self._tasks: dict[asyncio.Task[None], TaskHealth] = {}

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` until the returned task is cancelled, restarting it whenever it raises or returns.
        `run` is called again for every restart, so it must (re)subscribe to whatever it watches."""
        health = TaskHealth(name)
        task = asyncio.create_task(self._supervise(health, run), name=name)
        self._tasks[task] = health
        task.add_done_callback(self._forget)
        return task

    def unhealthy(self) -> dict[str, str]:
        """Task name -> why it is not healthy, for tasks that are down or crash-looping."""
        now = asyncio.get_running_loop().time()
        out = {}
        for h in self._tasks.values():
            if not h.running and h.failures:
                out[h.name] = f"crashed {h.failures} time(s) in a row, restarting; last error: {h.last_error}"
            elif h.failures >= self.crash_loop and now - h.started_at < self.stable_after:
                out[h.name] = f"crash-looping ({h.failures} crashes in a row); last error: {h.last_error}"
        return out

    def health(self) -> list[TaskHealth]:
        return list(self._tasks.values())

    def _forget(self, task: asyncio.Task[None]) -> None:
        health = self._tasks.pop(task, None)
        if health is not None:
            TASK_UP.labels(health.name).set(0)

    async def _supervise(self, h: TaskHealth, run: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_min
        while True:
            h.running, h.started_at = True, loop.time()
            TASK_UP.labels(h.name).set(1)
            try:
                await run()
                h.last_error = "the task returned; it must run until cancelled"
                log.error("background task ended unexpectedly; restarting it", extra={"task": h.name})
            except asyncio.CancelledError:
                h.running = False
                raise
            except Exception as e:
                h.last_error = f"{type(e).__name__}: {e}"[:500]
                log.exception("background task crashed; restarting it", extra={"task": h.name})
            ran = loop.time() - h.started_at
            if ran >= self.stable_after:
                h.failures, delay = 1, self.backoff_min
            else:
                h.failures += 1
            h.running = False
            TASK_UP.labels(h.name).set(0)
            TASK_RESTARTS.labels(h.name).inc()
            log.warning("background task restarts after a back-off",
                        extra={"task": h.name, "failures": h.failures, "retry_in": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel a task and wait until it has finished (a component's stop())."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if (current := asyncio.current_task()) is not None and current.cancelling():
            raise  # we are being cancelled ourselves, not just the task


async def wait_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set, at most `timeout` seconds (None: no limit); True when it is set.

    Loops use this, never `asyncio.wait_for(event.wait(), t)`: on Python 3.11, wait_for returns normally when
    the task is cancelled just as the event gets set, swallowing the cancellation, so a loop woken by its own
    stop() ran on and stop() waited forever (seen as rare hangs of the KDS tests' teardown).
    `kuma_shared.aio.within` keeps the cancellation."""
    if event.is_set():
        return True
    try:
        await within(timeout, event.wait())
    except TimeoutError:
        return False
    return True


async def stop_grpc_server(server: Any, grace: float, name: str, *, bound: float = 5.0) -> None:
    """`server.stop(grace)` of a grpc.aio server, bounded: grpcio's shutdown has been seen to wait forever for a
    stream whose handler was cancelled while reading (about 1 run in 5 of the KDS replaced-stream tests under
    load). Past grace + `bound` seconds the server is left to the garbage collector, said in the log, and the
    control plane's stop goes on instead of hanging."""
    try:
        await asyncio.wait_for(asyncio.shield(server.stop(grace)), grace + bound)
    except TimeoutError:
        log.warning("gRPC server did not finish stopping; going on without it",
                    extra={"server": name, "waited_s": grace + bound})


class RetrySchedule:
    """Keys (meshes, proxies) whose last attempt failed, each with the time of its next attempt; the delay
    doubles from `first` to `maximum` while attempts keep failing. Times are `time.monotonic()` values."""

    def __init__(self, first: float = 1.0, maximum: float = 30.0) -> None:
        self.first, self.maximum = first, maximum
        self._at: dict[str, float] = {}
        self._delay: dict[str, float] = {}

    def failed(self, key: str, now: float) -> float:
        """Record a failure; returns the delay before the next attempt."""
        delay = min(self._delay[key] * 2, self.maximum) if key in self._delay else self.first
        self._delay[key] = delay
        self._at[key] = now + delay
        return delay

    def succeeded(self, key: str) -> None:
        self._at.pop(key, None)
        self._delay.pop(key, None)

    def due(self, now: float) -> list[str]:
        """Keys whose next attempt is due (taken off the schedule; their back-off is remembered)."""
        keys = [k for k, at in self._at.items() if at <= now]
        for k in keys:
            del self._at[k]
        return keys

    def next_at(self) -> float | None:
        return min(self._at.values(), default=None)

    def __contains__(self, key: object) -> bool:
        """Waiting for a retry."""
        return key in self._at

    def __len__(self) -> int:
        return len(self._at)
