"""`kuma-dp run` with its bootstrap worker held, for tests of the orderings the worker's verdict can arrive in.

    python tests/integration/held_worker_dp.py WORKER_PID_FILE -- PYTHON -m agent.cli run FLAGS...

(the tail is the command line tests/integration/test_kuma_dp_support.start_kuma_dp builds; this script is its
`wrapper`). It does what `python -m agent.cli run` does, in this very process, except that the bootstrap worker
(started when the control plane has not answered, agent/run.py) is stopped (SIGSTOP) the moment it is started,
before it could read its definition, and its pid is written to WORKER_PID_FILE: the test then lets it go on
(SIGCONT), or kills it, at the point of its choosing. That makes "the verdict comes after the refusal / after
a stop / never" deterministic, with the real worker, kuma-cp and Envoy (a real worker is that late on a loaded
host, or when it is killed). No WORKER_PID_FILE: no worker was started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def main() -> None:
    pid_file, separator, _python, dash_m, module, *argv = sys.argv[1:]
    assert (separator, dash_m, module) == ("--", "-m", "agent.cli") and argv[:1] == ["run"], sys.argv
    from agent import cli, prestart

    start_worker = prestart.start_worker

    def held(env: dict[str, str]) -> subprocess.Popen[bytes]:
        worker = start_worker(env)
        os.kill(worker.pid, signal.SIGSTOP)
        tmp = Path(pid_file + ".tmp")
        tmp.write_text(f"{worker.pid}\n")
        tmp.rename(pid_file)
        return worker

    prestart.start_worker = held
    cli._prestart(argv)
    from agent.run_flags import run_without_click

    run_without_click(argv[1:])  # exits when the flags are plain (the tests' are)
    raise SystemExit(f"held_worker_dp.py: flags that need click: {argv}")


if __name__ == "__main__":
    main()
