"""kuma-dp's head start (agent/head_start.py): Envoy spawned before the event loop exists, with neither asyncio
nor grpcio loaded, against a real control plane; and a stop during its blocking bootstrap call ends the call
at once. The rest of kuma-dp's life after a head start (supervision, readiness, verdicts, drains) is what every
other kuma-dp test runs through."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml

from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess
from tests.integration.test_kuma_dp_support import (  # noqa: F401
    DpProcess,
    dataplane_doc,
    dp_env,
    dp_factory,
    pid_gone,
)
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import json, os, sys
from agent import head_start, run_flags
from agent.config import resolve
from agent.notify import Notifier

flags = run_flags.parse_fast(sys.argv[1:])
flags.pop("config_file")
cfg = resolve(flags, {}, None, file_name="config file")
head = head_start.begin(cfg, dict(os.environ), Notifier({}))
assert head.failure is None, repr(head.failure)
assert head.envoy is not None and head.waiting is None, "no Envoy started"
print(json.dumps({"envoy": head.envoy.pid, "argv": head.envoy.argv, "asyncio": "asyncio" in sys.modules,
                  "grpc": "grpc" in sys.modules, "bootstrap": head.runtime.file("bootstrap.json").read_text()}),
      flush=True)
sys.stdin.read()  # Envoy dies with this process (PR_SET_PDEATHSIG): kept alive until the test is done
"""


def test_envoy_is_spawned_before_asyncio_and_grpcio_are_loaded(cp_process: CpProcess, tmp_path: Path) -> None:
    name = f"head-{uuid.uuid4().hex[:6]}"
    r = call("POST", cp_process.http_url + "/tokens/dataplane", {"mesh": "default", "name": name})
    assert r.status == 200, r.raw
    (tmp_path / "dp.yaml").write_text(yaml.safe_dump(dataplane_doc(name, "head", app_port=free_port(),
                                                                   inbound_port=free_port())))
    (tmp_path / "token").write_bytes(r.raw)
    argv = ["--cp-address", f"https://127.0.0.1:{cp_process.ports['KUMA_DP_SERVER_PORT']}",
            "--ca-cert-file", str(cp_process.ca_file), "--dataplane-file", str(tmp_path / "dp.yaml"),
            "--dataplane-token-file", str(tmp_path / "token"), "--runtime-dir", str(tmp_path / "run")]
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, *argv], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dp_env({"CACHE_DIRECTORY": str(tmp_path / "cache")}))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=10)[1][-3000:]
        seen = json.loads(line)
        assert (seen["asyncio"], seen["grpc"]) == (False, False)
        bootstrap = json.loads(seen["bootstrap"])
        assert bootstrap["node"]["id"].endswith(name) or name in json.dumps(bootstrap["node"])
        # Spawned before the answer, reading it from a pipe; the same bytes are on disk for restarts.
        assert seen["argv"][1] == "-c" and seen["argv"][2].startswith("/dev/fd/")
        os.kill(seen["envoy"], 0)  # Envoy runs
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_a_stop_during_the_head_starts_call_ends_it_at_once(dp_factory: Callable[..., DpProcess],  # noqa: F811
                                                           cp_process: CpProcess) -> None:
    # A control plane that accepts the connection and never answers: the TLS handshake waits (the call's
    # timeout is 5 s).
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        dp = dp_factory(name="web-1", definition=dataplane_doc("web-1", "web", app_port=free_port(),
                                                              inbound_port=free_port()),
                        token="a-token", cp_address=f"https://127.0.0.1:{silent.getsockname()[1]}",
                        ca_file=cp_process.ca_file)
        deadline = time.monotonic() + 20
        while "requesting the Envoy bootstrap" not in dp.logs(tail=None):
            assert time.monotonic() < deadline and dp.alive(), dp.logs()
            time.sleep(0.02)
        time.sleep(0.3)  # inside the handshake
        waiting = dp.envoy_pid()  # spawned before the call, waiting for its bootstrap
        assert dp.children() == [waiting] and psutil.Process(waiting).cmdline()[2].startswith("/dev/fd/")
        stopped = time.monotonic()
        dp.signal(signal.SIGTERM)
        assert dp.wait_exit(10) == 0, dp.logs()
        assert time.monotonic() - stopped < 2.5, f"the stop waited for the call:\n{dp.logs()}"
        assert "stop requested before the event loop" in dp.logs(tail=None)
        assert pid_gone(waiting), "the Envoy that never got its bootstrap was left running"
    finally:
        silent.close()


_BAD_DEFINITION_SCRIPT = """
import json, os, sys
from agent import head_start, run_flags
from agent.config import resolve
from agent.notify import Notifier

flags = run_flags.parse_fast(sys.argv[1:])
flags.pop("config_file")
cfg = resolve(flags, {}, None, file_name="config file")
head = head_start.begin(cfg, dict(os.environ), Notifier({}))
seen = {"failure": str(head.failure), "definition": head.definition is not None, "envoy": head.envoy.pid,
        "alive": head.envoy.proc.poll() is None, "argv": head.envoy.argv, "waiting": head.waiting is not None}
head_start.drop_waiting_envoy(head)  # what the agent does with a head start's failure
try:
    os.kill(seen["envoy"], 0)
    seen["gone"] = False
except ProcessLookupError:  # killed and reaped
    seen["gone"] = True
print(json.dumps(seen))
"""


def test_with_a_given_runtime_directory_envoy_starts_before_the_definition_is_read(tmp_path: Path) -> None:
    """--runtime-dir (or systemd's RUNTIME_DIRECTORY) does not depend on the dataplane's name, so Envoy is
    spawned before the definition is parsed. A definition that then fails leaves no Envoy behind."""
    (tmp_path / "dp.yaml").write_text("type: Dataplane\nmesh: default\nname: [unclosed\n")
    (tmp_path / "token").write_text("a-token\n")
    argv = ["--cp-address", f"https://127.0.0.1:{free_port()}", "--ca-cert-file", str(tmp_path / "ca.crt"),
            "--dataplane-file", str(tmp_path / "dp.yaml"), "--dataplane-token-file", str(tmp_path / "token"),
            "--runtime-dir", str(tmp_path / "run")]
    out = subprocess.run([sys.executable, "-c", _BAD_DEFINITION_SCRIPT, *argv], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=dp_env({"CACHE_DIRECTORY": str(tmp_path / "cache")}))
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout)
    assert "--dataplane-file" in seen["failure"] and not seen["definition"]  # it failed on the definition...
    assert seen["waiting"] and seen["alive"] and seen["argv"][2].startswith("/dev/fd/")  # ...with Envoy waiting
    assert seen["gone"], "the waiting Envoy was left running"
