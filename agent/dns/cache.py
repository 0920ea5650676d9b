"""The stub's cache of forwarded answers: bounded (entries and bytes), least recently used out first.

A reply is kept for as long as its records may be (message.reply_facts: the smallest TTL, or the SOA's
negative TTL for NXDOMAIN / NODATA, each bounded), and served with every TTL counted down by the time it
spent here, the client's id and the client's spelling of the name. Thread-safe: the stub's UDP thread serves
hits directly, its event loop stores what upstreams answer. Only replies to queries without EDNS
options are kept (an option such as a cookie or client subnet makes the reply that client's own), and a reply
is never served to a client that cannot take its size over UDP.
"""

from __future__ import annotations

import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .message import Query

MAX_ENTRIES = 10_000
MAX_BYTES = 8 << 20
MAX_TTL = 3600  # seconds: a positive answer is asked again at least hourly
MAX_NEGATIVE_TTL = 300  # seconds: "no such name" kept at most 5 minutes (RFC 2308 suggests 1-3 hours)


@dataclass(slots=True)
class Entry:
    reply: bytes
    ttl_offsets: tuple[int, ...]
    stored: float
    expires: float


class Cache:
    def __init__(self, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.max_bytes, self.clock = max_entries, max_bytes, clock
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, query: Query, data: bytes, limit: int) -> bytes | None:
        """The cached reply for this query, ready to send (its id, its name's case, TTLs counted down)."""
        found = self.get_until(query, data, limit)
        return found[0] if found is not None else None

    def get_until(self, query: Query, data: bytes, limit: int) -> tuple[bytes, float] | None:
        """`get()`, and the clock time until which those very bytes are what `get()` gives for this query:
        the entry's next whole second of age (its TTLs count down then) or its expiry, whichever comes first.
        The stub's UDP loop serves them by itself until then."""
        key = query.key
        with self._lock:
            entry = self.entries.get(key)
            if entry is not None:
                now = self.clock()
                if now >= entry.expires:
                    self._drop(key)
                    entry = None
                elif len(entry.reply) > limit:
                    entry = None
                else:
                    self.entries.move_to_end(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
        out = bytearray(entry.reply)
        out[0:2] = data[0:2]
        out[12:query.qend] = query.question
        elapsed = int(now - entry.stored)
        if elapsed:
            for off in entry.ttl_offsets:
                ttl = struct.unpack_from(">I", out, off)[0]
                struct.pack_into(">I", out, off, max(ttl - elapsed, 0))
        return bytes(out), min(entry.stored + elapsed + 1, entry.expires)

    def put(self, query: Query, reply: bytes, ttl: int | None, ttl_offsets: tuple[int, ...]) -> None:
        if ttl is None or ttl <= 0 or query.opt_options or len(reply) > self.max_bytes // 16:
            return
        key = query.key
        with self._lock:
            self._drop(key)
            now = self.clock()
            self.entries[key] = Entry(bytes(reply), ttl_offsets, now, now + ttl)
            self.bytes += len(reply)
            while self.entries and (len(self.entries) > self.max_entries or self.bytes > self.max_bytes):
                _, old = self.entries.popitem(last=False)
                self.bytes -= len(old.reply)

    def _drop(self, key: bytes) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old.reply)

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
            self.bytes = 0
