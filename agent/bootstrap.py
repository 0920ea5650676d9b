"""kuma-dp's side of the bootstrap: start the worker early (`agent.bootstrap_worker`), hand it the request,
relay its status lines, and return the control plane's answer or a precise failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import EXIT_FAILURE
from agent.proc import Child, spawn

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class BootstrapFailed(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE, kind: str = "") -> None:
        super().__init__(message)
        self.message, self.exit_code, self.kind = message, exit_code, kind


class BootstrapWorker:
    def __init__(self, child: Child) -> None:
        self.child = child

    @classmethod
    def start(cls, env: dict[str, str]) -> BootstrapWorker:
        env = dict(env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env.setdefault("GRPC_VERBOSITY", "ERROR")  # the worker explains TLS failures itself, once
        child = spawn([sys.executable, "-m", "agent.bootstrap_worker"], env=env, stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE)
        return cls(child)

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
                elif "error" in message:
                    failure = BootstrapFailed(message["error"], int(message.get("exit", EXIT_FAILURE)),
                                              message.get("kind", ""))
                elif "status" in message:
                    on_status(message)
        finally:
            transport.close()
        status = await self.child.wait()
        self.child.close()
        if failure is not None:
            raise failure
        if result is None or status != 0:
            raise BootstrapFailed(f"the bootstrap worker exited with status {status} without an answer "
                                  "(its error is logged above)")
        return result

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.child.terminate(timeout=2.0)
        self.child.close()
