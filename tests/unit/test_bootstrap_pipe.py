"""Envoy's bootstrap over a pipe (agent/envoy/bootstrap_pipe.py), and what kuma-dp does when the Envoy it
spawned early cannot take it (agent/head_start.py's start_envoy: one spawned from the bootstrap file).

The reader here is a child process that reads `/dev/fd/N` to its end, as Envoy does with `-c /dev/fd/N`
(tests/integration/test_kuma_dp_head_start.py runs the real Envoy that way)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent import rundir
from agent.bootstrap_client import CpAddress
from agent.config import DpConfig
from agent.dataplane import Definition
from agent.envoy.bootstrap_pipe import BootstrapPipe
from agent.envoy.options import EnvoyOptions
from agent.head_start import HeadStart, start_envoy
from agent.notify import Notifier
from agent.start_steps import Inputs, spawn_waiting_envoy

# Reads the config path it is given (argv[1]) once a line arrives on its stdin, as Envoy reads its bootstrap
# only once it has initialised.
_READER = "import sys; sys.stdin.readline(); sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())"


def reader(pipe: BootstrapPipe) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", _READER, pipe.config_path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, pass_fds=(pipe.read_fd,))
    pipe.spawned()
    return child


def test_the_bootstrap_arrives_whole_and_the_reader_sees_its_end() -> None:
    pipe = BootstrapPipe()
    child = reader(pipe)
    data = json.dumps({"node": {"id": "default.web"}}).encode()
    assert pipe.deliver(data)
    assert child.communicate(b"go\n", timeout=30)[0] == data
    assert pipe.write_fd == -1 and pipe.read_fd == -1  # closed: the reader saw its end


def test_a_bootstrap_larger_than_the_pipe_is_delivered_before_the_reader_reads() -> None:
    """The write end never blocks, so a bootstrap past a pipe's default 64 KiB fits only because the pipe was
    grown to hold it: delivered whole while the reader has not read a byte yet."""
    pipe = BootstrapPipe()
    child = reader(pipe)  # not reading until told, as an Envoy still initialising
    data = json.dumps({"blob": "x" * 300_000}).encode()
    assert pipe.deliver(data)
    assert child.communicate(b"go\n", timeout=30)[0] == data


def test_a_reader_gone_before_the_bootstrap_is_refused_and_the_pipe_stays_for_the_caller() -> None:
    pipe = BootstrapPipe()
    child = subprocess.Popen([sys.executable, "-c", "pass"], pass_fds=(pipe.read_fd,))
    pipe.spawned()
    child.wait(timeout=30)
    assert not pipe.deliver(b"{}")  # EPIPE: nobody reads it
    assert pipe.write_fd >= 0  # left to the caller, which kills the reader before closing it
    pipe.close()
    assert pipe.write_fd == -1


@pytest.fixture
def fake_envoy(tmp_path: Path) -> Path:
    """An "Envoy" that dies at once when told to read a pipe (as one that crashed while it initialised), and
    otherwise runs."""
    path = tmp_path / "envoy"
    path.write_text('#!/bin/sh\ncase "$2" in /dev/fd/*) exit 3 ;; esac\nexec sleep 60\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_an_early_envoy_that_cannot_take_its_bootstrap_is_replaced_by_one_from_the_file(
        tmp_path: Path, fake_envoy: Path) -> None:
    runtime = rundir.RuntimeDir(tmp_path / "run", owned=False)
    runtime.path.mkdir()
    cfg = DpConfig()
    options = EnvoyOptions(binary=fake_envoy, bootstrap_file=runtime.file(rundir.BOOTSTRAP),
                           admin_address_file=runtime.file(rundir.ADMIN_ADDRESS), concurrency=1, drain_time=1,
                           log_level="info")
    waiting = spawn_waiting_envoy(options, dict(os.environ))
    assert waiting.child.proc.wait(timeout=30) == 3  # gone before kuma-dp had the answer
    definition = Definition(source="--dataplane-file web.yaml", doc={}, mesh="default", name="web")
    head = HeadStart(cfg, dict(os.environ), Notifier({}), definition=definition, runtime=runtime,
                     inputs=Inputs(definition, "token", b"", "", fake_envoy, CpAddress("127.0.0.1", 5678)),
                     admin_port=9901, admin_port_fixed=True, answer={"bootstrap": {"node": {"id": "default.web"}}},
                     envoy=waiting.child, waiting=waiting)
    start_envoy(head)
    try:
        assert head.waiting is None and head.envoy is not None and head.envoy is not waiting.child
        assert head.envoy.argv[1:3] == ["-c", str(runtime.file(rundir.BOOTSTRAP))]  # from the file
        assert head.envoy.proc.poll() is None
        written = json.loads(runtime.file(rundir.BOOTSTRAP).read_text())
        assert written["node"] == {"id": "default.web"}
        assert written["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
        assert runtime.file(rundir.ENVOY_PID).read_text().strip() == str(head.envoy.pid)
        assert waiting.pipe.write_fd == -1  # the early one's pipe closed
    finally:
        if head.envoy is not None:
            head.envoy.proc.kill()
            head.envoy.proc.wait(timeout=30)
