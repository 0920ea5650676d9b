"""The Ansible roles without hosts: every default is in the argument spec and back, ansible-lint (production
profile) and yamllint are clean, site.yml parses, a bad variable fails in the pre-flight play without any
connection, and the roles' filters (newest package, token claims) do what the tasks rely on."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
ROLES = ("kuma_cp", "kuma_dp")


def load_filters() -> Any:
    spec = importlib.util.spec_from_file_location("kuma_filters", REPO / "roles/kuma_common/filter_plugins/kuma.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: scripts/setup.sh installs it (the dev extra)")
    return str(path)


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_specs_agree(role: str) -> None:
    defaults = yaml.safe_load((REPO / f"roles/{role}/defaults/main.yml").read_text())
    spec = yaml.safe_load((REPO / f"roles/{role}/meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options), (set(defaults) ^ set(options))
    for name, value in defaults.items():
        assert name.startswith(f"{role}_"), name
        assert options[name].get("default") == value, name
        assert options[name].get("description"), f"{name} has no description"


def test_ansible_lint_production_profile_and_yamllint_are_clean() -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1",
           "ANSIBLE_LOCAL_TEMP": "/tmp/kuma-vm-ansible-lint"}
    lint = subprocess.run([tool("ansible-lint"), "--offline", "-q"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=600)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    yl = subprocess.run([tool("yamllint"), "-s", "roles", "playbooks", "galaxy.yml", "meta"], cwd=REPO, text=True,
                        capture_output=True, timeout=120)
    assert yl.returncode == 0, yl.stdout + yl.stderr


def write_inventory(tmp_path: Path) -> Path:
    # 198.18.0.0/15 is the lab's range: nothing answers there, and nothing must be contacted anyway.
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {
        "kuma_zone_cp": {"hosts": {"cp-1": {"ansible_host": "198.19.255.1"}}},
        "kuma_dataplanes": {"hosts": {"cp-1": {"kuma_dp_dataplanes": [{"name": "web", "networking": {}}]}}}}}}))
    return inventory


def test_site_yml_parses_and_a_bad_variable_fails_before_any_connection(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path)
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")}
    syntax = subprocess.run([tool("ansible-playbook"), "-i", str(inventory), "playbooks/site.yml", "--syntax-check"],
                            cwd=REPO, env=env, text=True, capture_output=True, timeout=120)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    for extra, message in ((["-e", "kuma_cp_mode=glboal"], "kuma_cp_mode must be one of: global, zone, got: glboal"),
                           (["-e", '{"kuma_dp_dataplanes": [{"mesh": "default"}]}'], "name")):
        proc = subprocess.run([tool("ansible-playbook"), "-i", str(inventory), "playbooks/site.yml", *extra],
                              cwd=REPO, env=env, text=True, capture_output=True, timeout=120)
        assert proc.returncode != 0 and message in proc.stdout, proc.stdout[-3000:]
        assert "UNREACHABLE" not in proc.stdout and "Gathering Facts" not in proc.stdout


def test_the_newest_package_is_picked_by_version_and_release() -> None:
    f = load_filters()
    files = ["/d/kuma-cp_0.1.0-9_amd64.deb", "/d/kuma-cp_0.1.0-10_amd64.deb", "/d/kuma-cp_0.0.9-20_amd64.deb"]
    assert f.kuma_newest_package(files) == "/d/kuma-cp_0.1.0-10_amd64.deb"
    assert f.kuma_newest_package(["/d/kuma-dp-0.2.0-1.x86_64.rpm", "/d/kuma-dp-0.10.0-1.x86_64.rpm"]) == \
        "/d/kuma-dp-0.10.0-1.x86_64.rpm"
    assert f.kuma_newest_package([]) == ""
    with pytest.raises(Exception, match="not a kuma-cp/kuma-dp package"):
        f.kuma_newest_package(["/d/something-else.deb"])


def jwt(claims: dict[str, Any]) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_token_claims_and_time_left() -> None:
    f = load_filters()
    token = jwt({"Name": "web", "Mesh": "default", "Type": "dataplane", "exp": int(time.time()) + 3600})
    assert f.kuma_token_claims(token)["Name"] == "web"
    assert 3500 < f.kuma_token_seconds_left(token) <= 3600
    assert f.kuma_token_claims("not a token") == {} and f.kuma_token_seconds_left("") == 0
    assert f.kuma_token_claims("a.!!!.c") == {}
    assert f.kuma_dp_stem({"name": "web"}) == "web" and f.kuma_dp_stem({"name": "b", "primary": True}) == "primary"
    assert f.kuma_dp_unit({"name": "web"}) == "kuma-dp@web.service"
    assert f.kuma_dp_unit({"name": "b", "primary": True}) == "kuma-dp.service"


def test_a_hosts_dataplanes_join_the_control_plane_of_its_zone() -> None:
    f = load_filters()
    hostvars = {"cp-1": {"kuma_zone": "zone-1"}, "cp-2": {"kuma_zone": "zone-2"}}
    assert f.kuma_zone_control_plane(["cp-1", "cp-2"], hostvars, "zone-2") == "cp-2"
    assert f.kuma_zone_control_plane(["cp-1", "cp-2"], hostvars, "") == "cp-1"  # a single-zone inventory
    assert f.kuma_zone_control_plane([], hostvars, "zone-1") == ""


def test_the_instances_of_a_zone_on_one_postgresql_store_and_their_names() -> None:
    f = load_filters()
    hostvars = {"cp-1": {"kuma_zone": "zone-1"},
                "cp-2a": {"kuma_zone": "zone-2", "kuma_cp_store_type": "postgres", "ansible_host": "10.2.0.10"},
                "cp-2b": {"kuma_zone": "zone-2", "kuma_cp_store_type": "postgres", "ansible_host": "10.2.0.11"},
                "cp-2c": {"kuma_zone": "zone-2"}}  # same zone, SQLite: not sharing the store
    cps = list(hostvars)
    assert f.kuma_zone_instances(cps, hostvars, "zone-2", "cp-2b") == ["cp-2a", "cp-2b"]  # inventory order
    assert f.kuma_zone_instances(cps, hostvars, "zone-2", "cp-2c") == ["cp-2c"]
    assert f.kuma_zone_instances(cps, hostvars, "zone-1", "cp-1") == ["cp-1"]
    assert f.kuma_zone_instances([], hostvars, "", "cp-1") == ["cp-1"]  # not in kuma_zone_cp
    assert f.kuma_host_names(["cp-2a", "cp-2b", "cp-1"], hostvars) == ["cp-2a", "10.2.0.10", "cp-2b", "10.2.0.11",
                                                                       "cp-1"]


def test_revoked_ids_from_a_revocations_secret() -> None:
    f = load_filters()
    secret = json.dumps({"type": "GlobalSecret", "name": "zone-token-revocations",
                         "data": base64.b64encode(b"id-1,id-2\nid-3\n").decode()})
    assert f.kuma_revoked_ids(secret) == ["id-1", "id-2", "id-3"]
    assert f.kuma_revoked_ids("") == []  # none revoked yet: the secret does not exist
    with pytest.raises(Exception, match="not a revocations secret"):
        f.kuma_revoked_ids("not json")


def test_revocation_lists_a_dataplane_token_is_checked_against() -> None:
    f = load_filters()
    assert f.kuma_dp_revocation_list({"name": "web"}) == \
        "secret/dataplane-token-revocations-default/--mesh/default"
    assert f.kuma_dp_revocation_list({"name": "web", "mesh": "payments"}) == \
        "secret/dataplane-token-revocations-payments/--mesh/payments"
    assert f.kuma_dp_revocation_list({"name": "ingress-z1", "proxy_type": "ingress"}) == \
        "global-secret/zone-token-revocations"


def test_the_package_plan_by_os_family_and_architecture() -> None:
    f = load_filters()
    assert f.kuma_package_plan("Debian", "kuma-cp", "x86_64") == \
        {"format": "deb", "file_pattern": "kuma-cp_*_amd64.deb", "repository_name": "kuma-cp"}
    assert f.kuma_package_plan("RedHat", "kuma-dp", "aarch64", "0.2.0") == \
        {"format": "rpm", "file_pattern": "kuma-dp-*.aarch64.rpm", "repository_name": "kuma-dp-0.2.0"}
    assert f.kuma_package_plan("Debian", "kuma-dp", "aarch64", "0.2.0-1")["repository_name"] == "kuma-dp=0.2.0-1"
    with pytest.raises(Exception, match=r"os_family 'Suse'.*RHEL family"):
        f.kuma_package_plan("Suse", "kuma-cp", "x86_64")
    with pytest.raises(Exception, match="architecture 'ppc64le'"):
        f.kuma_package_plan("RedHat", "kuma-cp", "ppc64le")
    # Each format has its tasks file, with the package managers of its family.
    modules = {fmt: {key for task in yaml.safe_load((REPO / f"roles/kuma_common/tasks/package-{fmt}.yml").read_text())
                     for t in [task, *task.get("block", [])] for key in t if key.startswith("ansible.builtin.")}
               for fmt in ("deb", "rpm")}
    assert modules["deb"] >= {"ansible.builtin.apt", "ansible.builtin.apt_repository"}
    assert modules["rpm"] >= {"ansible.builtin.dnf", "ansible.builtin.yum_repository"}
    assert not modules["deb"] & {"ansible.builtin.dnf", "ansible.builtin.yum_repository"}
    assert not modules["rpm"] & {"ansible.builtin.apt", "ansible.builtin.apt_repository"}


PLAN_PLAYBOOK = """
- name: Plan the kuma-cp installation as the role does, without touching the host
  hosts: all
  gather_facts: false
  tasks:
    - name: Plan
      ansible.builtin.include_role:
        name: kuma_common
        tasks_from: plan.yml
      vars:
        kuma_common_package: kuma-cp
    - name: Show the plan
      ansible.builtin.debug:
        msg: "PLAN {{ kuma_common_plan | to_json }} TASKS package-{{ kuma_common_plan.format }}.yml"
"""


@pytest.mark.parametrize(("family", "arch", "expect"), [
    ("RedHat", "x86_64", {"format": "rpm", "file_pattern": "kuma-cp-*.x86_64.rpm", "repository_name": "kuma-cp"}),
    ("Debian", "x86_64", {"format": "deb", "file_pattern": "kuma-cp_*_amd64.deb", "repository_name": "kuma-cp"}),
])
def test_the_role_picks_the_tasks_of_the_hosts_os_family(tmp_path: Path, family: str, arch: str,
                                                         expect: dict[str, str]) -> None:
    """kuma_common's plan.yml, the step package.yml takes before anything is installed, run by ansible-playbook on
    the controller alone (nothing in it connects: the facts it reads are given, as a host would report them)."""
    playbook = tmp_path / "plan.yml"
    playbook.write_text(PLAN_PLAYBOOK)
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
           "ANSIBLE_ROLES_PATH": str(REPO / "roles")}
    proc = subprocess.run([tool("ansible-playbook"), "-i", str(write_inventory(tmp_path)), str(playbook),
                           "-e", json.dumps({"kuma_common_os_family": family, "kuma_common_architecture": arch})],
                          cwd=REPO, env=env, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    plan = json.loads(proc.stdout.split('"PLAN ', 1)[1].split(" TASKS ", 1)[0].replace('\\"', '"'))
    assert plan == expect
    assert (REPO / "roles/kuma_common/tasks" / f"package-{plan['format']}.yml").exists()
    assert "UNREACHABLE" not in proc.stdout


def test_the_example_inventory_passes_the_pre_flight_checks(tmp_path: Path) -> None:
    """playbooks/inventories/example: every host in its group, every variable valid for its role (site.yml's first
    play, which runs on the controller alone; the hosts' addresses are replaced by one nothing answers at)."""
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")}
    listed = subprocess.run([tool("ansible-inventory"), "-i", "playbooks/inventories/example", "--list"],
                            cwd=REPO, env=env, text=True, capture_output=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    groups = json.loads(listed.stdout)
    members = {g: set(groups[g].get("hosts", [])) | {h for c in groups[g].get("children", [])
                                                     for h in groups.get(c, {}).get("hosts", [])}
               for g in ("kuma_global", "kuma_zone_cp", "kuma_ingress", "kuma_dataplanes")}
    assert [len(members[g]) for g in members] == [1, 3, 2, 3]
    hostvars = groups["_meta"]["hostvars"]
    assert {hostvars[h]["kuma_zone"] for h in members["kuma_zone_cp"]} == {"zone-1", "zone-2"}
    assert {h for h in members["kuma_zone_cp"] if hostvars[h].get("kuma_cp_store_type") == "postgres"} == \
        {"cp-1.zone-2.example.internal", "cp-2.zone-2.example.internal"}
    preflight = yaml.safe_load((REPO / "playbooks/site.yml").read_text())[:1]
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "roles").symlink_to(REPO / "roles")
    (tmp_path / "playbooks/preflight.yml").write_text(yaml.safe_dump(preflight))
    proc = subprocess.run([tool("ansible-playbook"), "-i", "playbooks/inventories/example",
                           str(tmp_path / "playbooks/preflight.yml"), "-e", "ansible_host=198.19.255.1",
                           "-e", "vault_kuma_cp_postgres_password=from-the-vault"],
                          cwd=REPO, env=env, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.findall(r"^(\S+)\s+: ok=(\d+)", proc.stdout, re.M) and "failed=0" in proc.stdout
    assert "UNREACHABLE" not in proc.stdout


def test_the_version_of_a_package_file_as_the_package_manager_reports_it() -> None:
    f = load_filters()
    assert f.kuma_package_version("/d/kuma-cp_0.1.0-12_amd64.deb") == "0.1.0-12"
    assert f.kuma_package_version("kuma-dp-0.10.0-3.x86_64.rpm") == "0.10.0-3"
    with pytest.raises(Exception, match="not a kuma-cp/kuma-dp package"):
        f.kuma_package_version("/d/other_1.0-1_amd64.deb")
