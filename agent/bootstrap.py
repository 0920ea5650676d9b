"""kuma-dp's side of the bootstrap worker (agent/bootstrap_worker.py): start it, hand it the definition, and
return when it is valid, or raise BootstrapFailed with every bad field (exit 2).

The bootstrap call itself (agent/head_start.py, then agent/bootstrap_fetch.py) does not wait for this verdict:
the bootstrap RPC has no side effects (controlplane/xds/bootstrap_service.py only authenticates, validates the
definition with the same model and renders; the Dataplane is registered later, on Envoy's xDS stream), and
the control plane refuses an invalid definition itself. Its answer settles the definition, and the worker is
stopped then. What the verdict decides, while no answer is in: a bad file exits 2 with this message, which
names every bad field, whether the control plane is unreachable or has refused it (agent/run.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from agent import prestart
from agent.config import EXIT_FAILURE
from agent.proc import Child, adopt


class BootstrapFailed(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE, kind: str = "") -> None:
        super().__init__(message)
        self.message, self.exit_code, self.kind = message, exit_code, kind


class BootstrapWorker:
    def __init__(self, child: Child) -> None:
        self.child = child

    @classmethod
    def start(cls, env: dict[str, str]) -> BootstrapWorker:
        return cls(adopt(prestart.start_worker(env)))

    async def validate(self, payload: dict[str, Any]) -> None:
        """Send `payload` (definition, proxyType, logLevel, logFormat) and wait for the verdict."""
        proc = self.child.proc
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write((json.dumps(payload) + "\n").encode())
            proc.stdin.close()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        try:
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if message.get("valid") is True:
                    return  # the worker finishes exiting meanwhile (see stop())
                if "error" in message:
                    raise BootstrapFailed(message["error"], int(message.get("exit", EXIT_FAILURE)),
                                          message.get("kind", ""))
        finally:
            transport.close()
        status = await self.child.wait()
        self.child.close()
        raise BootstrapFailed(f"the bootstrap worker exited with status {status} without checking the "
                              "definition (its error is logged above)")

    async def stop(self) -> None:
        """Make sure the worker is gone (it normally exits by itself after its verdict)."""
        with contextlib.suppress(Exception):
            await self.child.terminate(timeout=2.0)
        self.child.close()
