"""Full garbage collections between config pushes, not in the middle of them.

With 1000 connected proxies, CPython's automatic full (generation 2) collections scan every long-lived object
(dataplanes, snapshots, streams) and took 150-870 ms each on 2 shared cores; a push allocates enough to set
one off, so most changes had one inside (bench/bench_xds.py logs them). Here the automatic full collections
are turned off (generation 0 and 1 still run, with a larger generation 0: fewer, still short, young
collections during a push) and this component runs the full
collection itself once the reconciler has been quiet for `quiet` seconds after a pass: at most every
`min_interval` seconds, and only when a pass ran since the last one. Every `max_interval` seconds one runs
whatever happened (a control plane that is never quiet, or one whose garbage comes from the API, insights or
KDS rather than pushes), so cyclic garbage stays bounded. Stopping restores the thresholds it found.

A full collection then freezes what survived it (`gc.freeze()`, as the runtime does once at start), so the
next one scans only what was allocated since, not every long-lived dataplane, snapshot and stream again (a
full collection of a 1000-proxy heap was 300-700 ms of CPU). A frozen object that later becomes part of
unreachable cycle stays until the next unfrozen collection: every `thaw_every`-th collection unfreezes
everything first, so such garbage is bounded too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from controlplane.supervise import Supervisor, cancel_and_wait

log = logging.getLogger("kuma.xds")

NEVER = 1 << 30  # a generation-2 threshold no process reaches
# Young collections every this many net allocations instead of CPython's 700: a push to 1000 proxies
# allocates millions of short-lived objects; most die before a larger young generation is ever scanned.
YOUNG_THRESHOLD = 10_000


class CollectionPacer:
    name = "gc-pacer"

    def __init__(self, last_activity: Callable[[], float], *, quiet: float = 1.0, min_interval: float = 10.0,
                 max_interval: float = 120.0, thaw_every: int = 30, supervisor: Supervisor | None = None) -> None:
        if not (quiet > 0 and 0 < min_interval <= max_interval and thaw_every >= 1):
            raise ValueError("gc pacing needs 0 < quiet, 0 < min_interval <= max_interval and thaw_every >= 1")
        self.thaw_every = thaw_every
        self.last_activity = last_activity  # monotonic time of the reconciler's latest pass
        self.quiet, self.min_interval, self.max_interval = quiet, min_interval, max_interval
        self.supervisor = supervisor or Supervisor()
        self._saved: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_full = time.monotonic()
        self._seen_activity = last_activity()
        self.collections = 0  # full collections run here (for tests and metrics)
        self.last_pause_ms = 0.0

    async def start(self) -> None:
        self._saved = gc.get_threshold()
        gc.set_threshold(max(self._saved[0], YOUNG_THRESHOLD), self._saved[1], NEVER)
        self._task = self.supervisor.spawn(self.name, self._loop)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def due(self, now: float) -> bool:
        since_full = now - self._last_full
        if since_full >= self.max_interval:
            # Also when no pass ran: other components (the API, insights, KDS) leave cyclic garbage too, and
            # with automatic full collections off nothing else would ever collect it.
            return True
        activity = self.last_activity()
        if activity == self._seen_activity:
            return False  # no push since the last full collection: wait for max_interval
        return since_full >= self.min_interval and now - activity >= self.quiet

    def collect(self) -> None:
        self._seen_activity = self.last_activity()
        started = time.perf_counter()
        thaw = self.collections % self.thaw_every == 0
        if thaw:
            gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.last_pause_ms = (time.perf_counter() - started) * 1000
        self._last_full = time.monotonic()
        self.collections += 1
        log.debug("full garbage collection between pushes", extra={"ms": round(self.last_pause_ms, 1),
                                                                     "collected": found, "thawed": thaw})

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.quiet / 4)
            if self.due(time.monotonic()):
                self.collect()
