"""Ansible: the 7-host lab fleet (tests/lab/fleet.py) from bare booted hosts to a cross-zone request, and the
converged re-run.

Boots the fleet's seven hosts (global, two zone control planes, an ingress per zone, service hosts on bookworm
and trixie: not timed as part of the mesh), then times:
  first run   ansible-playbook -i <generated lab inventory> playbooks/site.yml on the bare hosts
  mesh up     the first run + mTLS applied on global + until `curl http://billing.mesh/` on the zone-1 host is
              answered by billing in zone-2 (target <= 300 s on this 2-core machine)
  re-run      the same command on the converged fleet, which must report changed=0 everywhere (target <= 60 s)
with the slowest tasks of each run from our callback (bench/callback_plugins/task_times.py: ansible-core has no
profile_tasks). Prints JSON and a table, and the machine's load average before and after (the machine is shared:
a loaded machine makes every number larger). Root only (the lab).

    .venv/bin/python bench/bench_ansible.py [--top 12] [--json-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `tests` importable

from bench._common import dump_json, install_signal_handlers, render_table, verdict
from tests.e2e.packages import build_release
from tests.lab.fixtures import Lab, lab_skip_reason
from tests.lab.fleet import LAYOUT, Fleet, boot, until

CALLBACKS = Path(__file__).resolve().parent / "callback_plugins"
TARGET_MESH_UP_S, TARGET_RERUN_S = 300.0, 60.0


def timed_play(fleet: Fleet, label: str) -> dict[str, Any]:
    times = fleet.workdir / f"task-times-{label}.json"
    env = {"ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS), "ANSIBLE_CALLBACKS_ENABLED": "task_times",
           "KUMA_TASK_TIMES": str(times)}
    start = time.monotonic()
    proc = fleet.play(env=env)
    wall = time.monotonic() - start
    changed = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)",
                                                                  proc.stdout, re.M)}
    return {"wall_s": wall, "changed": changed, **json.loads(times.read_text())}


def run(top: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ansible-"))
    lab = Lab(f"bench-ansible-{os.getpid()}", owner_pid=os.getpid())
    try:
        built = build_release("1")
        own = workdir / "packages"
        own.mkdir()
        packages = {kind: Path(shutil.copy(path, own)) for kind, path in built.items()}
        start = time.monotonic()
        fleet = boot(lab, workdir, packages, workdir / "inventory")
        boot_s = time.monotonic() - start
        start = time.monotonic()
        first = timed_play(fleet, "first")
        fleet.enable_mtls()
        body = until("billing.mesh answered from zone-1", lambda: fleet.z1.ssh(
            "curl -sf http://billing.mesh/", check=False).stdout, timeout=300, who="bench_ansible", interval=0.2)
        mesh_up_s = time.monotonic() - start
        assert json.loads(body)["service"] == "billing", body
        rerun = timed_play(fleet, "rerun")
        assert set(rerun["changed"].values()) == {0}, f"the re-run changed something: {rerun['changed']}"
    finally:
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"hosts": len(LAYOUT), "cores": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
            "boot_s": boot_s, "first_run_s": first["wall_s"], "mesh_up_s": mesh_up_s, "rerun_s": rerun["wall_s"],
            "verdict": {"mesh_up": verdict(mesh_up_s, TARGET_MESH_UP_S), "rerun": verdict(rerun["wall_s"],
                                                                                          TARGET_RERUN_S)},
            "slowest_first_run": first["tasks"][:top], "slowest_rerun": rerun["tasks"][:top]}


def report(doc: dict[str, Any]) -> str:
    lines = [f"load average before {' '.join(f'{x:.2f}' for x in doc['load_before'])}, after "
             f"{' '.join(f'{x:.2f}' for x in doc['load_after'])} ({doc['cores']} cores, shared machine)",
             render_table([("what", "seconds", "target", "verdict"),
                           ("boot 7 hosts (not in the target)", f"{doc['boot_s']:.1f}", "", ""),
                           ("first site.yml run", f"{doc['first_run_s']:.1f}", "", ""),
                           ("mesh up: first run to billing.mesh", f"{doc['mesh_up_s']:.1f}", f"{TARGET_MESH_UP_S:g}",
                            doc["verdict"]["mesh_up"]),
                           ("converged re-run (changed=0)", f"{doc['rerun_s']:.1f}", f"{TARGET_RERUN_S:g}",
                            doc["verdict"]["rerun"])])]
    for key, title in (("slowest_first_run", "slowest tasks, first run"), ("slowest_rerun", "slowest tasks, re-run")):
        lines.append(f"\n{title}:")
        lines.append(render_table([("task (play | task)", "seconds", "runs")]
                                  + [(t["task"][:110], f"{t['seconds']:.1f}", t["count"]) for t in doc[key]]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=12, help="how many of the slowest tasks to show")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    reason = lab_skip_reason()
    if reason:
        raise SystemExit(f"bench_ansible: the lab cannot run here: {reason}")
    install_signal_handlers()  # Ctrl-C and SIGTERM end the run through `finally`: the lab is torn down
    doc = run(args.top)
    print(dump_json(doc), flush=True)
    if not args.json_only:
        print(report(doc))


if __name__ == "__main__":
    main()
