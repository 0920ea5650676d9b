"""Keeping the stub's VIP map current: the dp-server's VIP watch stream (agent/vips_client.py), reconnected
with backoff for as long as the stub runs. While the control plane is away the stub keeps serving the last
map it had, so `.mesh` names keep resolving through a control-plane restart."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kuma-dp.dns")

BACKOFF = 1.0
BACKOFF_CAP = 30.0


@dataclass(frozen=True)
class WatchParams:
    cp: str  # https://HOST:5678
    ca_pem: bytes
    mesh: str
    token: str
    name: str = ""  # the dataplane's: with it, the DNS worker reports the host's resolver state (report_host_dns)


async def follow(params: WatchParams, on_map: Callable[[dict[str, Any]], None], version: str = "", *,
                 backoff: float = BACKOFF, cap: float = BACKOFF_CAP) -> None:
    """Call `on_map` with every new version of the mesh's VIP map, forever (cancel to stop)."""
    from agent.bootstrap_client import BootstrapError, CpAddress  # grpcio: only in the DNS worker
    from agent.vips_client import watch_vips

    cp = CpAddress.parse(params.cp)
    delay = backoff
    connected = True  # until the first failure says otherwise
    while True:
        problem = "the stream ended"
        try:
            async for vip_map in watch_vips(cp, params.ca_pem, params.mesh, params.token, version):
                if not connected:
                    log.info("VIP watch reconnected", extra={"cp": params.cp})
                    connected = True
                delay = backoff
                new = str(vip_map.get("version", ""))
                if new != version:
                    version = new
                    on_map(vip_map)
        except BootstrapError as e:
            problem = f"{e.code}: {e.message}"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never let the watch end the stub
            problem = f"{type(e).__name__}: {e}"
        if connected:
            log.warning("VIP watch lost; .mesh names are served from the last map while reconnecting",
                        extra={"cp": params.cp, "error": problem, "version": version})
            connected = False
        else:
            log.debug("VIP watch still failing", extra={"error": problem, "retry_in_s": round(delay, 1)})
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, cap)


class HostDnsReporter:
    """Sends the latest host resolver report to the control plane, retrying with backoff until it is taken; a
    newer report replaces one not yet sent (only the current state matters)."""

    def __init__(self, params: WatchParams, *, backoff: float = BACKOFF, cap: float = BACKOFF_CAP) -> None:
        self.params, self.backoff, self.cap = params, backoff, cap
        self._latest: dict[str, str] | None = None
        self._changed = asyncio.Event()

    def report(self, host_dns: dict[str, str]) -> None:
        self._latest = host_dns
        self._changed.set()

    async def run(self) -> None:
        from agent.bootstrap_client import BootstrapError, CpAddress  # grpcio: only in the DNS worker
        from agent.vips_client import report_host_dns

        cp = CpAddress.parse(self.params.cp)
        while True:
            await self._changed.wait()
            self._changed.clear()
            delay = self.backoff
            while (sending := self._latest) is not None:
                try:
                    await report_host_dns(cp, self.params.ca_pem, self.params.mesh, self.params.name,
                                          self.params.token, sending)
                    log.debug("host DNS state reported", extra={"state": sending.get("state")})
                    if self._latest is sending:
                        self._latest = None
                    break
                except BootstrapError as e:
                    log.warning("cannot report the host DNS state to the control plane; retrying", extra={
                        "error": f"{e.code}: {e.message}", "retry_in_s": round(delay, 1)})
                except Exception as e:  # never let reporting end the stub
                    log.warning("cannot report the host DNS state to the control plane; retrying",
                                extra={"error": f"{type(e).__name__}: {e}", "retry_in_s": round(delay, 1)})
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.cap)
