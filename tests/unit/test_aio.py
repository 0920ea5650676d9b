"""kuma_shared.aio.within: a timeout that never loses a cancellation (Python 3.11's asyncio.wait_for returns the
inner result when the cancellation arrives as the inner awaitable completes; a loop around it then runs on
after its stop() cancelled it)."""

from __future__ import annotations

import asyncio

import pytest

from kuma_shared.aio import within


async def test_a_cancellation_arriving_as_the_inner_completes_is_kept() -> None:
    inner: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(within(5.0, inner))
    await asyncio.sleep(0)  # waiting on `inner`
    inner.set_result(1)
    waiting.cancel()  # in the same turn of the loop, as a stop() arriving with the event it waited for
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_the_result_or_a_timeout() -> None:
    assert await within(1.0, asyncio.sleep(0, result="done")) == "done"
    with pytest.raises(TimeoutError):
        await within(0.01, asyncio.sleep(5))
    assert await within(None, asyncio.sleep(0, result=2)) == 2
