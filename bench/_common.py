"""Helpers shared by the benchmarks: percentiles and summaries, PASS/MISS verdicts, an aligned text table,
JSON output with rounded floats, a minimal keep-alive HTTP/1.1 client for tight polling of local admin
endpoints, and cleanup of everything a bench started (by PID, also on Ctrl-C and SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

log = logging.getLogger("bench")


# --- numbers -------------------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; NaN when empty. With fewer than 100 samples, p99 is
    the maximum."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50 (median), p90, p99, min, max of `values` (same unit as given)."""
    if not values:
        return {"n": 0, "p50": math.nan, "p90": math.nan, "p99": math.nan, "min": math.nan, "max": math.nan}
    return {"n": len(values), "p50": statistics.median(values), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "min": min(values), "max": max(values)}


def verdict(value: float | None, target: float, *, higher_is_better: bool = False) -> str:
    """PASS/MISS of `value` against `target` (<= target unless `higher_is_better`); n/a without a value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def rounded(value: Any) -> Any:
    """JSON default: floats rounded to 4 places, anything else as text."""
    if isinstance(value, float):
        return round(value, 4)
    return str(value)


def round_floats(doc: Any, places: int = 4) -> Any:
    if isinstance(doc, float):
        return doc if math.isnan(doc) or math.isinf(doc) else round(doc, places)
    if isinstance(doc, dict):
        return {k: round_floats(v, places) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [round_floats(v, places) for v in doc]
    return doc


def dump_json(doc: Any) -> str:
    return json.dumps(round_floats(doc), indent=2, default=rounded)


# --- table ---------------------------------------------------------------------------------------------------------

def render_table(rows: Sequence[Sequence[Any]], *, header: bool = True, right_from: int = 1) -> str:
    """Columns aligned; the first `right_from` columns left-aligned, the others right-aligned; a rule under the
    header row."""
    if not rows:
        return ""
    text = [[("" if c is None else str(c)) for c in row] for row in rows]
    ncols = max(len(r) for r in text)
    for r in text:
        r.extend([""] * (ncols - len(r)))
    widths = [max(len(r[i]) for r in text) for i in range(ncols)]
    lines = ["  ".join(c.ljust(w) if i < right_from else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                   strict=True)))
             .rstrip() for r in text]
    if header:
        lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


# --- cleanup -------------------------------------------------------------------------------------------------------

class Cleanup:
    """Stop callables run in reverse order of registration, each once, each whatever the others did.

        with Cleanup() as cleanup:
            cp = start_cp(...)
            cleanup.push(cp.stop, f"kuma-cp pid {cp.pid}")

    `install_signal_handlers()` turns SIGTERM (and SIGHUP) into KeyboardInterrupt, so `finally` blocks and
    `Cleanup.__exit__` run for them as they do for Ctrl-C.
    """

    def __init__(self) -> None:
        self._items: list[tuple[Callable[[], Any], str]] = []

    def push(self, stop: Callable[[], Any], what: str = "") -> None:
        self._items.append((stop, what))

    def run(self) -> None:
        while self._items:
            stop, what = self._items.pop()
            try:
                stop()
            except BaseException as e:  # keep stopping the others, even after a second Ctrl-C
                print(f"cleanup of {what or stop!r} failed: {e!r}", file=sys.stderr)

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.run()


def install_signal_handlers() -> None:
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread / not on this platform
            signal.signal(sig, interrupt)


# --- processes -----------------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far."""
    import psutil

    p = psutil.Process(pid)
    t = p.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


async def wait_quiet(pid: int, *, below: float = 0.05, window: float = 0.3, step: float = 0.05,
                     limit: float = 10.0) -> float:
    """Wait until process `pid` has used less than `below` of one core over the last `window` seconds (its
    background work is done: flushes, timers); returns the seconds waited (`limit` at most)."""
    import time

    started = time.monotonic()
    samples: list[tuple[float, float]] = [(started, cpu_seconds(pid))]
    while time.monotonic() - started < limit:
        await asyncio.sleep(step)
        now = time.monotonic()
        samples.append((now, cpu_seconds(pid)))
        while len(samples) > 2 and now - samples[1][0] >= window:
            samples.pop(0)
        t0, c0 = samples[0]
        if now - t0 >= window and (samples[-1][1] - c0) / (now - t0) < below:
            return now - started
    return time.monotonic() - started


def listen_port(taken: set[int], host: str = "127.0.0.1") -> int:
    """A TCP port for a listener that starts later (an Envoy's): free now, not in `taken`, and below the
    kernel's ephemeral range, so no outgoing connection or port-0 bind (Envoy admins, clients) can take it in
    the meantime, as happens in the ephemeral range when a bench starts dozens of processes."""
    import random
    import socket

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(1000):
        port = random.randrange(10_000, max(10_001, low))
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError("no free listener port below the ephemeral range")


# --- profiling ---------------------------------------------------------------------------------------------------

GC_SITECUSTOMIZE = """\
# Written by a bench: log this process's garbage collections (generation >= 1, or any over 5 ms) with wall-clock
# times to $BENCH_GC_LOG_DIR/gc-<pid>.log, so a bench can tell a GC pause from its own measurements.
import gc, os, time
_dir = os.environ.get("BENCH_GC_LOG_DIR")
if _dir:
    _log = open(os.path.join(_dir, f"gc-{os.getpid()}.log"), "a", buffering=1)
    _start = [0.0]

    def _bench_gc(phase, info):
        if phase == "start":
            _start[0] = time.time()
            return
        took = time.time() - _start[0]
        if info["generation"] >= 1 or took > 0.005:
            _log.write(f"{_start[0]:.6f} {took * 1000:.2f} {info['generation']} {info['collected']}\\n")

    gc.callbacks.append(_bench_gc)
"""


def gc_pauses(path: Any) -> list[tuple[float, float, int]]:
    """(wall start, ms, generation) of each collection in a log written by GC_SITECUSTOMIZE."""
    out = []
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            parts = line.split()
            with contextlib.suppress(ValueError, IndexError):
                out.append((float(parts[0]), float(parts[1]), int(parts[2])))
    return out


class PySpy:
    """`py-spy record` of one process (raw collapsed stacks, only samples holding the GIL), stopped by PID."""

    def __init__(self, exe: str, pid: int, out: Any, *, rate: int = 200) -> None:
        import subprocess

        self.out = out
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate), "--gil", "--format",
                                      "raw", "--output", str(out)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)

    def stop(self) -> None:
        import os
        import subprocess

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _function(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)`."""
    name, _, where = frame.partition(" (")
    file = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({file})" if file else name


def profile_breakdown(path: Any, categories: Sequence[tuple[str, Sequence[str]]], *, top: int = 25) -> dict[str, Any]:
    """Share of samples per category (the first category any of whose function names appears in a stack wins; a
    name matches `Class.name` too) and the top functions by inclusive share, from py-spy's raw output."""
    counts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            stack, _, n_text = line.rstrip("\n").rpartition(" ")
            try:
                n = int(n_text)
            except ValueError:
                continue
            functions = [_function(fr) for fr in stack.split(";")]
            total += n
            names = {fn.split(" (", 1)[0] for fn in functions}
            for category, needles in categories:
                if any(n == needle or n.endswith("." + needle) for needle in needles for n in names):
                    counts[category] = counts.get(category, 0) + n
                    break
            else:
                counts["other"] = counts.get("other", 0) + n
            for fn in set(functions):
                inclusive[fn] = inclusive.get(fn, 0) + n
    share = {k: round(100 * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}
    skip = ("<module>", "run", "Runner.run", "BaseEventLoop.", "Handle._run", "_run_module_as_main", "_run_code",
            "Command.", "Group.invoke", "Context.invoke", "Thread.", "_worker", "_WorkItem.run")
    ranked = [(fn, n) for fn, n in sorted(inclusive.items(), key=lambda kv: -kv[1])
              if not fn.split(" (", 1)[0].startswith(skip)]
    return {"samples": total, "percent_by_category": share,
            "top_inclusive_percent": {fn: round(100 * n / total, 1) for fn, n in ranked[:top]} if total else {}}


# --- polling -------------------------------------------------------------------------------------------------------

class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a local server, for tight polling: `await get(path)` -> (status,
    body). A bare asyncio Protocol: about a third of the CPU per request of asyncio streams (no wait_for task,
    no StreamReader), which matters when one process polls 50 Envoys every few milliseconds. Answers carry
    Content-Length or are chunked without trailers (Envoy's admin). One request at a time per connection;
    reconnects once if the server closed it."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.requests = 0

    # asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is None or self._waiter.done():
            return
        parsed = self._parse()
        if parsed is not None:
            self._waiter.set_result(parsed)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionResetError("the server closed the connection"))

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        status = int(head.split(b" ", 2)[1])
        pos = end + 4
        if b"transfer-encoding: chunked" in head:
            parts: list[bytes] = []
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
                if size == 0:
                    if len(buf) < eol + 4:
                        return None
                    del buf[:eol + 4]
                    return status, b"".join(parts)
                if len(buf) < eol + 2 + size + 2:
                    return None
                parts.append(bytes(buf[eol + 2:eol + 2 + size]))
                pos = eol + 2 + size + 2
        i = head.find(b"content-length:")
        length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
        if len(buf) < pos + length:
            return None
        body = bytes(buf[pos:pos + length])
        del buf[:pos + length]
        return status, body

    async def get(self, path: str) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            if self._transport is None or self._transport.is_closing():
                self._buf.clear()
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: self, self.host, self.port), self.timeout)
                self._transport = transport
            assert self._transport is not None
            self._waiter = loop.create_future()
            handle = loop.call_later(self.timeout, self._expire, self._waiter)
            self._transport.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            try:
                answer = await self._waiter
            except ConnectionError:
                if attempt:
                    raise
                continue
            finally:
                handle.cancel()
            self.requests += 1
            return answer
        raise AssertionError("unreachable")

    @staticmethod
    def _expire(waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("no answer in time"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None


def parse_stats(body: bytes) -> dict[str, int]:
    """Envoy's plain `/stats` answer (`name: value` lines) -> {name: int} (non-integer values left out)."""
    out: dict[str, int] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        name, sep, value = line.rpartition(": ")
        if sep:
            with contextlib.suppress(ValueError):
                out[name] = int(value)
    return out


def flatten(items: Iterable[Iterable[Any]]) -> list[Any]:
    return [x for group in items for x in group]
