"""`within(seconds, awaitable)`: asyncio.wait_for without Python 3.11's lost cancellation.

On 3.11, `asyncio.wait_for` returns the inner result when the waiting task is cancelled just as the inner
awaitable completes, and the cancellation is gone: a loop around it runs on after its stop() cancelled it,
and whoever awaits the task waits forever (seen in this project as rare hangs: the KDS tests' teardown,
kuma-dp's bootstrap retries, agent/bootstrap_fetch.py). `asyncio.timeout()` keeps the cancellation. Loops,
and anything cancelled on a stop, use this; one-shot waits whose caller is not cancelled may keep wait_for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(seconds: float | None, awaitable: Awaitable[T]) -> T:
    """`await awaitable`, raising TimeoutError after `seconds` (None: no limit); a cancellation always wins."""
    async with asyncio.timeout(seconds):
        return await awaitable
