"""The bootstrap worker's verdict off kuma-dp's critical path (agent/run.py): the bootstrap call does not
wait for it; the control plane's answer settles the definition (it validated it with the same model), so no
worker runs then and Envoy is reported ready without one; without an answer (the control plane away, or
refusing), a worker is started and a bad definition exits 2 with its field-by-field message, never reported
ready, with no Envoy started. Real kuma-cp, real Envoy, real worker; tests/integration/held_worker_dp.py holds
the worker (SIGSTOP) so that each ordering of (verdict, refusal, stop signal) is reached on purpose rather than
by luck."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.test_kuma_dp_support import (
    DpMesh,
    DpProcess,
    dataplane_doc,
    dp_factory,  # noqa: F401  (fixture)
    eventually,
    get,
    http,
    pid_gone,
)
from tests.ports import free_port

HELD_WORKER = Path(__file__).with_name("held_worker_dp.py")
BAD_FIELDS = ("networking.inbound[0].port", 'networking.inbound[1].tags["kuma.io/protocol"]')


@pytest.fixture
def mesh(cp_factory: Callable[..., CpProcess], app_factory: Callable[..., App],
         dp_factory: Callable[..., DpProcess]) -> DpMesh:  # noqa: F811
    return DpMesh(cp_factory(), app_factory, dp_factory)


def bad_doc() -> dict[str, object]:
    doc = dataplane_doc("web-1", "web", app_port=free_port(), inbound_port=99999)
    doc["networking"]["inbound"].append({"port": free_port(), "tags": {"kuma.io/service": "web",  # type: ignore[index]
                                                                       "kuma.io/protocol": "smtp"}})
    return doc


def start_held(mesh: DpMesh, tmp_path: Path, doc: dict[str, object], **kwargs: object) -> tuple[DpProcess, Path]:
    """kuma-dp whose bootstrap worker, when it starts one, is stopped from its start: (kuma-dp, the file its
    pid is written to then)."""
    pid_file = tmp_path / f"worker-{doc['name']}.pid"
    name = str(doc["name"])
    dp = mesh.dp_factory(name=name, cp=mesh.cp, definition=doc, token=mesh.token(name), notify=True,
                         wrapper=[sys.executable, str(HELD_WORKER), str(pid_file), "--"],
                         args=["--drain-time", "1s", "--envoy-log-level", "warning"], **kwargs)
    return dp, pid_file


def held_worker(pid_file: Path) -> int:
    return int(eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), message="the held worker's pid"))


def envoy_live(dp: DpProcess) -> bool:
    if not dp.alive():
        raise AssertionError(f"kuma-dp exited with {dp.proc.returncode}:\n{dp.logs()}")
    return get(dp.admin_url() + "/ready", timeout=2) == (200, "LIVE\n")


def assert_worker_message(dp: DpProcess) -> None:
    logs = dp.own_logs()
    assert "is not a valid Dataplane" in logs, logs
    for path in BAD_FIELDS:
        assert path in logs, (path, logs)
    assert "the control plane rejected the Dataplane" not in logs, logs


def test_the_control_planes_answer_settles_the_definition(mesh: DpMesh, tmp_path: Path) -> None:
    """The answer is enough: no worker is started (its imports would only take a core from Envoy's start)."""
    app = mesh.app_factory("echo_http", "--name", "web")
    doc = dataplane_doc("web-1", "web", app_port=app.port, inbound_port=free_port())
    dp, pid_file = start_held(mesh, tmp_path, doc)
    assert dp.notify is not None
    dp.notify.wait_for("READY", "1")
    dp.wait_ready()
    assert envoy_live(dp)
    assert not pid_file.exists(), "a bootstrap worker was started although the control plane answered"
    eventually(lambda: http(doc["networking"]["inbound"][0]["port"])[0] == 200,  # type: ignore[index]
               message="traffic through the inbound")
    assert dp.stop() == 0


def unreachable_cp() -> str:
    return f"https://127.0.0.1:{free_port()}"


def test_a_worker_lost_before_any_answer_exits_1(mesh: DpMesh, tmp_path: Path) -> None:
    dp, pid_file = start_held(mesh, tmp_path, dataplane_doc("web-1", "web", app_port=free_port(),
                                                            inbound_port=free_port()), cp_address=unreachable_cp())
    assert dp.notify is not None
    dp.notify.wait_status("waiting for the control plane")
    os.kill(held_worker(pid_file), signal.SIGKILL)
    assert dp.wait_exit(30) == 1, dp.logs()
    assert "the bootstrap worker exited with status" in dp.own_logs()
    assert dp.notify.values("READY") == []
    assert dp.notify.wait_status("failed: the bootstrap worker exited")
    assert not [s for s in dp.notify.values("STATUS") if s.startswith("Envoy started")], "an Envoy was started"


def test_refused_by_the_control_plane_then_the_verdict_names_every_field(mesh: DpMesh, tmp_path: Path) -> None:
    dp, pid_file = start_held(mesh, tmp_path, bad_doc())
    worker = held_worker(pid_file)
    assert dp.notify is not None
    eventually(lambda: "bootstrap refused" in mesh.cp.logs(), message="the control plane refused the definition")
    assert dp.alive(), "kuma-dp exited on the refusal before the worker's verdict"
    os.kill(worker, signal.SIGCONT)
    assert dp.wait_exit(30) == 2, dp.logs()
    assert_worker_message(dp)
    assert dp.notify.values("READY") == []
    # kuma-dp reports every Envoy it starts with this status line (the pid file is gone after the exit anyway)
    assert not [s for s in dp.notify.values("STATUS") if s.startswith("Envoy started")], "an Envoy was started"


def test_bad_definition_with_the_control_plane_up_exits_2(mesh: DpMesh) -> None:
    doc = bad_doc()
    dp = mesh.dp_factory(name="web-1", cp=mesh.cp, definition=doc, token=mesh.token("web-1"), notify=True)
    assert dp.wait_exit(30) == 2, dp.logs()
    assert_worker_message(dp)
    assert dp.notify is not None and dp.notify.values("READY") == []
    assert dp.notify.wait_status("failed: --dataplane-file")
    assert not dp.children(), "a process of kuma-dp's is left"


def test_bad_definition_with_the_control_plane_down_exits_2(mesh: DpMesh, tmp_path: Path) -> None:
    """No endless retries for a bad file: the verdict ends them (the retry deadline is an hour away)."""
    dp = mesh.dp_factory(name="web-1", definition=bad_doc(), token="a-token", notify=True,
                         cp_address=f"https://127.0.0.1:{free_port()}", ca_file=mesh.cp.ca_file,
                         env={"KUMA_CONTROL_PLANE_RETRY_BACKOFF": "100ms",
                              "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "1h"})
    assert dp.wait_exit(30) == 2, dp.logs()
    assert_worker_message(dp)
    assert dp.notify is not None and dp.notify.values("READY") == []


def test_stop_while_the_verdict_is_pending(mesh: DpMesh, tmp_path: Path) -> None:
    dp, pid_file = start_held(mesh, tmp_path, dataplane_doc("web-1", "web", app_port=free_port(),
                                                            inbound_port=free_port()), cp_address=unreachable_cp())
    assert dp.notify is not None
    dp.notify.wait_status("waiting for the control plane")
    worker = held_worker(pid_file)
    dp.signal(signal.SIGTERM)
    assert dp.wait_exit(30) == 0, dp.logs()
    assert dp.notify.values("READY") == []
    assert pid_gone(worker)
