"""playbooks/site.yml with the kuma_cp and kuma_dp roles against booted lab hosts, over ssh, with ansible-core
from PyPI: a bookworm host runs the global control plane; another bookworm host the control plane of zone-1
(joined to global: global's CA and a zone token issued on global, both placed by the role) and the dataplane
`web` (kuma-dp@web); trixie (with systemd-resolved) the primary dataplane `backend` (kuma-dp.service, .mesh
DNS). From bare hosts to traffic in one run, with zone-1's dataplanes on global and a policy applied on
global in the zone; a second run changes nothing; --check --diff on the converged fleet reports nothing; a
changed dataplane restarts only its own unit; a lost dataplane token and a zone token revoked on global are
issued again; a bad variable fails before any host is touched. Cross-zone: a third bookworm host runs zone-2's
control plane, `billing` and zone-2's ingress (kuma-dp@ingress-z2), zone-1's ingress runs beside `web`; with
mTLS on the mesh, `curl http://billing.mesh/` on the trixie host of zone-1 reaches billing in zone-2 through
the host's resolver, zone-1's Envoy and zone-2's ingress. Never against this machine."""

from __future__ import annotations

import base64
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
from tests.lab.fleet import ANSIBLE_PLAYBOOK, Fleet, boot
from tests.requirements import unavailable

pytestmark = pytest.mark.e2e

TIMEOUT_POLICY = {"type": "MeshTimeout", "mesh": "default", "name": "from-global",
                  "spec": {"targetRef": {"kind": "Mesh"},
                           "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "77s"}}]}}


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


@pytest.fixture(scope="module")
def fleet(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    if os.geteuid() != 0:
        unavailable("lab", "the Ansible e2e tests boot lab hosts: root only")
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.fail(f"{ANSIBLE_PLAYBOOK} is missing: scripts/setup.sh installs ansible-core (the dev extra)")
    # A private copy: another test session may rebuild the shared cache's files while this module runs.
    own = tmp_path_factory.mktemp("packages")
    packages = {kind: Path(shutil.copy(path, own)) for kind, path in build_release("1").items()}
    return boot(lab, tmp_path_factory.mktemp("ansible"), packages)


def test_site_yml_takes_bare_hosts_to_a_working_mesh(fleet: Fleet) -> None:
    proc = fleet.play()
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap(proc.stdout).values())
    cp, other = fleet.cp, fleet.other
    assert cp.ssh("systemctl is-active kuma-cp kuma-dp@web").stdout.split() == ["active", "active"]
    assert other.ssh("systemctl is-active kuma-dp").stdout.strip() == "active"
    assert cp.ssh("systemctl is-enabled kuma-cp kuma-dp@web").stdout.split() == ["enabled", "enabled"]
    # Tokens: 0640 root:kuma, bound to their dataplane.
    assert other.ssh("stat -c '%a %U %G' /etc/kuma/dataplanes/primary.token").stdout.strip() == "640 root kuma"
    # web -> backend through both Envoys, across the hosts; backend.mesh on the primary dataplane's host.
    body = eventually(lambda: cp.ssh("curl -sf http://127.0.0.1:10001/", check=False).stdout, timeout=90,
                      message="web's outbound to backend")
    assert '"backend"' in body
    addr = eventually(lambda: (r := other.ssh("getent hosts backend.mesh", check=False)).returncode == 0
                      and r.stdout.split()[0], timeout=60, message="backend.mesh on the trixie host")
    assert addr.startswith("127.2")
    # zone-1 joined global: its dataplanes are there, and a policy applied on global reaches the zone.
    assert fleet.glob.ssh("systemctl is-active kuma-cp").stdout.strip() == "active"
    assert cp.ssh("stat -c '%a %U %G' /etc/kuma/zone.token").stdout.strip() == "640 root kuma"
    eventually(lambda: fleet.zone_dataplanes() == {"web", "backend"}, timeout=60,
               message="zone-1's dataplanes on global")
    fleet.glob.ssh("kumactl apply -f -", input=yaml.safe_dump(TIMEOUT_POLICY))
    eventually(lambda: (fleet.api(cp, "/meshes/default/meshtimeouts/from-global") or {}).get("labels", {})
               .get("kuma.io/origin") == "global", timeout=60, message="global's policy in zone-1")


def test_billing_mesh_on_a_zone_1_host_reaches_billing_in_zone_2_through_its_ingress(fleet: Fleet) -> None:
    cp, other, z2 = fleet.cp, fleet.other, fleet.z2
    assert cp.ssh("systemctl is-active kuma-dp@ingress-z1").stdout.strip() == "active"
    assert z2.ssh("systemctl is-active kuma-cp kuma-dp@billing kuma-dp@ingress-z2").stdout.split() == ["active"] * 3
    # The ingress's token is a zone token of its zone, issued by its zone's control plane.
    claims = token_claims(z2.ssh("cat /etc/kuma/dataplanes/ingress-z2.token").stdout.strip())
    assert claims["Zone"] == "zone-2" and "ingress" in claims["Scope"]
    fleet.enable_mtls()  # cross-zone traffic needs mTLS
    eventually(lambda: fleet.zone2_services_in_zone1() == {"billing"}, timeout=90,
               message="zone-2's ingress and its services in zone-1")
    # `curl http://billing.mesh/` on a zone-1 host: the host's resolver, its Envoy, zone-2's ingress, billing.
    body = eventually(lambda: other.ssh("curl -sf http://billing.mesh/", check=False).stdout, timeout=90,
                      message="http://billing.mesh/ from zone-1")
    answer = json.loads(body)
    assert answer["service"] == "billing"
    assert "URI=spiffe://default/backend" in answer["headers"]["x-forwarded-client-cert"]


def test_a_second_run_changes_nothing(fleet: Fleet) -> None:
    proc = fleet.play()
    assert {h: r["changed"] for h, r in recap(proc.stdout).items()} == \
        {fleet.glob.name: 0, fleet.cp.name: 0, fleet.other.name: 0, fleet.z2.name: 0}, proc.stdout[-6000:]


def test_check_mode_on_the_converged_fleet_reports_nothing(fleet: Fleet) -> None:
    proc = fleet.play("--check", "--diff")
    assert {h: r["changed"] for h, r in recap(proc.stdout).items()} == \
        {fleet.glob.name: 0, fleet.cp.name: 0, fleet.other.name: 0, fleet.z2.name: 0}, proc.stdout[-6000:]


def test_a_changed_dataplane_restarts_only_its_own_unit(fleet: Fleet) -> None:
    cp, other = fleet.cp, fleet.other
    before = {"cp": fleet.unit_pid(cp, "kuma-cp"), "web": fleet.unit_pid(cp, "kuma-dp@web"),
              "backend": fleet.unit_pid(other, "kuma-dp")}
    fleet.web_tags = {**fleet.web_tags, "version": "v2"}
    fleet.play()
    assert "version: v2" in cp.ssh("cat /etc/kuma/dataplanes/web.yaml").stdout
    after = {"cp": fleet.unit_pid(cp, "kuma-cp"), "web": fleet.unit_pid(cp, "kuma-dp@web"),
             "backend": fleet.unit_pid(other, "kuma-dp")}
    assert after["web"] != before["web"] and after["cp"] == before["cp"] and after["backend"] == before["backend"]
    eventually(lambda: '"backend"' in cp.ssh("curl -sf http://127.0.0.1:10001/", check=False).stdout,
               timeout=60, message="traffic after web's restart")


def test_a_lost_token_is_issued_again_and_only_its_unit_restarts(fleet: Fleet) -> None:
    cp, other = fleet.cp, fleet.other
    web_before, backend_before = fleet.unit_pid(cp, "kuma-dp@web"), fleet.unit_pid(other, "kuma-dp")
    other.ssh("rm /etc/kuma/dataplanes/primary.token")
    proc = fleet.play()
    changed = {h: r["changed"] for h, r in recap(proc.stdout).items()}
    assert changed[fleet.other.name] > 0
    assert other.ssh("test -s /etc/kuma/dataplanes/primary.token", check=False).returncode == 0
    assert fleet.unit_pid(other, "kuma-dp") != backend_before and fleet.unit_pid(cp, "kuma-dp@web") == web_before
    assert "eyJ" not in proc.stdout  # no token in the output


def test_a_zone_token_revoked_on_global_is_replaced_by_the_next_run(fleet: Fleet) -> None:
    cp = fleet.cp
    old = cp.ssh("cat /etc/kuma/zone.token").stdout.strip()
    jti = token_claims(old)["jti"]
    revocations = {"type": "GlobalSecret", "name": "zone-token-revocations",
                   "data": base64.b64encode(jti.encode()).decode()}
    fleet.glob.ssh("kumactl apply -f -", input=yaml.safe_dump(revocations))
    before = fleet.unit_pid(cp, "kuma-cp")
    proc = fleet.play()
    new = cp.ssh("cat /etc/kuma/zone.token").stdout.strip()
    assert new != old and token_claims(new)["Zone"] == "zone-1"
    assert fleet.unit_pid(cp, "kuma-cp") != before  # restarted with the new token
    assert "eyJ" not in proc.stdout
    # The zone syncs again with its new token: a dataplane change in zone-1 reaches global.
    fleet.web_tags = {**fleet.web_tags, "version": "v3"}
    fleet.play()
    eventually(lambda: any(i["labels"].get("kuma.io/display-name") == "web"
                           and i["networking"]["inbound"][0]["tags"].get("version") == "v3"
                           for i in (fleet.api(fleet.glob, "/meshes/default/dataplanes") or {}).get("items", [])),
               timeout=60, message="zone-1's change on global after the new zone token")


def test_a_bad_variable_fails_before_any_host_is_touched(fleet: Fleet) -> None:
    proc = fleet.play("-e", "kuma_cp_mode=glboal", check=False)
    assert proc.returncode != 0
    assert "kuma_cp_mode" in proc.stdout and "glboal" in proc.stdout, proc.stdout[-4000:]
    assert "Gathering Facts" not in proc.stdout and "TASK [kuma_cp" not in proc.stdout
