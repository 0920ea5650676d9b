"""The snapshot cache: the latest `Snapshot` of every proxy, keyed by node id (go-control-plane's SnapshotCache).

Generators build snapshots and `set_snapshot()` them; ADS streams read the latest one and are woken when it
changes. Nothing here rebuilds or copies resources, and nothing queues: a stream that is busy when two
snapshots arrive in a row sees only the newer one (latest wins).

Wake-ups happen only when a snapshot's content changes: versions are content-derived, so setting a snapshot
whose every per-type version equals the current one stores it and wakes nobody.

Threading: call from the event loop thread. `set_snapshot()` and `clear()` may also be called from another
thread (a generator running in an executor); watchers are then woken through their loop's
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .snapshot import Snapshot

log = logging.getLogger("kuma.xds")

__all__ = ["SnapshotCache", "Watch"]

_watch_ids = itertools.count(1)


@dataclass(slots=True)
class _Entry:
    snapshot: Snapshot | None = None
    generation: int = 0  # bumped on every content change (and on clear of an existing snapshot)
    watchers: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = field(default_factory=dict)


class Watch:
    """A registration made by `SnapshotCache.watch()`; `cancel()` it when the stream ends."""

    __slots__ = ("_cache", "_id", "node_id")

    def __init__(self, cache: SnapshotCache, node_id: str, watch_id: int) -> None:
        self._cache = cache
        self.node_id = node_id
        self._id = watch_id

    def cancel(self) -> None:
        self._cache._unwatch(self.node_id, self._id)


def changed(old: Snapshot | None, new: Snapshot | None) -> bool:
    """True when any type's version differs (a missing snapshot differs from any present one)."""
    if old is new:
        return False
    if old is None or new is None:
        return True
    for type_url in old.resources.keys() | new.resources.keys():
        if old.version(type_url) != new.version(type_url):
            return True
    return False


class SnapshotCache:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    # -- writers (generators) --------------------------------------------------------------------------

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> bool:
        """Store `snapshot` as node `node_id`'s latest; wake its streams if any type's version changed.

        Returns True when the content changed (streams were woken), False when it was identical.
        """
        with self._lock:
            entry = self._entries.get(node_id)
            if entry is None:
                entry = self._entries[node_id] = _Entry()
            is_change = changed(entry.snapshot, snapshot)
            entry.snapshot = snapshot
            if not is_change:
                return False
            entry.generation += 1
            watchers = list(entry.watchers.values())
        _notify(watchers)
        return True

    def clear(self, node_id: str) -> None:
        """Forget node `node_id`'s snapshot. Its open streams keep what they have and wait for the next one
        (they are woken, find nothing to send, and sleep again)."""
        with self._lock:
            entry = self._entries.get(node_id)
            if entry is None:
                return
            was_set = entry.snapshot is not None
            if was_set:
                entry.snapshot = None
                entry.generation += 1
            if not entry.watchers:
                del self._entries[node_id]
            watchers = list(entry.watchers.values()) if was_set else []
        _notify(watchers)

    # -- readers (ADS streams, insights) ---------------------------------------------------------------

    def get_snapshot(self, node_id: str) -> Snapshot | None:
        entry = self._entries.get(node_id)
        return entry.snapshot if entry is not None else None

    def generation(self, node_id: str) -> int:
        """A counter that grows whenever node `node_id`'s snapshot content changes (0: never set)."""
        entry = self._entries.get(node_id)
        return entry.generation if entry is not None else 0

    def node_ids(self) -> Iterator[str]:
        """Nodes that have a snapshot."""
        return (n for n, e in list(self._entries.items()) if e.snapshot is not None)

    def __len__(self) -> int:
        return sum(1 for e in list(self._entries.values()) if e.snapshot is not None)

    def watch(self, node_id: str, callback: Callable[[], None]) -> Watch:
        """Call `callback()` (on the calling loop's thread) whenever node `node_id`'s snapshot content changes.

        The callback must be cheap and must not raise (typically `asyncio.Event.set`). Several changes before
        the watcher looks collapse into one wake-up: re-read `get_snapshot()` after waking.
        """
        loop = asyncio.get_running_loop()
        watch_id = next(_watch_ids)
        with self._lock:
            entry = self._entries.get(node_id)
            if entry is None:
                entry = self._entries[node_id] = _Entry()
            entry.watchers[watch_id] = (loop, callback)
        return Watch(self, node_id, watch_id)

    async def wait_for_change(self, node_id: str, since: int) -> int:
        """Wait until node `node_id`'s generation is greater than `since`; returns the current generation.

        `since` is a value from `generation()`; with `since` older than the current one, returns at once.
        """
        current = self.generation(node_id)
        if current > since:
            return current
        event = asyncio.Event()
        handle = self.watch(node_id, event.set)
        try:
            while (current := self.generation(node_id)) <= since:
                event.clear()
                await event.wait()
            return current
        finally:
            handle.cancel()

    def _unwatch(self, node_id: str, watch_id: int) -> None:
        with self._lock:
            entry = self._entries.get(node_id)
            if entry is None:
                return
            entry.watchers.pop(watch_id, None)
            if not entry.watchers and entry.snapshot is None:
                del self._entries[node_id]


def _notify(watchers: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]]) -> None:
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, callback in watchers:
        if loop is running:
            try:
                callback()
            except Exception:
                log.exception("snapshot watcher failed")
        elif not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: its streams are gone
                loop.call_soon_threadsafe(callback)
