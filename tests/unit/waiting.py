"""The one way unit tests wait for something that happens on the event loop: poll a predicate until it holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005) -> None:
    """Return once `predicate()` is true; AssertionError after `timeout` seconds (asked every `interval`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"not true within {timeout:g}s: {getattr(predicate, '__qualname__', predicate)}")
        await asyncio.sleep(interval)
