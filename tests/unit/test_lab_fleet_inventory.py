"""`python -m tests.lab status --inventory lab`: the lab fleet's hosts.yml from a lab's state and the fleet's record
(no host is booted or contacted), as ansible-inventory reads it with the committed group_vars."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.lab import fleet
from tests.lab.state import HostState, LabState

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def lab_with_fleet(tmp_path: Path) -> LabState:
    """A lab's state: an unrelated host first (labs are shared by test modules), then the fleet's seven."""
    lab = LabState(name="t", subnet="198.18.0.0/24", bridge="kvl-t", dir=str(tmp_path / "lab"),
                   ssh_key=str(tmp_path / "lab/id_ed25519"), known_hosts=str(tmp_path / "lab/known_hosts"))
    for i in range(1, len(fleet.LAYOUT) + 2):
        lab.hosts.append(HostState(name=f"t-{i}", index=i, address=f"198.18.0.{i + 1}", release="bookworm",
                                   resolved=False, netns=f"t-{i}", veth=f"v{i}", cgroup="/c", rootfs="/r", dir="/d"))
    (tmp_path / "lab").mkdir(parents=True)
    record = {"hosts": {p.part: f"t-{i + 2}" for i, p in enumerate(fleet.LAYOUT)},
              "packages": {"kuma-cp.deb": "/pkgs/kuma-cp_0.1.0-1_amd64.deb",
                           "kuma-dp.deb": "/pkgs/kuma-dp_0.1.0-1_amd64.deb"}}
    (tmp_path / "lab" / fleet.RECORD).write_text(json.dumps(record))
    return lab


def test_the_fleet_inventory_reads_back_with_its_groups_zones_and_dataplanes(tmp_path: Path) -> None:
    lab = lab_with_fleet(tmp_path)
    out = fleet.write_inventory(lab, tmp_path / "inventory")
    assert (out / "group_vars").resolve() == (REPO / "playbooks/inventories/lab/group_vars").resolve()
    proc = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(out), "--list"], cwd=REPO, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert inv["kuma_global"]["hosts"] == ["t-2"]
    assert inv["kuma_zone_cp"]["hosts"] == ["t-3", "t-4"]
    assert inv["kuma_ingress"]["hosts"] == ["t-5", "t-6"]
    assert inv["kuma_dataplanes"]["hosts"] == ["t-7", "t-8"]
    hv = inv["_meta"]["hostvars"]
    assert "t-1" not in hv  # not the fleet's
    assert [hv[h]["kuma_zone"] for h in ("t-3", "t-4", "t-5", "t-6", "t-7", "t-8")] == \
        ["zone-1", "zone-2", "zone-1", "zone-2", "zone-2", "zone-1"]
    assert [d["name"] for d in hv["t-8"]["kuma_dp_dataplanes"]] == ["backend", "web"]
    assert hv["t-8"]["kuma_dp_dataplanes"][0]["networking"]["address"] == "198.18.0.9"
    # The ingresses come from the committed group_vars (templated per host when the role reads them).
    assert hv["t-5"]["kuma_dp_dataplanes"][0]["name"] == "ingress-{{ kuma_zone }}"
    assert hv["t-2"]["kuma_cp_package_file"] == "/pkgs/kuma-cp_0.1.0-1_amd64.deb"
    assert hv["t-2"]["ansible_ssh_private_key_file"] == lab.ssh_key
    assert hv["t-2"]["kuma_dp_drain_time"] == "1s"  # group_vars/all.yml


def test_a_lab_without_a_fleet_or_with_its_hosts_gone_says_what_to_do(tmp_path: Path) -> None:
    lab = lab_with_fleet(tmp_path)
    (tmp_path / "lab" / fleet.RECORD).unlink()
    with pytest.raises(ValueError, match=r"has no fleet.*fleet-up\.sh"):
        fleet.write_inventory(lab, tmp_path / "inventory")
    lab = lab_with_fleet(tmp_path / "again")
    lab.hosts = lab.hosts[:4]
    with pytest.raises(ValueError, match=r"hosts for zone-1 ingress, zone-2 ingress, .* are gone"):
        fleet.render_hosts_yml(lab, fleet.read_record(lab))
