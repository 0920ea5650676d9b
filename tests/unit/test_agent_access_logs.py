"""kuma-dp's access log streamer (MeshAccessLog's Tcp backend): lines written to its named pipe, as Envoy writes
them, reach TCP listeners run by the test, one line per message; bad lines and unreachable addresses are dropped
without stopping the rest."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from agent.access_logs import AccessLogStreamer, split_address


def test_split_address() -> None:
    assert split_address("127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert split_address("[::1]:5000") == ("::1", 5000)
    assert split_address("logs.internal:514") == ("logs.internal", 514)
    for bad in ("127.0.0.1", ":5000", "host:port"):
        with pytest.raises(ValueError):
            split_address(bad)


async def _listener() -> tuple[asyncio.Server, int, asyncio.Queue[bytes]]:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            await received.put(line)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


async def test_lines_from_the_pipe_reach_their_tcp_addresses(tmp_path: Path) -> None:
    pipe = tmp_path / "kuma-al-web-1-default.sock"
    server_a, port_a, received_a = await _listener()
    server_b, port_b, received_b = await _listener()
    streamer = AccessLogStreamer(str(pipe))
    streamer.start()
    try:
        assert stat.S_ISFIFO(pipe.stat().st_mode)
        # Envoy opens the pipe for writing and appends one JSON object per line.
        fd = os.open(pipe, os.O_WRONLY | os.O_APPEND)
        lines = [
            {"address": f"127.0.0.1:{port_a}", "message": "[2026-12-05T10:00:00.000Z] default GET / 200"},
            "this is not JSON",
            {"address": "127.0.0.1:1", "message": "nobody listens on port 1: dropped"},
            {"address": f"127.0.0.1:{port_b}", "message": {"status": 200, "mesh": "default"}},
            {"address": f"127.0.0.1:{port_a}", "message": "second line"},
        ]
        os.write(fd, b"".join((x if isinstance(x, str) else json.dumps(x)).encode() + b"\n" for x in lines))
        os.close(fd)
        assert await asyncio.wait_for(received_a.get(), 5) == b"[2026-12-05T10:00:00.000Z] default GET / 200\n"
        assert await asyncio.wait_for(received_a.get(), 5) == b"second line\n"
        assert json.loads(await asyncio.wait_for(received_b.get(), 5)) == {"status": 200, "mesh": "default"}
        # Envoy reopening the pipe (a config change) does not end the stream.
        fd = os.open(pipe, os.O_WRONLY | os.O_APPEND)
        os.write(fd, json.dumps({"address": f"127.0.0.1:{port_b}", "message": "after reopen"}).encode() + b"\n")
        os.close(fd)
        assert await asyncio.wait_for(received_b.get(), 5) == b"after reopen\n"
    finally:
        streamer.stop()
        for server in (server_a, server_b):
            server.close()
            await server.wait_closed()
    assert not pipe.exists()


async def test_a_stale_pipe_is_replaced_and_a_newer_one_is_left_alone(tmp_path: Path) -> None:
    pipe = tmp_path / "kuma-al-web-1-default.sock"
    pipe.write_text("a regular file Envoy created when no kuma-dp served the pipe")
    first = AccessLogStreamer(str(pipe))
    first.start()
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    second = AccessLogStreamer(str(pipe))  # a restarted kuma-dp for the same dataplane
    second.start()
    first.stop()
    assert pipe.exists(), "the first streamer removed the second one's pipe"
    second.stop()
    assert not pipe.exists()
