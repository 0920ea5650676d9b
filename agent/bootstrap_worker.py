"""The bootstrap worker: a short-lived child of kuma-dp that validates the dataplane definition with the
control plane's own model, then exits. It is off kuma-dp's critical path: the bootstrap call does not wait for
it (safe: the bootstrap RPC has no side effects, and the control plane validates the definition itself), and
once the control plane answered, the worker is stopped (that answer settles the definition). While no answer
is in, an invalid verdict exits 2 with this worker's message, which names every bad field: a bad file fails
fast while the control plane is unreachable, and says more than the control plane's refusal (agent/run.py).

Why a separate process: the validation needs the resource model (pydantic), ~100 ms of imports and ~25 MB
of resident memory that a long-running kuma-dp would otherwise keep forever (bench/bench_agent.py measures
kuma-dp's RSS). kuma-dp starts it (agent/prestart.py's start_worker) when its head start's bootstrap call got
no answer (agent/run.py), and keeps retrying the call meanwhile (agent/bootstrap_fetch.py).

Protocol: kuma-dp writes one JSON object on stdin (`definition`, `proxyType`, `logLevel`, `logFormat`), then
reads one JSON line from stdout:
    {"valid": true}                                    the definition is valid (exit 0)
    {"error": "...", "exit": 2, "kind": "definition"}  every bad field by its path; kuma-dp exits 2
"""

from __future__ import annotations

import json
import sys
from typing import Any

import controlplane.resources.dataplane  # noqa: F401  (its model is built now, while kuma-dp prepares the request)
from agent.dataplane import Definition, DefinitionError, validate
from agent.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def emit(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def check(payload: dict[str, Any]) -> int:
    try:
        validate(Definition(**payload["definition"]), payload["proxyType"])
    except DefinitionError as e:
        emit(error=str(e), exit=EXIT_USAGE, kind="definition")
        return EXIT_USAGE
    emit(valid=True)
    return EXIT_OK


def main() -> int:
    from kuma_shared import logs

    line = sys.stdin.readline()
    if not line:
        return EXIT_FAILURE  # kuma-dp went away (or needs no validation) before sending the definition
    payload = json.loads(line)
    logs.setup(payload.get("logLevel", "info"), payload.get("logFormat", "text"))
    try:
        return check(payload)
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
