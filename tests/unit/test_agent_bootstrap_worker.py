"""The bootstrap worker (a real child process, started as `kuma-dp run` starts it when the control plane has
not answered: without `site`, with kuma-dp's module path handed over): it validates the definition it is
handed and answers the same verdict as `kuma-dp validate`, every bad field named."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from agent import prestart
from agent.bootstrap import BootstrapFailed, BootstrapWorker
from agent.config import EXIT_USAGE, DpConfig
from agent.dataplane import load


def definition(port: int = 18081) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": "web-1",
            "networking": {"address": "127.0.0.1",
                           "inbound": [{"port": port, "servicePort": 18080, "tags": {"kuma.io/service": "web"}}]}}


def config(tmp_path: Path, doc: dict[str, Any]) -> DpConfig:
    path = tmp_path / "web-1.yaml"
    path.write_text(yaml.safe_dump(doc))
    return replace(DpConfig(), dataplane_file=str(path))


def verdict(cfg: DpConfig) -> BootstrapFailed | None:
    """Start the worker as agent.run does (the control plane has not answered) and wait for its verdict."""
    payload = prestart.worker_payload(load(cfg), cfg.log_level, cfg.log_format)

    async def run() -> BootstrapFailed | None:
        worker = BootstrapWorker.start(dict(os.environ))
        try:
            await worker.validate(payload)
            return None
        except BootstrapFailed as e:
            return e
        finally:
            await worker.stop()

    return asyncio.run(run())


def test_the_worker_names_every_bad_field(tmp_path: Path) -> None:
    assert verdict(config(tmp_path, definition())) is None
    failed = verdict(config(tmp_path, definition(port=99999)))
    assert failed is not None and failed.exit_code == EXIT_USAGE and failed.kind == "definition"
    assert "is not a valid Dataplane" in failed.message and "networking.inbound[0].port" in failed.message
