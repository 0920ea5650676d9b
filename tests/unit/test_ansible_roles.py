"""The Ansible roles without hosts: every default is in the argument spec and back, ansible-lint (production
profile) and yamllint are clean, site.yml parses, a bad variable fails in the pre-flight play without any
connection, and the roles' filters (newest package, token claims) do what the tasks rely on."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
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


def test_revoked_ids_from_a_revocations_secret() -> None:
    f = load_filters()
    secret = json.dumps({"type": "GlobalSecret", "name": "zone-token-revocations",
                         "data": base64.b64encode(b"id-1,id-2\nid-3\n").decode()})
    assert f.kuma_revoked_ids(secret) == ["id-1", "id-2", "id-3"]
    assert f.kuma_revoked_ids("") == []  # none revoked yet: the secret does not exist
    with pytest.raises(Exception, match="not a revocations secret"):
        f.kuma_revoked_ids("not json")
