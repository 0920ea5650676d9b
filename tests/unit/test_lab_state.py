"""The lab's pure logic (no root needed): names, subnets, the state file, inventories, mountinfo parsing."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from tests.lab import inventory, naming, state
from tests.lab.cli import build_parser
from tests.lab.state import HostState, LabState
from tests.lab.system import _unescape_mountinfo, is_under, mountpoints


def make_lab(tmp: Path, name: str = "e2e", hosts: int = 3) -> LabState:
    lab = LabState(
        name=name,
        subnet="198.18.4.0/24",
        bridge=naming.bridge_name(name),
        dir=str(tmp / name),
        ssh_key=str(tmp / name / "id_ed25519"),
        known_hosts=str(tmp / name / "known_hosts"),
    )
    for i in range(1, hosts + 1):
        hname = naming.host_name(name, i)
        lab.hosts.append(
            HostState(
                name=hname,
                index=i,
                address=str(state.host_address(lab.network, i)),
                release="trixie" if i == hosts else "bookworm",
                resolved=i == hosts,
                netns=naming.netns_name(hname),
                veth=naming.veth_name(name, i),
                cgroup=f"/sys/fs/cgroup/{naming.cgroup_relpath(name, hname)}",
                rootfs="/var/cache/kuma-vm-lab/bookworm-x",
                dir=str(tmp / name / "hosts" / hname),
                pid=1000 + i,
                status="running",
            )
        )
    return lab


# --- names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["e2e", "a", "lab-1", "kuma-vm-zone-a", "x" * 32])
def test_valid_lab_names(name: str) -> None:
    assert naming.validate_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "E2E", "1lab", "lab-", "-lab", "la--b", "lab_1", "lab.1", "x" * 33, "a b"])
def test_invalid_lab_names(name: str) -> None:
    with pytest.raises(naming.InvalidName):
        naming.validate_lab_name(name)


def test_link_names_fit_ifnamsiz_and_differ_per_lab() -> None:
    long = "kuma-vm-zone-abcdefghijklmnopqr"
    for lab in ["e2e", "a", long]:
        assert len(naming.bridge_name(lab)) <= naming.IFNAMSIZ
        assert len(naming.veth_name(lab, naming.MAX_HOSTS)) <= naming.IFNAMSIZ
    # Labs sharing a prefix still get different links.
    assert naming.bridge_name("zone-a") != naming.bridge_name("zone-b")
    assert naming.veth_name("zone-a", 1) != naming.veth_name("zone-b", 1)
    assert naming.bridge_name("e2e") == naming.bridge_name("e2e")  # stable across runs


def test_host_and_namespace_names() -> None:
    assert naming.host_name("e2e", 1) == "e2e-1"
    assert naming.netns_name("e2e-1") == "klab-e2e-1"
    assert naming.cgroup_relpath("e2e", "e2e-1") == "kuma-vm-lab/e2e/e2e-1"
    assert naming.inventory_group("zone-a") == "zone_a"
    with pytest.raises(naming.InvalidName):
        naming.host_name("e2e", 0)
    with pytest.raises(naming.InvalidName):
        naming.host_name("e2e", naming.MAX_HOSTS + 1)


# --- subnets --------------------------------------------------------------------------------------------------


def net(s: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(s)


def test_first_subnet_when_nothing_is_used() -> None:
    assert state.allocate_subnet([]) == net("198.18.0.0/24")


def test_subnet_skips_other_labs_and_this_machines_networks() -> None:
    used = [net("198.18.0.0/24"), net("198.18.1.0/24"), net("10.0.0.0/8"), net("198.18.2.128/25")]
    assert state.allocate_subnet(used) == net("198.18.3.0/24")


def test_subnet_skips_a_wider_overlapping_network() -> None:
    assert state.allocate_subnet([net("198.18.0.0/16")]) == net("198.19.0.0/24")


def test_no_subnet_left() -> None:
    with pytest.raises(state.NoFreeSubnet):
        state.allocate_subnet([net("198.18.0.0/15")])
    assert state.allocate_subnet([net("0.0.0.0/1")]) == net("198.18.0.0/24")  # does not overlap 198.18/15


def test_allocated_subnets_stay_in_the_benchmark_range() -> None:
    used: list[ipaddress.IPv4Network] = []
    for _ in range(20):
        n = state.allocate_subnet(used)
        assert n.subnet_of(state.LAB_RANGE)
        assert n not in used
        used.append(n)


def test_host_addresses() -> None:
    subnet = net("198.18.7.0/24")
    assert str(state.host_address(subnet, 1)) == "198.18.7.2"
    assert str(state.host_address(subnet, 253)) == "198.18.7.254"
    with pytest.raises(ValueError):
        state.host_address(subnet, 254)
    with pytest.raises(ValueError):
        state.host_address(subnet, 0)


# --- state file -----------------------------------------------------------------------------------------------


def test_state_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUMA_LAB_STATE", str(tmp_path))
    lab = make_lab(tmp_path)
    lab.save()
    loaded = state.load("e2e")
    assert loaded == lab
    assert loaded.gateway == "198.18.4.1"
    assert loaded.next_index() == 4
    assert loaded.host("e2e-2").address == "198.18.4.3"
    assert loaded.host("2").name == "e2e-2"
    with pytest.raises(KeyError):
        loaded.host("e2e-9")
    assert state.all_lab_names() == ["e2e"]
    assert state.load("other") is None
    assert not list(tmp_path.glob("e2e/.*.tmp"))  # written atomically, no temp file left


def test_state_paths_follow_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUMA_LAB_STATE", raising=False)
    monkeypatch.delenv("KUMA_LAB_CACHE", raising=False)
    assert state.state_root() == Path("/var/lib/kuma-vm-lab")
    assert state.cache_root() == Path("/var/cache/kuma-vm-lab")
    monkeypatch.setenv("KUMA_LAB_CACHE", str(tmp_path))
    assert state.cache_root() == tmp_path


# --- status and inventories -----------------------------------------------------------------------------------


def test_status_json_shape(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    data = json.loads(json.dumps(inventory.status_json(lab)))
    assert data["ssh_key"] == lab.ssh_key
    assert [set(h) >= {"name", "address", "release", "pid"} for h in data["hosts"]] == [True] * 3
    first = data["hosts"][0]
    assert (first["name"], first["address"], first["release"], first["pid"]) == (
        "e2e-1",
        "198.18.4.2",
        "bookworm",
        1001,
    )


def test_ini_inventory(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, name="zone-a")
    ini = inventory.render_ini(lab)
    lines = ini.splitlines()
    group = lines.index("[zone_a]")
    assert lines[group + 1 : group + 4] == [
        "zone-a-1 ansible_host=198.18.4.2",
        "zone-a-2 ansible_host=198.18.4.3",
        "zone-a-3 ansible_host=198.18.4.4",
    ]
    assert lines[lines.index("[release_bookworm]") + 1 : lines.index("[release_bookworm]") + 3] == [
        "zone-a-1",
        "zone-a-2",
    ]
    assert lines[lines.index("[release_trixie]") + 1] == "zone-a-3"
    v = lines[lines.index("[all:vars]") + 1 :]
    assert "ansible_user=root" in v
    assert f"ansible_ssh_private_key_file={lab.ssh_key}" in v
    assert "ansible_python_interpreter=/usr/bin/python3" in v
    common = next(x for x in v if x.startswith("ansible_ssh_common_args="))
    assert common.startswith("ansible_ssh_common_args='") and common.endswith("'")
    assert "StrictHostKeyChecking=no" in common and f"UserKnownHostsFile={lab.known_hosts}" in common


def test_yaml_inventory(tmp_path: Path) -> None:
    import yaml
    lab = make_lab(tmp_path)
    doc = yaml.safe_load(inventory.render_yaml(lab))
    v = doc["all"]["vars"]
    assert v["ansible_user"] == "root"
    assert v["ansible_ssh_private_key_file"] == lab.ssh_key
    assert v["ansible_python_interpreter"] == "/usr/bin/python3"
    assert "StrictHostKeyChecking=no" in v["ansible_ssh_common_args"]
    hosts = doc["all"]["children"]["e2e"]["hosts"]
    assert hosts == {
        "e2e-1": {"ansible_host": "198.18.4.2"},
        "e2e-2": {"ansible_host": "198.18.4.3"},
        "e2e-3": {"ansible_host": "198.18.4.4"},
    }
    assert set(doc["all"]["children"]["release_trixie"]["hosts"]) == {"e2e-3"}


def test_inventory_of_a_lab_without_hosts(tmp_path: Path) -> None:
    import yaml
    lab = make_lab(tmp_path, hosts=0)
    assert "[e2e]" in inventory.render_ini(lab)
    assert yaml.safe_load(inventory.render_yaml(lab))["all"]["children"]["e2e"]["hosts"] == {}


def test_ssh_options_use_the_lab_key_and_known_hosts(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    opts = inventory.ssh_options(lab)
    assert opts[opts.index("-i") + 1] == lab.ssh_key
    for o in ("StrictHostKeyChecking=no", f"UserKnownHostsFile={lab.known_hosts}", "BatchMode=yes"):
        assert o in opts


# --- CLI parsing, mountinfo -----------------------------------------------------------------------------------


def test_cli_parses_the_documented_commands() -> None:
    p = build_parser()
    a = p.parse_args(["up", "--name", "e2e", "--hosts", "2", "--release", "trixie", "--resolved", "--add"])
    assert (a.name, a.hosts, a.release, a.resolved, a.add) == ("e2e", 2, "trixie", True, True)
    a = p.parse_args(["status", "--inventory"])
    assert a.inventory == "ini"
    a = p.parse_args(["status", "--name", "e2e", "--inventory", "yaml"])
    assert a.inventory == "yaml"
    a = p.parse_args(["ssh", "--name", "e2e", "e2e-1", "--", "exit", "3"])
    assert a.host == "e2e-1" and a.cmd[-2:] == ["exit", "3"]
    a = p.parse_args(["down", "--all"])
    assert a.all
    with pytest.raises(SystemExit):
        p.parse_args(["down"])


def test_mountinfo_parsing() -> None:
    info = (
        "22 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n"
        "40 22 0:40 / /var/lib/kuma-vm-lab/e2e/hosts/e2e-1/root rw - overlay overlay rw\n"
        "41 22 0:41 / /tmp/with\\040space rw - tmpfs tmpfs rw\n"
    )
    assert mountpoints(info) == ["/", "/var/lib/kuma-vm-lab/e2e/hosts/e2e-1/root", "/tmp/with space"]
    assert _unescape_mountinfo("a\\011b") == "a\tb"
    assert is_under("/var/lib/kuma-vm-lab/e2e/x", "/var/lib/kuma-vm-lab/e2e")
    assert is_under("/var/lib/kuma-vm-lab/e2e", "/var/lib/kuma-vm-lab/e2e/")
    assert not is_under("/var/lib/kuma-vm-lab/e2e2", "/var/lib/kuma-vm-lab/e2e")
