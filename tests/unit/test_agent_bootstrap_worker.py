"""The bootstrap worker (a real child process, started as `kuma-dp run` starts it: without `site`, with
kuma-dp's module path handed over): it validates the definition it was handed early, before kuma-dp imported
the rest of itself, and answers the same verdict as `kuma-dp validate`; a worker handed another definition
than the one kuma-dp finally loads is replaced, never trusted."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import prestart
from agent.bootstrap import BootstrapFailed, take_worker
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
    """Pre-start the worker, submit the definition early (as the click command does), then take the worker
    as agent.run does and wait for its verdict."""
    prestart._worker = prestart.start_worker(dict(os.environ))
    try:
        prestart.submit_definition(cfg)
        assert prestart._submitted is not None, "the definition was handed over early"
        payload = prestart.worker_payload(load(cfg), cfg.log_level, cfg.log_format)

        async def run() -> BootstrapFailed | None:
            worker = take_worker(dict(os.environ), payload)
            assert worker.sent, "the pre-started worker, already handed this definition, is the one used"
            try:
                await worker.validate(payload)
                return None
            except BootstrapFailed as e:
                return e
            finally:
                await worker.stop()

        return asyncio.run(run())
    finally:
        prestart.discard()


def test_worker_validates_the_definition_handed_over_early(tmp_path: Path) -> None:
    assert verdict(config(tmp_path, definition())) is None
    failed = verdict(config(tmp_path, definition(port=99999)))
    assert failed is not None and failed.exit_code == EXIT_USAGE and failed.kind == "definition"
    assert "is not a valid Dataplane" in failed.message and "networking.inbound[0].port" in failed.message


def test_a_worker_handed_another_definition_is_replaced(tmp_path: Path) -> None:
    cfg = config(tmp_path, definition())
    prestart._worker = prestart.start_worker(dict(os.environ))
    early = prestart._worker
    try:
        prestart.submit_definition(cfg)
        Path(cfg.dataplane_file or "").write_text(yaml.safe_dump(definition(port=99999)))  # changed meanwhile
        payload = prestart.worker_payload(load(cfg), cfg.log_level, cfg.log_format)

        async def run() -> None:
            worker = take_worker(dict(os.environ), payload)
            assert worker.child.pid != early.pid and not worker.sent
            try:
                with pytest.raises(BootstrapFailed, match=r"networking\.inbound\[0\]\.port"):
                    await worker.validate(payload)
            finally:
                await worker.stop()

        asyncio.run(run())
        assert early.poll() is not None, "the worker with the stale definition was stopped"
    finally:
        prestart.discard()
