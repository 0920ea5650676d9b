"""On global: every mesh's builtin CA exists, so KDS has it to send to the zones (controlplane/kds/types.py).

Global runs no reconciler (it serves no dataplanes), and zones never make the CA of a mesh global owns
(CaManager.wait_for_global_ca). The API makes a mesh's CA when the Mesh is written; this keeper also covers the
rest: meshes from before an upgrade, a failed first attempt, a CA secret deleted by hand. It ensures every mesh's
builtin backends at start and again whenever a Mesh or Secret changes (and on a slow timer, in case an event
was lost), one line per mesh and kind of problem when it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from controlplane.ca import CaManager
from controlplane.resources.mesh import MESH
from controlplane.store.base import ListQuery, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait
from kuma_shared.aio import within
from kuma_shared.logs import ErrorLog

log = logging.getLogger("kuma.kds")

RESCAN_SECONDS = 300.0


class GlobalCaKeeper:
    name = "global-ca-keeper"

    def __init__(self, store: ResourceStore, ca: CaManager, supervisor: Supervisor) -> None:
        self.store, self.ca, self.supervisor = store, ca, supervisor
        self._task: asyncio.Task[None] | None = None
        self._errors = ErrorLog(log)

    async def start(self) -> None:
        self._task = self.supervisor.spawn(self.name, self._loop)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        async with self.store.watch() as events:
            while True:
                await self.ensure_all()
                with contextlib.suppress(TimeoutError):
                    while True:  # wait for a Mesh or Secret change (or the rescan timer)
                        event = await within(RESCAN_SECONDS, events.get())
                        if event.type in ("Mesh", "Secret") or event.op == "resync":
                            break
                await asyncio.sleep(0.1)  # a burst of writes: one pass
                while not events.empty():
                    events.get_nowait()

    async def ensure_all(self) -> None:
        for mesh in (await self.store.list(MESH, ListQuery())).items:
            try:
                await self.ca.ensure_backends(mesh)
            except Exception as e:
                self._errors.report((mesh.meta.name, type(e).__name__),
                                    "cannot make the mesh's builtin CA on global; zones wait for it",
                                    extra={"mesh": mesh.meta.name}, error=e)
