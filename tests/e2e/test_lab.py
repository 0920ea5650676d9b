"""The lab itself: booted hosts, ssh, the network between hosts, DNS setup, and a clean `down`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab.fixtures import Lab, LabHost

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def three(lab: Lab) -> list[LabHost]:
    """Two bookworm hosts (no systemd-resolved) and one trixie host with systemd-resolved."""
    bookworm = lab.hosts_like(2, release="bookworm")
    trixie = lab.hosts_like(1, release="trixie", resolved=True)
    return [*bookworm, *trixie]


def cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.lab", *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_hosts_are_running(three: list[LabHost]) -> None:
    releases = {h.release for h in three}
    assert releases == {"bookworm", "trixie"}
    for h in three:
        state = h.ssh("systemctl is-system-running", check=False).stdout.strip()
        assert state == "running", f"{h.name}: {state}\n" + h.ssh("systemctl --failed", check=False).stdout
        assert h.ssh("hostname").stdout.strip() == h.name
        codename = h.ssh(". /etc/os-release && echo $VERSION_CODENAME").stdout.strip()
        assert codename == h.release
        assert h.pid is not None and Path(f"/proc/{h.pid}/cmdline").read_bytes().startswith(b"/lib/systemd/systemd")


def test_hosts_have_their_own_identity_and_cgroup(three: list[LabHost]) -> None:
    ids = {h.ssh("cat /etc/machine-id").stdout.strip() for h in three}
    assert len(ids) == len(three)
    for h in three:
        # Each host's systemd manages its own cgroup subtree of this machine, not this machine's root.
        cgroup = Path(f"/proc/{h.pid}/cgroup").read_text().splitlines()
        unified = next(line for line in cgroup if line.startswith("0::"))
        assert unified.endswith(f"/kuma-vm-lab/{h.name.rsplit('-', 1)[0]}/{h.name}/init.scope"), unified


def test_ssh_exit_status_passes_through(lab: Lab, three: list[LabHost]) -> None:
    h = three[0]
    assert h.ssh("exit 3", check=False).returncode == 3
    assert h.ssh(["sh", "-c", "echo 'a b'; exit 0"]).stdout == "a b\n"
    assert cli("ssh", "--name", lab.name, h.name, "--", "exit", "3", check=False).returncode == 3
    assert cli("ssh", "--name", lab.name, h.name, "--", "true").returncode == 0
    out = cli("ssh", "--name", lab.name, h.name, "--", "echo", "hello").stdout
    assert out == "hello\n"


def test_hosts_reach_each_other(three: list[LabHost]) -> None:
    probe = "import socket,sys\ns = socket.create_connection((sys.argv[1], 22), timeout=5)\nprint(s.recv(4).decode())\n"
    for a in three:
        for b in three:
            if a is b:
                continue
            a.ssh(["ping", "-c", "1", "-W", "2", b.name])  # by name, from /etc/hosts
            out = a.ssh(["python3", "-c", probe, b.address]).stdout.strip()
            assert out == "SSH-", f"{a.name} -> {b.name}: {out!r}"


def test_resolved_only_where_asked(three: list[LabHost]) -> None:
    with_resolved = [h for h in three if h.resolved]
    without = [h for h in three if not h.resolved]
    assert with_resolved and without
    for h in with_resolved:
        assert h.ssh("systemctl is-active systemd-resolved").stdout.strip() == "active"
        assert "stub-resolv.conf" in h.ssh("readlink /etc/resolv.conf").stdout
    for h in without:
        assert h.ssh("systemctl is-active systemd-resolved", check=False).stdout.strip() != "active"
        h.ssh("test -f /etc/resolv.conf && ! test -L /etc/resolv.conf")


def test_copy_and_fetch(three: list[LabHost], tmp_path: Path) -> None:
    h = three[-1]
    src = tmp_path / "hello.txt"
    src.write_text("hello from the test\n")
    h.copy(src, "/root/hello.txt")
    assert h.ssh("cat /root/hello.txt").stdout == "hello from the test\n"
    h.fetch("/etc/hostname", tmp_path / "hostname")
    assert (tmp_path / "hostname").read_text().strip() == h.name


def test_status_and_inventory(lab: Lab, three: list[LabHost]) -> None:
    status = json.loads(cli("status", "--name", lab.name, "--json").stdout)
    assert set(status) >= {"hosts", "ssh_key"}
    by_name = {h["name"]: h for h in status["hosts"]}
    for h in three:
        entry = by_name[h.name]
        assert (entry["address"], entry["release"], entry["pid"]) == (h.address, h.release, h.pid)
    assert Path(status["ssh_key"]).is_file()
    ini = cli("status", "--name", lab.name, "--inventory").stdout
    for h in three:
        assert f"{h.name} ansible_host={h.address}" in ini
    assert "ansible_python_interpreter=/usr/bin/python3" in ini
    assert "ansible_ssh_private_key_file=" in ini
    yml = cli("status", "--name", lab.name, "--inventory", "yaml").stdout
    assert f'ansible_host: "{three[0].address}"' in yml


# --- a separate lab, through the CLI, and what `down` leaves ---------------------------------------------------


def leftovers(state: dict[str, Any]) -> list[str]:
    """Everything of a lab (from its state file) that is still on this machine."""
    found: list[str] = []
    for h in state["hosts"]:
        for key, start_key in (("pid", "pid_start"), ("launcher_pid", "launcher_start")):
            pid = h.get(key)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text() if pid else ""
            except FileNotFoundError:
                stat = ""
            if not stat:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            running = fields[0] not in ("Z", "X")  # a zombie only waits for this machine's PID 1 to reap it
            if running and h.get(start_key) in (None, int(fields[19])):
                found.append(f"process {pid} ({key} of {h['name']})")
        if Path(h["cgroup"]).exists():
            found.append(f"cgroup {h['cgroup']}")
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    found += [f"mount {m}" for m in mounts if m == state["dir"] or m.startswith(state["dir"] + "/")]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    found += [f"netns {h['netns']}" for h in state["hosts"] if h["netns"] in netns]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    found += [f"link {n}" for n in [state["bridge"], *(h["veth"] for h in state["hosts"])] if n in names]
    if Path(state["dir"]).exists():
        found.append(f"state dir {state['dir']}")
    return found


def read_state(name: str) -> dict[str, Any]:
    from tests.lab import state as labstate

    data: dict[str, Any] = json.loads((labstate.lab_dir(name) / "state.json").read_text())
    return data


def test_cli_up_and_down_leave_nothing(lab: Lab) -> None:
    name = f"e2ecli-{os.getpid()}"
    up = cli("up", "--name", name, "--hosts", "2", "--json", "--owner-pid", str(os.getpid()))
    status = json.loads(up.stdout)
    assert [h["name"] for h in status["hosts"]] == [f"{name}-1", f"{name}-2"]
    state = read_state(name)
    assert leftovers(state) != []  # the check sees a running lab
    assert cli("ssh", "--name", name, f"{name}-2", "--", "exit 7", check=False).returncode == 7
    cli("ssh", "--name", name, f"{name}-1", "--", "ping", "-c1", "-W2", f"{name}-2")
    cli("down", "--name", name)
    assert leftovers(state) == []
    cli("down", "--name", name)  # idempotent
    assert leftovers(state) == []


def test_down_cleans_a_crashed_up(lab: Lab) -> None:
    """`up` killed while it boots: `down` still finds and removes everything from the state file."""
    name = f"e2ecrash-{os.getpid()}"
    cli("up", "--name", name, "--hosts", "1", "--owner-pid", str(os.getpid()))  # now crash an --add
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.lab", "up", "--name", name, "--hosts", "2", "--add"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            state = read_state(name)
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if len(state["hosts"]) == 3 and state["hosts"][-1].get("launcher_pid"):
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = read_state(name)
    assert len(state["hosts"]) == 3
    cli("down", "--name", name)
    # Hosts whose init was not recorded yet are ended through their netns; give them a moment to be reaped.
    assert leftovers(state) == []
