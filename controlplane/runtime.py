"""The control plane's process: components started in order, stopped in reverse, some only while leader."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from controlplane.config import Config
from controlplane.notify import notify, ping_watchdog, watchdog_interval
from controlplane.store.base import LeaderElector, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait

log = logging.getLogger("kuma.runtime")


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Runtime:
    """What components share: config, store, identity of this instance, readiness."""

    config: Config
    store: ResourceStore
    elector: LeaderElector
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    supervisor: Supervisor = field(default_factory=Supervisor)  # components' background tasks (see /healthy)
    components: list[Component] = field(default_factory=list)
    leader_components: list[Component] = field(default_factory=list)
    _started: list[Component] = field(default_factory=list)
    _leader_started: list[Component] = field(default_factory=list)
    _leader_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _watchdog: asyncio.Task[None] | None = None

    def add(self, component: Component, *, leader_only: bool = False) -> None:
        (self.leader_components if leader_only else self.components).append(component)

    async def start(self) -> None:
        await self.store.start()
        self.elector.on_change(self._leadership_changed)
        for c in self.components:
            log.info("starting component", extra={"component": c.name})
            await c.start()
            self._started.append(c)
        await self.elector.start()
        # Everything loaded so far (modules, schemas, compiled models) lives as long as the process: keep it
        # out of the collector's full passes, which otherwise stall config pushes by 100+ ms (bench/bench_xds.py).
        gc.collect()
        gc.freeze()
        self.ready.set()
        if (interval := watchdog_interval()) is not None:
            self._watchdog = self.supervisor.spawn("systemd-watchdog", lambda: ping_watchdog(interval))
        notify("READY=1", f"STATUS=serving: mode {self.config.mode}, store {self.store.backend}")
        log.info("control plane ready", extra={"instance": self.instance_id, "mode": self.config.mode,
                                               "store": self.store.backend})

    async def stop(self) -> None:
        self.ready.clear()
        notify("STOPPING=1", "STATUS=stopping")
        await cancel_and_wait(self._watchdog)  # TimeoutStopSec= bounds the stop from here on
        await self.elector.stop()
        await self._stop_leader_components()
        for c in reversed(self._started):
            try:
                await c.stop()
            except Exception:
                log.exception("component failed to stop cleanly", extra={"component": c.name})
        self._started.clear()
        await self.store.close()

    async def _leadership_changed(self, leader: bool) -> None:
        log.info("leader elected" if leader else "leadership lost", extra={"instance": self.instance_id})
        if leader:
            async with self._leader_lock:
                for c in self.leader_components:
                    try:
                        await c.start()
                        self._leader_started.append(c)
                    except Exception:
                        log.exception("leader component failed to start", extra={"component": c.name})
        else:
            await self._stop_leader_components()

    async def _stop_leader_components(self) -> None:
        async with self._leader_lock:
            for c in reversed(self._leader_started):
                try:
                    await c.stop()
                except Exception:
                    log.exception("leader component failed to stop cleanly", extra={"component": c.name})
            self._leader_started.clear()


async def run_until_signalled(runtime: Runtime) -> None:
    """Start, wait for SIGTERM/SIGINT, stop gracefully; a second signal exits at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("signal received, shutting down", extra={"signal": signal.Signals(signum).name})
            stop.set()
        else:
            log.warning("second signal received, exiting now", extra={"signal": signal.Signals(signum).name})
            os._exit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await runtime.start()
        await stop.wait()
    finally:
        await runtime.stop()
        log.info("control plane stopped", extra={"instance": runtime.instance_id})
