"""The zone's KDS client reports global's own reason for ending a connection, even when one of its writes
raced that end: grpcio answers such a write with a local "Internal error from Core" and cancelling the task on
the other stream drops global's status there (the race behind a rare wrong status in test_kds_grpc)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from controlplane.kds.client import _LOCAL_WRITE_FAILURE, PeerStatus
from controlplane.kds.sync import first_of

REASON = "a newer stream of zone-1 replaced this one"


def _identity(b: bytes) -> bytes:
    return b


async def _serve() -> tuple[grpc.aio.Server, int]:
    async def end_both(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        await context.send_initial_metadata(())
        async for _ in requests:  # the first message from the client: end the stream as global does
            await context.abort(grpc.StatusCode.ABORTED, REASON)
        yield b""  # pragma: no cover - makes this an async generator handler

    handler = grpc.stream_stream_rpc_method_handler(end_both, request_deserializer=_identity,
                                                    response_serializer=_identity)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Sync", {"A": handler, "B": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _one_connection(port: int) -> grpc.aio.AioRpcError | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        calls = [ch.stream_stream(f"/t.Sync/{m}", request_serializer=_identity, response_deserializer=_identity)()
                 for m in ("A", "B")]
        a, b = calls
        peer = PeerStatus(a, b)
        for call in calls:
            await call.initial_metadata()

        async def keep_writing(call: grpc.aio.StreamStreamCall) -> None:
            while True:  # as the receiver's ACKs and the sender's responses do, until a write fails
                await call.write(b"x" * 64)

        async def keep_reading(call: grpc.aio.StreamStreamCall) -> None:
            async for _ in call:
                pass

        try:
            await first_of(keep_writing(a), keep_reading(b), keep_writing(b), name="t")
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.RpcError, asyncio.InvalidStateError) as e:
            return peer.reason(seen=e)
        finally:
            a.cancel()
            b.cancel()
    pytest.fail("the streams ended without an error")


async def test_globals_reason_survives_a_write_that_raced_the_end_of_the_stream() -> None:
    server, port = await _serve()
    try:
        for attempt in range(40):  # each attempt races the writes against the end differently
            status = await _one_connection(port)
            assert status is not None, f"attempt {attempt}: global's status was lost"
            assert (status.code(), status.details()) == (grpc.StatusCode.ABORTED, REASON), \
                f"attempt {attempt}: {status.code()} {status.details()!r} (the local error is {_LOCAL_WRITE_FAILURE!r})"
    finally:
        await server.stop(None)
