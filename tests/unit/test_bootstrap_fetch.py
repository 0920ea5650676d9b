"""kuma-dp's bootstrap retries (agent/bootstrap_fetch.py) end when they are cancelled, whatever they are doing
at that moment. kuma-dp cancels them when the worker finds the definition invalid or a stop comes, then waits
for them to end (agent/run.py); a retry that swallowed the cancellation kept kuma-dp retrying for good."""

from __future__ import annotations

import asyncio

from agent.bootstrap_client import CpAddress
from agent.bootstrap_fetch import Retry, fetch_with_retries
from tests.ports import free_port
from tests.unit.test_kumactl import self_signed


def test_a_cancellation_ends_the_retries_at_any_point(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca, _ = self_signed(tmp_path, "127.0.0.1")
    cp = CpAddress("127.0.0.1", free_port())  # nothing listens: every attempt and its diagnosis is refused at once
    statuses: list[str] = []

    async def cancelled_after(delay: float) -> None:
        fetch = asyncio.create_task(fetch_with_retries(cp, ca.read_bytes(), "--ca-cert-file ca.crt", {},
                                                       Retry(backoff=0.001, max_duration=3600),
                                                       lambda status: statuses.append(status["kind"])))
        await asyncio.sleep(delay)
        fetch.cancel()
        done, _ = await asyncio.wait({fetch}, timeout=2.0)
        assert done, f"the retries went on after a cancellation {delay * 1000:.1f} ms in"
        assert fetch.cancelled()

    async def main() -> None:
        # Spread over the attempts: the call, its diagnosis (a plain connect, then TLS) and the wait between.
        for i in range(300):
            await cancelled_after((i % 100) * 0.0002)

    asyncio.run(main())
    assert statuses and set(statuses) == {"unreachable"}  # the retries ran, for the reason expected
