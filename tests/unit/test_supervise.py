"""Supervised background tasks, retry schedules and rate-limited error logs; /healthy and /ready report a task
that is down or crash-looping, and the metrics say so."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client import REGISTRY

from controlplane.config import load
from controlplane.diagnostics import DiagnosticsServer
from controlplane.runtime import Runtime
from controlplane.store.base import AlwaysLeader
from controlplane.store.memory import MemoryStore
from controlplane.supervise import RetrySchedule, Supervisor, cancel_and_wait
from kuma_shared.logs import ErrorLog
from tests.unit.waiting import wait_until


def metric(name: str, task: str) -> float:
    value = REGISTRY.get_sample_value(name, {"task": task})
    return value if value is not None else 0.0


async def test_a_crashing_task_is_logged_restarted_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor(backoff_min=0.01, backoff_max=0.02, crash_loop=3, stable_after=60)
    runs = 0
    release = asyncio.Event()
    restarts_before = metric("kuma_cp_task_restarts_total", "test-crasher")

    async def crasher() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise KeyError(f"bad resource {runs}")
        await release.wait()
        await asyncio.Event().wait()

    caplog.set_level(logging.WARNING, logger="kuma.supervise")
    task = sup.spawn("test-crasher", crasher)
    await wait_until(lambda: runs == 4)
    assert metric("kuma_cp_task_restarts_total", "test-crasher") - restarts_before == 3
    assert metric("kuma_cp_task_up", "test-crasher") == 1
    # Running again, but it crashed three times in a row within `stable_after`: crash-looping, unhealthy.
    assert "crash-looping" in sup.unhealthy()["test-crasher"]
    assert "bad resource 3" in sup.unhealthy()["test-crasher"]
    crashes = [r for r in caplog.records if r.getMessage() == "background task crashed; restarting it"]
    assert len(crashes) == 3 and all(r.exc_info for r in crashes) and crashes[0].task == "test-crasher"

    sup.stable_after = 0.0  # it has now run long enough to count as stable
    assert sup.unhealthy() == {}
    await cancel_and_wait(task)
    assert sup.health() == [] and metric("kuma_cp_task_up", "test-crasher") == 0  # stopped, not dead


async def test_a_task_that_returns_is_restarted_too() -> None:
    sup = Supervisor(backoff_min=0.01)
    runs = 0

    async def returns() -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await asyncio.Event().wait()

    task = sup.spawn("test-returns", returns)
    await wait_until(lambda: runs == 2)
    assert "returned" in sup.health()[0].last_error
    await cancel_and_wait(task)


async def test_a_task_down_between_restarts_makes_healthy_and_ready_answer_503() -> None:
    runtime = Runtime(config=load(env={}), store=MemoryStore(), elector=AlwaysLeader(),
                      supervisor=Supervisor(backoff_min=30))
    diagnostics = DiagnosticsServer(runtime)
    runtime.ready.set()
    assert (await diagnostics._healthy(make_mocked_request("GET", "/healthy"))).status == 200

    async def broken() -> None:
        raise RuntimeError("the store watch failed")

    task = runtime.supervisor.spawn("xds-reconcile", broken)
    await wait_until(lambda: runtime.supervisor.unhealthy())
    healthy = await diagnostics._healthy(make_mocked_request("GET", "/healthy"))
    ready = await diagnostics._ready(make_mocked_request("GET", "/ready"))
    assert healthy.status == ready.status == 503
    assert "xds-reconcile" in healthy.text and "the store watch failed" in healthy.text  # type: ignore[operator]
    assert metric("kuma_cp_task_up", "xds-reconcile") == 0
    await cancel_and_wait(task)
    assert (await diagnostics._healthy(make_mocked_request("GET", "/healthy"))).status == 200


def test_retry_schedule_doubles_up_to_its_maximum_and_forgets_on_success() -> None:
    retries = RetrySchedule(first=1, maximum=4)
    assert [retries.failed("m", 100) for _ in range(4)] == [1, 2, 4, 4]
    assert "m" in retries and retries.next_at() == 104
    assert retries.due(103.9) == [] and retries.due(104) == ["m"]
    assert "m" not in retries and retries.failed("m", 200) == 4  # the back-off is remembered until a success
    retries.succeeded("m")
    assert retries.failed("m", 300) == 1 and len(retries) == 1


def test_error_log_says_it_once_per_interval_with_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("kuma.test.errorlog")
    errors = ErrorLog(log, interval=3600)
    caplog.set_level(logging.ERROR, logger="kuma.test.errorlog")
    for i in range(48):
        errors.report(("mesh", "m"), "cannot build config", error=ValueError("CA expired"),
                      extra={"dataplane": f"dp-{i}"}, traceback=False)
    errors.report(("mesh", "other"), "cannot build config", error=ValueError("CA expired"), traceback=False)
    assert [(r.getMessage(), r.error) for r in caplog.records] == [("cannot build config", "CA expired")] * 2
    errors.interval = 0
    errors.report(("mesh", "m"), "cannot build config", error=ValueError("CA expired"), traceback=False)
    assert caplog.records[-1].suppressed == 47
