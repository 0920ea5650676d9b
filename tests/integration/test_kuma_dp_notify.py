"""kuma-dp as a systemd Type=notify service: the messages it sends on a real NOTIFY_SOCKET datagram socket
that the test creates (as systemd does), path and abstract."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.test_kuma_dp_support import (
    DpMesh,
    DpProcess,
    dp_factory,  # noqa: F401  (fixture)
    eventually,
    get,
)


@pytest.fixture
def mesh(cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
         dp_factory: Callable[..., DpProcess]) -> DpMesh:  # noqa: F811
    return DpMesh(cp_factory(), app_factory, dp_factory)


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_status_and_stopping(mesh: DpMesh, kind: str) -> None:
    svc = mesh.service("backend", notify=True if kind == "path" else "abstract", wait=False)
    notify = svc.dp.notify
    assert notify is not None
    ready_at = notify.wait_for("READY", "1")
    # READY=1 comes when Envoy is live with its listeners initialised: /ready (Envoy) answers LIVE by then,
    # and the inbound listener accepts.
    admin_ready = get(svc.dp.admin_url() + "/ready")
    assert admin_ready == (200, "LIVE\n")
    statuses = notify.values("STATUS")
    assert any("requesting the Envoy bootstrap" in s for s in statuses)
    assert any("Envoy started (pid" in s for s in statuses)
    ready_msg = notify.all()[ready_at[0]]
    assert ready_msg["STATUS"].startswith("ready: Envoy (pid ")
    assert notify.values("WATCHDOG") == []  # no WATCHDOG_USEC: no pings
    # Nothing sends READY twice.
    assert notify.values("READY") == ["1"]
    svc.dp.signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1")
    draining = notify.wait_status("draining Envoy")
    assert "for 1s" in draining
    assert svc.dp.wait_exit(20) == 0
    assert notify.values("STATUS")[-1] == "stopped"
    # The control sequence systemd needs: READY before STOPPING.
    assert notify.first("READY")[0] < notify.first("STOPPING")[0]  # type: ignore[index]


def test_watchdog_pings_at_half_the_interval(mesh: DpMesh) -> None:
    svc = mesh.service("backend", notify=True, env={"WATCHDOG_USEC": "400000"})
    notify = svc.dp.notify
    assert notify is not None
    notify.wait_for("READY", "1")
    start = time.monotonic()
    first = len(notify.values("WATCHDOG"))
    time.sleep(1.5)
    pings = len(notify.values("WATCHDOG")) - first
    elapsed = time.monotonic() - start
    # Every 0.2 s (half of 0.4 s): about 7 in 1.5 s; generous bounds for a loaded machine.
    assert 4 <= pings <= 10, (pings, elapsed)
    assert set(notify.values("WATCHDOG")) == {"1"}


def test_watchdog_for_another_pid_is_ignored(mesh: DpMesh) -> None:
    svc = mesh.service("backend", notify=True, env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    notify = svc.dp.notify
    assert notify is not None
    notify.wait_for("READY", "1")
    time.sleep(0.6)
    assert notify.values("WATCHDOG") == []


def test_envoy_restart_is_reported(mesh: DpMesh) -> None:
    svc = mesh.service("backend", notify=True)
    notify = svc.dp.notify
    assert notify is not None
    notify.wait_for("READY", "1")
    old = svc.dp.envoy_pid()
    import psutil

    psutil.Process(old).kill()
    notify.wait_status("killed by SIGKILL")
    restarted = notify.wait_status("restarting in")
    assert "failure 1 of at most 5" in restarted
    eventually(lambda: any(s.startswith("ready: Envoy (pid ") and f"pid {old})" not in s
                           for s in notify.values("STATUS")), message="ready again, new pid")
    assert notify.values("READY") == ["1"]  # READY is sent once per service start
