"""Garbage collection kept out of config pushes.

With 1000 connected proxies, CPython's collector stalled pushes three ways (bench/bench_xds.py logs every
collection of kuma-cp): automatic full (generation 2) collections scanned every long-lived object (dataplanes,
snapshots, streams: 150-870 ms on 2 shared cores); young collections during a push scanned the push's own
survivors again and again (generation 1 at 18-30 ms, generation 0 at 5-14 ms, 15-40 ms per push); and a full
collection that unfroze everything first scanned the whole heap (113-158 ms) just when the next change came.

So, while the pacer runs:
- automatic full collections are off (generation 2 threshold NEVER) and the young generation is larger;
- a push runs with the collector off: the reconciler calls `push_started()` as a pass begins, and once it has
  been quiet for `settle` seconds (or at the latest `max_off` seconds after it went off, so a never-quiet
  control plane does not go without young collections) everything that survived is frozen (`gc.freeze()`,
  O(1)) and the collector is back on. Nothing a push left behind is ever scanned by a young collection: the
  next snapshot replaces it, and reference counting frees it (frozen or not);
- a full collection of what is not frozen (allocated outside pushes: the API, insights, KDS) runs once the
  reconciler has been quiet for `quiet` seconds after a pass, at most every `min_interval` seconds, and every
  `max_interval` seconds whatever happened; it then freezes what survived. It is short: little is unfrozen;
- frozen objects are only freed by reference counting, so cyclic garbage that got frozen (made during a push,
  or a frozen object that later joined an unreachable cycle) stays until a collection that unfreezes first.
  That one scans the whole heap, so it runs only when the heap (the allocator's blocks in use: every object,
  garbage or not, holds at least one) has grown by `thaw_growth` (a quarter) over what the last one left:
  frozen garbage is then at most a quarter of the heap that last one kept, plus what the live heap shrank by
  since, the bound CPython itself keeps for automatic full collections (a full one only once the objects
  that survived young collections exceed a quarter of the long-lived ones). It waits for a quiet reconciler
  and no pending change, like the others, unless it has been due for `max_interval` (a control plane never
  without a pending change still gets one). (Not gc.get_freeze_count(): it walks the frozen list, 15-50 ms
  with 1000 proxies, itself a pause.)
Stopping restores the thresholds it found and the collector's on/off state.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable

from controlplane.supervise import Supervisor, cancel_and_wait

log = logging.getLogger("kuma.xds")

NEVER = 1 << 30  # a generation-2 threshold no process reaches
# Young collections every this many net allocations instead of CPython's 700: outside a push (the collector is
# off inside one) most short-lived objects die before a larger young generation is ever scanned.
YOUNG_THRESHOLD = 10_000


def _never_pending() -> bool:
    return False


class CollectionPacer:
    name = "gc-pacer"

    def __init__(self, last_activity: Callable[[], float], *, pending: Callable[[], bool] = _never_pending,
                 quiet: float = 1.0, min_interval: float = 10.0, max_interval: float = 120.0,
                 settle: float = 0.2, max_off: float = 2.0, thaw_growth: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, heap_size: Callable[[], int] = sys.getallocatedblocks,
                 supervisor: Supervisor | None = None) -> None:
        if not (quiet > 0 and 0 < min_interval <= max_interval):
            raise ValueError("gc pacing needs 0 < quiet and 0 < min_interval <= max_interval")
        if not (0 < settle <= max_off):
            raise ValueError("gc pacing needs 0 < settle <= max_off (seconds the collector stays off in a push)")
        if not thaw_growth > 0:
            raise ValueError("gc pacing needs thaw_growth > 0 (growth of frozen objects that forces a thaw)")
        self.last_activity = last_activity  # clock time of the reconciler's latest pass that rebuilt something
        self.pending = pending  # whether a change waits for the reconciler (a long collection then waits)
        self.quiet, self.min_interval, self.max_interval = quiet, min_interval, max_interval
        self.settle, self.max_off, self.thaw_growth = settle, max_off, thaw_growth
        self.clock, self.heap_size = clock, heap_size
        self.supervisor = supervisor or Supervisor()
        self._saved: tuple[int, int, int] | None = None
        self._was_enabled = True
        self._task: asyncio.Task[None] | None = None
        self._last_full = clock()
        self._seen_activity = last_activity()
        self._off_since: float | None = None  # when a push switched the collector off (None: it is on)
        self._pass_started = 0.0  # when the latest pass began (while the collector is off)
        self._heap_kept = heap_size()  # the heap right after the last thawing collection
        self._thaw_due_since: float | None = None  # when a thaw became due and was put off (a change pending)
        self.collections = 0  # full collections run here (for tests and metrics)
        self.thaws = 0  # of which unfroze everything first
        self.pushes_frozen = 0  # pushes whose survivors were frozen
        self.last_pause_ms = 0.0

    async def start(self) -> None:
        self._saved = gc.get_threshold()
        self._was_enabled = gc.isenabled()
        gc.set_threshold(max(self._saved[0], YOUNG_THRESHOLD), self._saved[1], NEVER)
        self._heap_kept = self.heap_size()  # the runtime collected and froze what start-up loaded
        self._task = self.supervisor.spawn(self.name, self._loop)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._off_since is not None:
            self.end_push()
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None
            if self._was_enabled:
                gc.enable()

    # --- pushes: the collector off ---------------------------------------------------------------------------

    def push_started(self) -> None:
        """The reconciler begins a pass: no collection until its push settles (see end_push)."""
        if self._saved is None:
            return  # not started (tests, tools)
        if self._off_since is not None:
            self._pass_started = self.clock()  # another pass of the same burst: settle after it ends
        elif gc.isenabled():
            gc.disable()
            self._off_since = self._pass_started = self.clock()

    def push_settled(self, now: float) -> bool:
        if self._off_since is None:
            return False
        if now - self._off_since >= self.max_off:
            return True  # never quiet: young collections must still run now and then
        # A pass in progress has not moved last_activity yet: wait until the latest one to start has ended.
        ended = self.last_activity()
        return ended >= self._pass_started and now - ended >= self.settle and not self.pending()

    def end_push(self) -> None:
        """Freeze what the push left (cost independent of its size) and turn the collector back on."""
        gc.freeze()
        gc.enable()
        self._off_since = None
        self.pushes_frozen += 1

    # --- full collections between pushes ---------------------------------------------------------------------

    def due(self, now: float) -> bool:
        if self._off_since is not None:
            return False  # a push is going out
        since_full = now - self._last_full
        if since_full >= self.max_interval:
            # Also when no pass ran: other components (the API, insights, KDS) leave cyclic garbage too, and
            # with automatic full collections off nothing else would ever collect it.
            return True
        activity = self.last_activity()
        if activity == self._seen_activity:
            return False  # no push since the last full collection: wait for max_interval
        return since_full >= self.min_interval and now - activity >= self.quiet and not self.pending()

    def thaw_due(self) -> bool:
        return self.heap_size() > self._heap_kept * (1 + self.thaw_growth)

    def collect(self) -> None:
        self._seen_activity = self.last_activity()
        started = time.perf_counter()
        # The whole-heap scan of a thaw waits for no pending change; a due one runs at the next quiet moment,
        # or anyway once it has been put off for max_interval.
        thaw = self.thaw_due()
        if thaw and self.pending():
            now = self.clock()
            if self._thaw_due_since is None:
                self._thaw_due_since = now
            thaw = now - self._thaw_due_since >= self.max_interval
        if thaw:
            gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        if thaw:
            self._heap_kept = self.heap_size()
            self._thaw_due_since = None
            self.thaws += 1
        self.last_pause_ms = (time.perf_counter() - started) * 1000
        self._last_full = self.clock()
        self.collections += 1
        log.debug("full garbage collection between pushes", extra={"ms": round(self.last_pause_ms, 1),
                                                                     "collected": found, "thawed": thaw,
                                                                     "heap_blocks": self.heap_size()})

    def tick(self) -> None:
        now = self.clock()
        if self.push_settled(now):
            self.end_push()
        elif self.due(now):
            self.collect()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.settle, self.quiet) / 4)
            self.tick()
