"""The access log streamer: MeshAccessLog's Tcp backend.

kuma-cp points Envoy's file access logger at a named pipe (`kuma_shared.access_logs.access_log_pipe`) with a
JSON line per entry, `{"address": "host:port", "message": <text or object>}`. kuma-dp creates the pipe before
Envoy starts, reads it, and sends each message as one line to its address over TCP, one connection per
address, reconnecting after a failure. A line that cannot be delivered is dropped (and counted in a rate
limited error log): logging must never block or crash Envoy, whose writes go to the pipe's buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

from agent import access_log_pipe
from kuma_shared.aio import within
from kuma_shared.logs import ErrorLog

log = logging.getLogger("kuma-dp.access-logs")
QUEUE_LIMIT = 10_000  # lines waiting per address before new ones are dropped


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


class _Sender:
    def __init__(self, address: str, errors: ErrorLog) -> None:
        self.address, self.errors = address, errors
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self.task = asyncio.create_task(self._run(), name=f"access-log sender {address}")

    async def _run(self) -> None:
        writer: asyncio.StreamWriter | None = None
        while True:
            line = await self.queue.get()
            try:
                if writer is None:
                    writer = await self._connect()
                writer.write(line)
                await within(5.0, writer.drain())
            except (OSError, ValueError, TimeoutError) as e:
                self.errors.report(("send", self.address), "could not send an access log line; dropped it",
                                   error=e, extra={"address": self.address}, traceback=False)
                if writer is not None:
                    writer.close()
                writer = None

    async def _connect(self) -> asyncio.StreamWriter:
        host, port = split_address(self.address)
        _, writer = await within(5.0, asyncio.open_connection(host, port))
        log.info("connected to the TCP access log backend", extra={"address": self.address})
        return writer

    def close(self) -> None:
        self.task.cancel()


class AccessLogStreamer:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.errors = ErrorLog(log)
        self._pipe: access_log_pipe.Pipe | None = None
        self._buffer = b""
        self._senders: dict[str, _Sender] = {}

    def start(self, pipe: access_log_pipe.Pipe | None = None) -> None:
        """Start reading the pipe: `pipe` when kuma-dp created it already (before Envoy's spawn), else a new one
        (agent/access_log_pipe.py)."""
        if pipe is None:
            pipe = access_log_pipe.create(self.path)
        self._pipe = pipe
        asyncio.get_running_loop().add_reader(pipe.fd, self._readable)
        log.info("access log pipe ready", extra={"path": str(self.path)})

    def _readable(self) -> None:
        assert self._pipe is not None
        try:
            data = os.read(self._pipe.fd, 1 << 16)
        except BlockingIOError:
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            if line.strip():
                self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            entry = json.loads(line)
            address, message = entry["address"], entry["message"]
        except (ValueError, KeyError, TypeError) as e:
            self.errors.report("format", "access log line is not {address, message} JSON; dropped it", error=e,
                               traceback=False)
            return
        text = message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))
        sender = self._senders.get(address)
        if sender is None:
            sender = self._senders[address] = _Sender(address, self.errors)
        try:
            sender.queue.put_nowait(text.encode() + b"\n")
        except asyncio.QueueFull:
            self.errors.report(("full", address), "TCP access log backend is not keeping up; dropped a line",
                               extra={"address": address}, level=logging.WARNING)

    def stop(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pipe.fd)
            self._pipe.close()
            self._pipe = None
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()
