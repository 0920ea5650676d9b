"""kuma-dp's start-up path stays light: what `kuma-dp run` does before Envoy is spawned imports none of the
heavy modules it does not need there (issue 14: each costs tens of milliseconds of start-up on the critical
path, and the resource model ~25 MB of resident memory the long-running process would keep).

Checked in a fresh interpreter (sys.modules), without timing, so a later import at module level cannot
silently undo it. The check runs the real start-up steps: the click command module, agent.run, the checks of
the dataplane file (YAML parsed with the shared bounded loader), the token and the CA.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from tests.unit.test_kumactl import self_signed

REPO = Path(__file__).resolve().parents[2]

# Modules kuma-dp must not load before Envoy is spawned, and why.
NOT_BEFORE_SPAWN = {
    "pydantic": "the resource model: only the bootstrap worker's validation needs it",
    "controlplane": "the resource model: the dataplane file is parsed with kuma_shared.documents",
    "prometheus_client": "kuma-dp's own metrics: loaded on the first scrape (agent/metrics.py)",
    "psutil": "only to find processes (an Envoy left behind, a child's descendants, Envoy's RSS)",
    "cryptography": "kuma-dp checks the CA with ssl; nothing of it needs cryptography",
    "opentelemetry": "MeshMetric's OpenTelemetry backends (agent/metrics_otel.py), loaded when one pushes",
    "agent.metrics_otel": "MeshMetric's OpenTelemetry backends, loaded when one pushes",
    "agent.dns.component": "the host's DNS stub: loaded only with --dns-enabled",
    "agent.vips_client": "the VIP watch runs in the DNS worker, not in kuma-dp",
}

_SCRIPT = textwrap.dedent("""
    import json, sys
    from agent import cli  # the console script's module, as kuma-dp starts
    import agent.commands
    import agent.run
    from agent.config import DpConfig
    from dataclasses import replace

    dp_file, token_file, ca_file = sys.argv[1:4]
    cfg = replace(DpConfig(), dataplane_file=dp_file, token_file=token_file, ca_cert_file=ca_file,
                  cp_address="https://127.0.0.1:5678")
    definition = agent.run.dataplane.load(cfg)
    agent.run.read_token(cfg, definition)
    agent.run.read_ca(cfg)
    print(json.dumps(sorted(sys.modules)))
""")


def loaded_at_start(tmp_path: Path) -> set[str]:
    dp_file = tmp_path / "web.yaml"
    dp_file.write_text(yaml.safe_dump({
        "type": "Dataplane", "mesh": "default", "name": "web",
        "networking": {"address": "127.0.0.1", "inbound": [{"port": 20001, "servicePort": 8080,
                                                             "tags": {"kuma.io/service": "web"}}]}}))
    token_file = tmp_path / "web.token"
    token_file.write_text("a-token\n")
    ca_file, _ = self_signed(tmp_path / "ca", "127.0.0.1")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(dp_file), str(token_file), str(ca_file)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout))


def test_start_up_path_does_not_import_what_it_does_not_need(tmp_path: Path) -> None:
    modules = loaded_at_start(tmp_path)
    assert "agent.run" in modules and "kuma_shared.documents" in modules  # the check ran the real path
    loaded = {name: why for name, why in NOT_BEFORE_SPAWN.items()
              if name in modules or any(m.startswith(name + ".") for m in modules)}
    assert loaded == {}, f"imported before Envoy is spawned (make these imports lazy): {loaded}"


# Modules the bootstrap worker (on the critical path until its verdict) must not load, and why.
NOT_IN_WORKER = {
    "grpc": "kuma-dp makes the bootstrap call itself; the worker only validates",
    "asyncio": "the worker validates and answers, nothing to wait for",
    "agent.config": "kuma-dp's settings table: the worker needs the exit codes only (agent/exit_codes.py)",
    "prometheus_client": "kuma-dp's own metrics",
}


def test_bootstrap_worker_imports_only_what_validation_needs() -> None:
    code = ("import json, sys; import agent.bootstrap_worker; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    modules = set(json.loads(out.stdout))
    assert "controlplane.resources" in modules  # the worker does load the model it validates with
    loaded = {name: why for name, why in NOT_IN_WORKER.items()
              if name in modules or any(m.startswith(name + ".") for m in modules)}
    assert loaded == {}, f"imported by the bootstrap worker: {loaded}"
