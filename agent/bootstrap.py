"""kuma-dp's side of the bootstrap: start the worker early (`agent.bootstrap_worker`), hand it the request,
relay its status lines, and return the control plane's answer or a precise failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from agent import prestart
from agent.config import EXIT_FAILURE
from agent.proc import Child, adopt


class BootstrapFailed(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE, kind: str = "") -> None:
        super().__init__(message)
        self.message, self.exit_code, self.kind = message, exit_code, kind


def take_worker(env: dict[str, str]) -> BootstrapWorker:
    """The worker `kuma-dp run` pre-started (agent/prestart.py), else a new one."""
    proc = prestart.take_worker()
    return BootstrapWorker(adopt(proc)) if proc is not None else BootstrapWorker.start(env)


class BootstrapWorker:
    def __init__(self, child: Child) -> None:
        self.child = child

    @classmethod
    def start(cls, env: dict[str, str]) -> BootstrapWorker:
        return cls(adopt(prestart.start_worker(env)))

    async def run(self, payload: dict[str, Any], on_status: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        proc = self.child.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(payload) + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        result: dict[str, Any] | None = None
        failure: BootstrapFailed | None = None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if "bootstrap" in message:
                    result = message["bootstrap"]
                    break
                if "error" in message:
                    failure = BootstrapFailed(message["error"], int(message.get("exit", EXIT_FAILURE)),
                                              message.get("kind", ""))
                    break
                if "status" in message:
                    on_status(message)
        finally:
            transport.close()
        if result is not None:
            return result  # Envoy can start now; the worker finishes exiting meanwhile (see stop())
        status = await self.child.wait()
        self.child.close()
        if failure is not None:
            raise failure
        if result is None or status != 0:
            raise BootstrapFailed(f"the bootstrap worker exited with status {status} without an answer "
                                  "(its error is logged above)")
        return result

    async def stop(self) -> None:
        """Make sure the worker is gone (it normally exits by itself after its answer)."""
        with contextlib.suppress(Exception):
            await self.child.terminate(timeout=2.0)
        self.child.close()
