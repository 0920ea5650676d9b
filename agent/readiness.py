"""What kuma-dp knows about its Envoy, and the two readiness signals derived from it.

`Monitor` polls Envoy's admin API (fast until the first answer that counts, then every second):
- `/ready` answering `LIVE`: Envoy finished initialising (its first CDS/LDS applied, or their initial fetch
  timed out) and serves;
- `listener_manager.workers_started` = 1: its listeners are initialised and accepting;
- `control_plane.connected_state` = 1: its ADS stream to the control plane is up.

Two signals:
- systemd `READY=1` (`DpState.locally_ready`): Envoy LIVE and workers started. Local readiness, as DESIGN.md
  says: not control-plane convergence (a unit must be able to start while the control plane is busy).
- `/ready` on `--readiness-port` (`DpState.ready`): 200 only when Envoy is LIVE *and* this Envoy has been
  connected to the control plane at least once (it has real config, not an initial-fetch timeout's empty
  one); 503 with the reason otherwise, and 503 as soon as kuma-dp starts draining. A control-plane outage
  after that does not fail it: Envoy keeps serving with its last config.
Both also wait for the definition to be settled (`DpState.definition_pending`, see agent/run.py): by the
control plane's bootstrap answer, or by the bootstrap worker's verdict; a bad definition never reports ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.envoy.admin import AdminClient, AdminError

log = logging.getLogger("kuma-dp.readiness")

FAST_POLL = 0.01
MEDIUM_POLL = 0.25
SLOW_POLL = 1.0


@dataclass
class DpState:
    phase: str = "starting"  # starting | bootstrapping | running | draining | stopped
    envoy_pid: int | None = None
    envoy_generation: int = 0
    envoy_live: bool = False
    workers_started: bool = False
    cp_connected: bool = False
    connected_generation: int = -1  # the Envoy generation that has been connected at least once
    live_generation: int = -1  # the Envoy generation that has been LIVE at least once
    last_live_at: float = 0.0  # time.monotonic() of the current Envoy's latest LIVE answer (liveness)
    draining: bool = False
    definition_pending: bool = False  # the bootstrap worker's verdict on the definition is not in yet

    @property
    def locally_ready(self) -> bool:
        return self.envoy_pid is not None and self.envoy_live and self.workers_started

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining: kuma-dp is stopping"
        if self.envoy_pid is None:
            return False, "Envoy is not running" if self.phase != "bootstrapping" else \
                "waiting for the control plane's bootstrap"
        if not self.envoy_live:
            return False, "Envoy is not live yet"
        if self.connected_generation != self.envoy_generation:
            return False, "Envoy has not connected to the control plane yet"
        if self.definition_pending:
            return False, "the dataplane definition is still being checked"
        return True, "ready"

    def envoy_started(self, pid: int, generation: int) -> None:
        self.envoy_pid, self.envoy_generation = pid, generation
        self.envoy_live = self.workers_started = self.cp_connected = False

    def envoy_gone(self) -> None:
        self.envoy_pid = None
        self.envoy_live = self.workers_started = self.cp_connected = False


class Monitor:
    def __init__(self, state: DpState, admin: Callable[[], AdminClient | None], *,
                 on_locally_ready: Callable[[], None], on_cp_change: Callable[[bool, bool], None],
                 liveness_timeout: float = 30.0) -> None:
        self.state = state
        # A LIVE Envoy counts as hung once its last LIVE answer is older than the liveness timeout, so a steady
        # Envoy must be asked several times within it: a poll interval near the timeout would find a healthy
        # Envoy "hung" whenever one answer came a little late.
        self.steady_poll = min(SLOW_POLL, liveness_timeout / 4)
        self.admin = admin
        self.on_locally_ready = on_locally_ready
        self.on_cp_change = on_cp_change  # (connected, first time for this Envoy)
        self.wake = asyncio.Event()
        self.running = True

    def stop(self) -> None:
        """End `run()` at its next step. (Cancelling alone is not enough on Python 3.11: `asyncio.wait_for`
        can swallow a cancellation that races with its inner future completing.)"""
        self.running = False
        self.wake.set()

    async def poll_once(self) -> None:
        s = self.state
        client = self.admin()
        generation = s.envoy_generation
        if client is None or s.envoy_pid is None:
            return
        try:
            r = await client.get("/ready", timeout=1.0)
            live = r.status == 200 and r.text.strip() == "LIVE"
            stats = await client.stats("listener_manager.workers_started", "control_plane.connected_state")
        except (AdminError, ValueError):
            live, stats = False, {}
        if generation != s.envoy_generation or s.envoy_pid is None:
            return  # Envoy was replaced while we asked
        s.envoy_live = live
        s.workers_started = stats.get("listener_manager.workers_started") == 1
        if live:
            s.live_generation = generation
            s.last_live_at = time.monotonic()
        connected = stats.get("control_plane.connected_state") == 1
        if connected != s.cp_connected and (connected or "control_plane.connected_state" in stats):
            first = connected and s.connected_generation != generation
            s.cp_connected = connected
            if connected:
                s.connected_generation = generation
            self.on_cp_change(connected, first)
        if s.locally_ready:
            self.on_locally_ready()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        generation, since = -1, loop.time()
        while self.running:
            await self.poll_once()
            s = self.state
            if s.envoy_generation != generation:
                generation, since = s.envoy_generation, loop.time()
            if s.locally_ready and s.connected_generation == s.envoy_generation:
                interval = self.steady_poll
            elif loop.time() - since < 5.0:
                interval = FAST_POLL  # Envoy is starting: notice READY within tens of milliseconds
            else:
                interval = MEDIUM_POLL
            if not self.running:
                return
            self.wake.clear()
            woken = asyncio.ensure_future(self.wake.wait())
            try:
                await asyncio.wait({woken}, timeout=interval)  # (not wait_for: see stop())
            finally:
                woken.cancel()


def envoy_hung(state: DpState, generation: int, started_at: float, start_timeout: float,
               liveness_timeout: float) -> str | None:
    """Why Envoy `generation` (started at `started_at`, time.monotonic()) counts as hung, or None: it never got
    LIVE within `start_timeout`, or, once live, its admin /ready has not answered LIVE for `liveness_timeout`
    (a stopped or deadlocked Envoy keeps its process and its sockets, so only its silence shows)."""
    now = time.monotonic()
    if state.envoy_generation != generation:
        return None  # the monitor has not seen this Envoy yet
    if state.live_generation != generation:
        if now - started_at > start_timeout:
            return f"not live {start_timeout:g}s after it started"
        return None
    if now - state.last_live_at > liveness_timeout:
        return f"its admin API has not answered LIVE for {liveness_timeout:g}s"
    return None
