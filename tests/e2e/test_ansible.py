"""playbooks/site.yml with the kuma_cp and kuma_dp roles against seven booted lab hosts (tests/lab/fleet.py's
LAYOUT), over ssh, with ansible-core from PyPI and the inventory users run (`python -m tests.lab status --inventory
lab`: hosts.yml next to playbooks/inventories/lab/group_vars): the global control plane; zone-1's and zone-2's
control planes (joined to global: global's CA and a zone token issued on global, both placed by the role); one
zone ingress per zone; in zone-1 a trixie host (systemd-resolved) with `backend` (the primary dataplane,
kuma-dp.service, .mesh DNS) and `web` (kuma-dp@web); in zone-2 a bookworm host with `billing`.

From bare hosts to traffic in one run, with zone-1's dataplanes on global and a policy applied on global in the
zone; with mTLS on the mesh, `curl http://billing.mesh/` on the zone-1 host reaches billing in zone-2 through the
host's resolver, zone-1's Envoy and zone-2's ingress. A second run changes nothing; --check --diff on the converged
fleet reports nothing; a changed dataplane restarts only its own unit; a changed control plane variable restarts
only that control plane, one zone at a time, while cross-zone requests keep succeeding; a lost dataplane token, a
dataplane token revoked on its zone control plane and a zone token revoked on global are issued again; a bad
variable fails before any host is touched. Never against this machine."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.packages import build_release
from tests.integration.mesh_harness import eventually
from tests.lab.fixtures import Lab
from tests.lab.fleet import ANSIBLE_PLAYBOOK, WEB_TAGS, Fleet, boot, echo_dataplane
from tests.requirements import unavailable

pytestmark = pytest.mark.e2e

TIMEOUT_POLICY = {"type": "MeshTimeout", "mesh": "default", "name": "from-global",
                  "spec": {"targetRef": {"kind": "Mesh"},
                           "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "77s"}}]}}

# Requests from the zone-1 host to billing in zone-2, one after the other until /root/loop.stop exists: one line
# per request, "ok|fail UNIX_NANOSECONDS".
REQUEST_LOOP = """#!/bin/sh
while [ ! -e /root/loop.stop ]; do
  if curl -sf -m 5 -o /dev/null http://billing.mesh/; then r=ok; else r=fail; fi
  echo "$r $(date +%s%N)" >> /root/loop.log
done
"""


def token_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, unreachable, failed, ...}."""
    out: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if m:
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def changed(fleet: Fleet, output: str) -> dict[str, int]:
    return {h: r["changed"] for h, r in recap(output).items() if h in {x.name for x in fleet.all}}


def zone1_dataplanes(web_tags: dict[str, str], address: str) -> dict[str, Any]:
    """host_vars of the zone-1 host: its dataplanes with web's tags changed."""
    return {"kuma_dp_dataplanes": [echo_dataplane("web", address, web_tags), echo_dataplane("backend", address)]}


@pytest.fixture(scope="module")
def fleet(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    if os.geteuid() != 0:
        unavailable("lab", "the Ansible e2e tests boot lab hosts: root only")
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.fail(f"{ANSIBLE_PLAYBOOK} is missing: scripts/setup.sh installs ansible-core (the dev extra)")
    # A private copy: another test session may rebuild the shared cache's files while this module runs.
    own = tmp_path_factory.mktemp("packages")
    packages = {kind: Path(shutil.copy(path, own)) for kind, path in build_release("1").items()}
    workdir = tmp_path_factory.mktemp("ansible")
    return boot(lab, workdir, packages, workdir / "inventory")


def test_check_mode_on_bare_hosts_says_what_it_would_do_and_fails_nothing(fleet: Fleet) -> None:
    """--check --diff before anything is installed: tasks that need what earlier tasks would make (the package,
    the control planes' APIs, tokens) must be skipped or predicted, not fail."""
    proc = fleet.play("--check", "--diff", check=False)
    assert proc.returncode == 0, f"check mode on bare hosts failed:\n{proc.stdout[-8000:]}\n{proc.stderr}"
    results = recap(proc.stdout)
    assert {h: (r["failed"], r["unreachable"]) for h, r in results.items()} == {h.name: (0, 0) for h in fleet.all}
    assert all(results[h.name]["changed"] > 0 for h in fleet.all)  # it says what it would do on every host
    assert fleet.glob.ssh("systemctl list-unit-files 'kuma-*'", check=False).stdout.count("kuma-") == 0


def test_site_yml_takes_bare_hosts_to_a_working_mesh(fleet: Fleet) -> None:
    proc = fleet.play()
    assert {h: (r["failed"], r["unreachable"]) for h, r in recap(proc.stdout).items()} == \
        {h.name: (0, 0) for h in fleet.all}
    z1 = fleet.z1
    for host, units in ((fleet.glob, "kuma-cp"), (fleet.cp1, "kuma-cp"), (fleet.cp2, "kuma-cp"),
                        (fleet.in1, "kuma-dp@ingress-zone-1"), (fleet.in2, "kuma-dp@ingress-zone-2"),
                        (z1, "kuma-dp kuma-dp@web"), (fleet.z2, "kuma-dp@billing")):
        assert host.ssh(f"systemctl is-active {units}").stdout.split() == ["active"] * len(units.split()), host
        assert host.ssh(f"systemctl is-enabled {units}").stdout.split() == ["enabled"] * len(units.split()), host
    # Tokens: 0640 root:kuma.
    assert z1.ssh("stat -c '%a %U %G' /etc/kuma/dataplanes/primary.token /etc/kuma/dataplanes/web.token") \
        .stdout.split("\n")[:2] == ["640 root kuma"] * 2
    # web -> backend through both Envoys; backend.mesh in the host's resolver (the primary dataplane's stub).
    body = eventually(lambda: z1.ssh("curl -sf http://127.0.0.1:10001/", check=False).stdout, timeout=90,
                      message="web's outbound to backend")
    assert '"backend"' in body
    addr = eventually(lambda: (r := z1.ssh("getent hosts backend.mesh", check=False)).returncode == 0
                      and r.stdout.split()[0], timeout=60, message="backend.mesh on the trixie host")
    assert addr.startswith("127.2")
    # The zones joined global: their dataplanes are there, and a policy applied on global reaches both.
    assert fleet.cp1.ssh("stat -c '%a %U %G' /etc/kuma/zone.token").stdout.strip() == "640 root kuma"
    eventually(lambda: fleet.zone_dataplanes("zone-1") == {"web", "backend"}, timeout=60,
               message="zone-1's dataplanes on global")
    eventually(lambda: fleet.zone_dataplanes("zone-2") == {"billing"}, timeout=60,
               message="zone-2's dataplanes on global")
    fleet.glob.ssh("kumactl apply -f -", input=yaml.safe_dump(TIMEOUT_POLICY))
    def from_global(cp: Any) -> bool:
        policy = fleet.api(cp, "/meshes/default/meshtimeouts/from-global") or {}
        return bool(policy.get("labels", {}).get("kuma.io/origin") == "global")

    for cp in (fleet.cp1, fleet.cp2):
        eventually(functools.partial(from_global, cp), timeout=60, message=f"global's policy in the zone of {cp.name}")


def test_billing_mesh_on_a_zone_1_host_reaches_billing_in_zone_2_through_its_ingress(fleet: Fleet) -> None:
    # The ingress's token is a zone token of its zone, issued by its zone's control plane.
    claims = token_claims(fleet.in2.ssh("cat /etc/kuma/dataplanes/ingress-zone-2.token").stdout.strip())
    assert claims["Zone"] == "zone-2" and "ingress" in claims["Scope"]
    fleet.enable_mtls()  # cross-zone traffic needs mTLS
    eventually(lambda: fleet.zone2_services_in_zone1() == {"billing"}, timeout=90,
               message="zone-2's ingress and its services in zone-1")
    # `curl http://billing.mesh/` on a zone-1 host: the host's resolver, its Envoy, zone-2's ingress, billing.
    body = eventually(lambda: fleet.z1.ssh("curl -sf http://billing.mesh/", check=False).stdout, timeout=90,
                      message="http://billing.mesh/ from zone-1")
    answer = json.loads(body)
    assert answer["service"] == "billing"
    assert "URI=spiffe://default/backend" in answer["headers"]["x-forwarded-client-cert"]


def test_a_second_run_changes_nothing(fleet: Fleet) -> None:
    proc = fleet.play()
    assert changed(fleet, proc.stdout) == {h.name: 0 for h in fleet.all}, proc.stdout[-6000:]


def test_check_mode_on_the_converged_fleet_reports_nothing(fleet: Fleet) -> None:
    proc = fleet.play("--check", "--diff")
    assert changed(fleet, proc.stdout) == {h.name: 0 for h in fleet.all}, proc.stdout[-6000:]


def test_changed_variables_restart_exactly_their_units_while_cross_zone_traffic_flows(fleet: Fleet) -> None:
    """Two changed variables in one run: web's tags (zone-1's service host) and the log level of zone-2's control
    plane. Exactly kuma-dp@web and zone-2's kuma-cp restart (the zone control plane play runs one host at a time),
    and requests from zone-1 to billing in zone-2 keep succeeding throughout (Envoys keep serving their last
    configuration while their control plane restarts)."""
    z1, cp2 = fleet.z1, fleet.cp2
    units = {"global": (fleet.glob, "kuma-cp"), "cp1": (fleet.cp1, "kuma-cp"), "cp2": (cp2, "kuma-cp"),
             "ingress-1": (fleet.in1, "kuma-dp@ingress-zone-1"), "ingress-2": (fleet.in2, "kuma-dp@ingress-zone-2"),
             "backend": (z1, "kuma-dp"), "web": (z1, "kuma-dp@web"), "billing": (fleet.z2, "kuma-dp@billing")}
    before = {k: fleet.unit_pid(h, u) for k, (h, u) in units.items()}
    z1.ssh("rm -f /root/loop.stop /root/loop.log && cat > /root/loop.sh && chmod 755 /root/loop.sh",
           input=REQUEST_LOOP)
    z1.ssh("systemd-run --unit=billing-loop --collect /root/loop.sh")
    try:
        eventually(lambda: z1.ssh("grep -c ^ok /root/loop.log", check=False).stdout.strip() not in ("", "0"),
                   timeout=60, message="the first request of the loop")
        fleet.host_vars(z1, zone1_dataplanes({**WEB_TAGS, "version": "v2"}, z1.address))
        fleet.host_vars(cp2, {"kuma_cp_log_level": "debug"})  # kept: later runs change nothing more
        proc = fleet.play()
    finally:
        z1.ssh("touch /root/loop.stop")
        eventually(lambda: z1.ssh("systemctl is-active billing-loop", check=False).stdout.strip() != "active",
                   timeout=30, message="the request loop to stop")
    assert "version: v2" in z1.ssh("cat /etc/kuma/dataplanes/web.yaml").stdout
    after = {k: fleet.unit_pid(h, u) for k, (h, u) in units.items()}
    assert {k for k in units if after[k] != before[k]} == {"cp2", "web"}, (before, after)
    assert {h for h, c in changed(fleet, proc.stdout).items() if c} == {z1.name, cp2.name}, proc.stdout[-6000:]
    restarted = int(cp2.ssh("systemctl show -p ExecMainStartTimestamp --timestamp=unix --value kuma-cp")
                    .stdout.strip().lstrip("@"))
    results = [line.split() for line in z1.ssh("cat /root/loop.log").stdout.splitlines()]
    failed = [ts for r, ts in results if r != "ok"]
    assert not failed, f"{len(failed)} of {len(results)} requests to billing.mesh failed during the run"
    # The loop ran across the restart: requests succeeded after the new kuma-cp started (while it became ready
    # and synced with global, which the play waited for).
    assert any(int(ts) // 10**9 > restarted for _, ts in results), (restarted, results[-3:])
    eventually(lambda: '"backend"' in z1.ssh("curl -sf http://127.0.0.1:10001/", check=False).stdout,
               timeout=60, message="web's traffic after its restart")


PROBE = {"type": "Dataplane", "mesh": "default", "name": "probe",
         "networking": {"address": "198.18.255.254",
                        "inbound": [{"port": 1, "tags": {"kuma.io/service": "probe"}}]}}


def test_lost_and_revoked_tokens_are_issued_again_by_the_next_run(fleet: Fleet) -> None:
    """Three ways a token goes bad, repaired by one run (one run for the three: each is a full playbook run
    on seven hosts):
    - zone-1's service host lost backend's token;
    - billing's was revoked on zone-2's control plane;
    - zone-1's zone token was revoked on global.
    The run issues all three again, restarts exactly their three units and prints no token; the zone then
    syncs with global again and cross-zone traffic flows with the new dataplane tokens."""
    z1, z2, cp1 = fleet.z1, fleet.z2, fleet.cp1
    units = {"backend": (z1, "kuma-dp"), "web": (z1, "kuma-dp@web"), "billing": (z2, "kuma-dp@billing"),
             "ingress-2": (fleet.in2, "kuma-dp@ingress-zone-2"), "cp1": (cp1, "kuma-cp"),
             "cp2": (fleet.cp2, "kuma-cp")}
    before = {k: fleet.unit_pid(h, u) for k, (h, u) in units.items()}
    z1.ssh("rm /etc/kuma/dataplanes/primary.token")
    old_billing = z2.ssh("cat /etc/kuma/dataplanes/billing.token").stdout.strip()
    fleet.cp2.ssh("kumactl apply -f -", input=yaml.safe_dump({
        "type": "Secret", "mesh": "default", "name": "dataplane-token-revocations-default",
        "data": base64.b64encode(token_claims(old_billing)["jti"].encode()).decode()}))
    old_zone = cp1.ssh("cat /etc/kuma/zone.token").stdout.strip()
    fleet.glob.ssh("kumactl apply -f -", input=yaml.safe_dump({
        "type": "GlobalSecret", "name": "zone-token-revocations",
        "data": base64.b64encode(token_claims(old_zone)["jti"].encode()).decode()}))
    proc = fleet.play()
    assert token_claims(z1.ssh("cat /etc/kuma/dataplanes/primary.token").stdout.strip())["Name"] == "backend"
    new_billing = z2.ssh("cat /etc/kuma/dataplanes/billing.token").stdout.strip()
    assert new_billing != old_billing and token_claims(new_billing)["Name"] == "billing"
    new_zone = cp1.ssh("cat /etc/kuma/zone.token").stdout.strip()
    assert new_zone != old_zone and token_claims(new_zone)["Zone"] == "zone-1"
    after = {k: fleet.unit_pid(h, u) for k, (h, u) in units.items()}
    assert {k for k in units if after[k] != before[k]} == {"backend", "billing", "cp1"}, (before, after)
    assert {h for h, c in changed(fleet, proc.stdout).items() if c} == {z1.name, z2.name, cp1.name}, \
        proc.stdout[-6000:]
    assert "eyJ" not in proc.stdout  # no token in the output
    # zone-1 syncs again with its new zone token: a Dataplane registered in zone-1 reaches global.
    cp1.ssh("kumactl apply -f -", input=yaml.safe_dump(PROBE))
    try:
        eventually(lambda: "probe" in fleet.zone_dataplanes("zone-1"), timeout=60,
                   message="a new dataplane of zone-1 on global after the new zone token")
    finally:
        cp1.ssh("kumactl delete dataplane probe -m default")
    body = eventually(lambda: z1.ssh("curl -sf http://billing.mesh/", check=False).stdout, timeout=90,
                      message="billing.mesh from zone-1 with the new tokens")
    assert json.loads(body)["service"] == "billing"


def test_a_bad_variable_fails_before_any_host_is_touched(fleet: Fleet) -> None:
    proc = fleet.play("-e", "kuma_cp_mode=glboal", check=False)
    assert proc.returncode != 0
    assert "kuma_cp_mode" in proc.stdout and "glboal" in proc.stdout, proc.stdout[-4000:]
    assert "Gathering Facts" not in proc.stdout and "TASK [kuma_cp" not in proc.stdout
