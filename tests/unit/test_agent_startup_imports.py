"""kuma-dp's start-up path stays light: what `kuma-dp run` does before Envoy is spawned imports none of the
heavy modules it does not need there (issue 14: each costs tens of milliseconds of start-up on the critical
path, and the resource model ~25 MB of resident memory the long-running process would keep).

Checked in a fresh interpreter (sys.modules), without timing, so a later import at module level cannot
silently undo it. The check runs the real start-up steps: the entry point, the fast flag parse (no click),
and kuma-dp's head start (agent/head_start.py): the checks of the dataplane file (YAML parsed with the shared
bounded loader), the token, the CA and the Envoy binary, the runtime directory, the readiness socket, Envoy's
version, and the bootstrap call (to a port where nothing listens: the call is made, it fails, and the event
loop's path would ask again).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from tests.ports import free_port
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
    "click": "plain `kuma-dp run` flags are parsed without it (agent/run_flags.py); errors and --help use it",
    "importlib.metadata": "kuma-dp's version is read from its metadata file (agent.version(), ~20 ms less)",
    "grpc": "its Cython core costs ~50 ms: the bootstrap call goes without it (agent/grpc_unary.py); kuma-dp's "
            "streams load it once Envoy is spawned",
    "asyncio": "the head start spawns Envoy before the event loop exists (agent/head_start.py)",
    "agent.run": "the agent's event-loop half: loaded once Envoy is spawned",
}

_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from agent import cli  # the console script's module, as kuma-dp starts
    from agent import run_flags  # `kuma-dp run` with plain flags: no click
    from agent import head_start
    from agent.config import resolve
    from agent.notify import Notifier

    dp_file, token_file, ca_file, runtime_dir, port = sys.argv[1:6]
    flags = run_flags.parse_fast(["--dataplane-file", dp_file, "--dataplane-token-file", token_file,
                                  "--ca-cert-file", ca_file, "--cp-address", f"https://127.0.0.1:{port}",
                                  "--runtime-dir", runtime_dir])
    flags.pop("config_file")
    cfg = resolve(flags, {}, None, file_name="config file")
    head = head_start.begin(cfg, dict(os.environ), Notifier({}))
    assert head.failure is None, repr(head.failure)
    assert head.request and head.answer is None, "the call was made, and failed"
    assert head.waiting is not None and head.envoy.proc.poll() is None, "Envoy spawned, waiting for its bootstrap"
    loaded = sorted(sys.modules)
    head_start.drop_waiting_envoy(head)  # as kuma-dp does when it stops here (psutil finds Envoy's descendants)
    print(json.dumps(loaded))
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
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(dp_file), str(token_file), str(ca_file),
                          str(tmp_path / "run"), str(free_port())], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout))


def test_start_up_path_does_not_import_what_it_does_not_need(tmp_path: Path) -> None:
    modules = loaded_at_start(tmp_path)
    assert {"agent.head_start", "kuma_shared.documents", "h2.connection"} <= modules  # it ran the real path
    loaded = {name: why for name, why in NOT_BEFORE_SPAWN.items()
              if name in modules or any(m.startswith(name + ".") for m in modules)}
    assert loaded == {}, f"imported before Envoy is spawned (make these imports lazy): {loaded}"


def test_version_is_the_installed_distributions_without_importlib_metadata() -> None:
    code = ("import json, sys, agent; v = agent.version(); loaded = 'importlib.metadata' in sys.modules; "
            "from importlib.metadata import version; print(json.dumps([v, version('kuma-vm'), loaded]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    ours, metadata, loaded = json.loads(out.stdout)
    assert ours == metadata and not loaded


# Modules the bootstrap worker must not load, and why (its verdict gates READY=1, and its CPU competes with
# kuma-dp and Envoy on a small host).
NOT_IN_WORKER = {
    "grpc": "kuma-dp makes the bootstrap call itself; the worker only validates",
    "asyncio": "the worker validates and answers, nothing to wait for",
    "agent.config": "kuma-dp's settings table: the worker needs the exit codes only (agent/exit_codes.py)",
    "prometheus_client": "kuma-dp's own metrics",
    "pkgutil": "only load_all() walks the policy modules",
    "controlplane.policies": "policy types: the worker validates a Dataplane or a ZoneIngress",
    "controlplane.resources.mesh": "the registry imports a type's module on its first lookup",
    "controlplane.resources.insights": "the registry imports a type's module on its first lookup",
    "controlplane.resources.secret": "the registry imports a type's module on its first lookup",
    "controlplane.resources.vip": "the registry imports a type's module on its first lookup",
}
# ...and what it does load: the models it validates with (ZoneIngress's module only for a zone ingress).
IN_WORKER = {"dataplane": {"controlplane.resources.dataplane"},
             "ingress": {"controlplane.resources.dataplane", "controlplane.resources.zone"}}


def test_bootstrap_worker_imports_only_what_validation_needs() -> None:
    definitions = {
        "dataplane": {"type": "Dataplane", "mesh": "default", "name": "web",
                      "networking": {"address": "127.0.0.1",
                                     "inbound": [{"port": 20001, "servicePort": 8080,
                                                  "tags": {"kuma.io/service": "web"}}]}},
        "ingress": {"type": "ZoneIngress", "name": "ingress-1",
                    "networking": {"address": "127.0.0.1", "port": 10001}},
    }
    # The worker's real run: its imports, then the validation of one definition of each proxy type.
    code = textwrap.dedent("""
        import io, json, sys
        import agent.bootstrap_worker as worker
        at_import = sorted(sys.modules)
        sys.stdin, out = io.StringIO(sys.argv[1] + "\\n"), sys.stdout
        sys.stdout = io.StringIO()
        code = worker.main()
        verdict = sys.stdout.getvalue()
        print(json.dumps({"import": at_import, "run": sorted(sys.modules), "code": code, "verdict": verdict}),
              file=out)
    """)
    for proxy_type, doc in definitions.items():
        payload = {"definition": {"source": "--dataplane-file x.yaml", "doc": doc, "mesh": "default",
                                  "name": doc["name"], "proxy_type": proxy_type},
                   "proxyType": proxy_type, "logLevel": "info", "logFormat": "text"}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True,
                             cwd=REPO, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout)
        assert (got["code"], json.loads(got["verdict"])) == (0, {"valid": True}), (proxy_type, got["verdict"])
        at_import, after_run = set(got["import"]), set(got["run"])
        assert "controlplane.resources.dataplane" in at_import  # built while kuma-dp prepares the request
        assert IN_WORKER[proxy_type] <= after_run
        loaded = {name: why for name, why in NOT_IN_WORKER.items()
                  if name in after_run or any(m.startswith(name + ".") for m in after_run)}
        assert loaded == {}, f"imported by the bootstrap worker ({proxy_type}): {loaded}"
        if proxy_type == "dataplane":
            assert "controlplane.resources.zone" not in after_run
