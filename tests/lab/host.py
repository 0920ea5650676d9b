"""One host: its overlay root, identity, boot, readiness and teardown.

Boot (run from this machine, as root):

    echo $$ > <cgroup2>/kuma-vm-lab/<LAB>/<HOST>/cgroup.procs
    ip netns exec <netns> unshare --pid --fork --mount --uts --ipc --cgroup --kill-child=SIGKILL boot.sh ROOT

boot.sh (BOOT_SCRIPT below) makes the host's mounts in its private mount namespace and execs systemd in a
chroot. Beyond the verified recipe in DESIGN.md, each host has its own cgroup and cgroup namespace with a fresh
cgroup2 mount (otherwise every host's systemd would manage the same `system.slice/ssh.service` cgroups of this
machine and stop each other's services), a fresh read-only sysfs (the netns's own links), /proc/sys read-only
except /proc/sys/net (per-netns; so systemd-sysctl and binfmt_misc cannot change this machine's kernel
settings), and a minimal /dev with its own devpts instead of this machine's whole /dev.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

from . import network
from .state import HostState, LabState
from .system import (
    LabError,
    kill_and_wait,
    mountpoints,
    ns_inode,
    proc_alive,
    proc_children,
    proc_cmdline,
    proc_stat,
    remove_cgroup_tree,
    remove_tree,
    run,
    unmount_all_under,
)

INIT = "/lib/systemd/systemd"

BOOT_SCRIPT = """\
#!/bin/sh
# Written by the kuma-vm lab: runs as PID 1 of the host's new PID namespace, in its own mount namespace.
set -eu
ROOT="$1"
mount --make-rprivate /
mount --bind "$ROOT" "$ROOT"
mount -t proc -o nosuid,nodev,noexec proc "$ROOT/proc"
mount --bind "$ROOT/proc/sys" "$ROOT/proc/sys"
mount --bind "$ROOT/proc/sys/net" "$ROOT/proc/sys/net"
mount -o remount,bind,ro "$ROOT/proc/sys"
if [ -e "$ROOT/proc/sysrq-trigger" ]; then
    mount --bind "$ROOT/proc/sysrq-trigger" "$ROOT/proc/sysrq-trigger"
    mount -o remount,bind,ro "$ROOT/proc/sysrq-trigger"
fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$ROOT/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$ROOT/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid tmpfs "$ROOT/dev"
for d in null zero full random urandom tty; do
    touch "$ROOT/dev/$d"
    mount --bind "/dev/$d" "$ROOT/dev/$d"
done
touch "$ROOT/dev/console"
mount --bind /dev/null "$ROOT/dev/console"
mkdir -p "$ROOT/dev/pts" "$ROOT/dev/shm" "$ROOT/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$ROOT/dev/pts"
ln -s pts/ptmx "$ROOT/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$ROOT/dev/shm"
ln -s /proc/self/fd "$ROOT/dev/fd"
ln -s /proc/self/fd/0 "$ROOT/dev/stdin"
ln -s /proc/self/fd/1 "$ROOT/dev/stdout"
ln -s /proc/self/fd/2 "$ROOT/dev/stderr"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$ROOT/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$ROOT/tmp"
exec chroot "$ROOT" /usr/bin/env container=other {init} --system
"""

# Runs with its PID becoming the unshare process: joins the host's cgroup, then the netns, then unshares.
LAUNCH = (
    'echo $$ > "$1/cgroup.procs" && exec ip netns exec "$2" '
    'unshare --pid --fork --mount --uts --ipc --cgroup --kill-child=SIGKILL /bin/sh "$3" "$4"'
)


# --- preparing the root ---------------------------------------------------------------------------------------


def mount_overlay(h: HostState) -> None:
    d = Path(h.dir)
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    if str(h.root) in mountpoints():
        return
    opts = f"lowerdir={h.rootfs},upperdir={d / 'upper'},workdir={d / 'work'}"
    run(["mount", "-t", "overlay", "overlay", "-o", opts, str(h.root)])


def write_identity(h: HostState, lab: LabState, authorized_key: str) -> None:
    """hostname, machine-id, ssh host key and root's authorized key, DNS setup (resolved or a plain file)."""
    root = h.root
    etc = root / "etc"
    (etc / "hostname").write_text(h.name + "\n")
    (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
    write_hosts_file(h, lab)

    key = etc / "ssh/ssh_host_ed25519_key"
    for p in (key, key.with_name(key.name + ".pub")):
        p.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{h.name}", "-f", str(key)])
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    auth = ssh_dir / "authorized_keys"
    auth.write_text(authorized_key.strip() + "\n")
    auth.chmod(0o600)

    units = etc / "systemd/system"
    masked = units / "systemd-resolved.service"
    resolv = etc / "resolv.conf"
    if resolv.exists() or resolv.is_symlink():
        resolv.unlink()
    if h.resolved:
        if masked.is_symlink() and os.readlink(masked) == "/dev/null":
            masked.unlink()
        conf = etc / "systemd/resolved.conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        # Upstream: the lab bridge (a placeholder: the lab has no internet). No fallback servers, no multicast.
        (conf / "kuma-vm-lab.conf").write_text(
            f"[Resolve]\nDNS={lab.gateway}\nFallbackDNS=\nLLMNR=no\nMulticastDNS=no\n"
        )
        resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    else:
        if masked.exists() or masked.is_symlink():
            masked.unlink()
        masked.symlink_to("/dev/null")
        for wants in units.glob("*.wants/systemd-resolved.service"):
            wants.unlink()
        resolv.write_text(f"# Written by the kuma-vm lab (no DNS server in the lab).\nnameserver {lab.gateway}\n")


def write_hosts_file(h: HostState, lab: LabState) -> None:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
        "",
        f"# kuma-vm lab {lab.name}",
        *(f"{o.address}\t{o.name}" for o in lab.hosts),
    ]
    (h.root / "etc/hosts").write_text("\n".join(lines) + "\n")


def host_key_line(h: HostState) -> str:
    kind, blob = (h.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
    return f"{h.name},{h.address} {kind} {blob}"


# --- boot -----------------------------------------------------------------------------------------------------


def launch(h: HostState) -> None:
    """Start the host's init; records the unshare process as `launcher_pid`. Returns at once."""
    d = Path(h.dir)
    script = d / "boot.sh"
    script.write_text(BOOT_SCRIPT.format(init=INIT))
    console = d / "console.log"
    Path(h.cgroup).mkdir(parents=True, exist_ok=True)
    # The outer sh backgrounds the launcher in its own session and prints its PID, then exits: the launcher is
    # nobody's child here (so Ctrl-C or the end of this process does not touch it), and `down` ends it by PID.
    outer = 'log=$1; shift; setsid "$@" </dev/null >>"$log" 2>&1 & echo $!'
    out = run(
        ["sh", "-c", outer, "sh", str(console), "sh", "-c", LAUNCH, "sh", h.cgroup, h.netns, str(script), str(h.root)]
    ).stdout
    pid = int(out.strip())
    st = proc_stat(pid)
    h.launcher_pid = pid
    h.launcher_start = st[2] if st else None
    h.status = "booting"


def find_init(h: HostState, timeout: float = 15.0) -> None:
    """Wait for the launcher's child to exec systemd and record its PID."""
    assert h.launcher_pid is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in proc_children(h.launcher_pid):
            cmd = proc_cmdline(child)
            if cmd[:1] == [INIT]:
                st = proc_stat(child)
                h.pid = child
                h.pid_start = st[2] if st else None
                return
        if not proc_alive(h.launcher_pid):
            break
        time.sleep(0.02)
    h.status = "failed"
    raise LabError(f"{h.name}: systemd did not start\n{console_tail(h)}")


def console_tail(h: HostState, lines: int = 20) -> str:
    try:
        text = (Path(h.dir) / "console.log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no console log)"
    tail = text.splitlines()[-lines:]
    return f"last lines of {Path(h.dir) / 'console.log'}:\n" + "\n".join("    " + t for t in tail)


def nsenter_cmd(h: HostState, cmd: list[str]) -> list[str]:
    """Run a command inside a running host (all its namespaces and its root): for setup and debugging."""
    assert h.pid is not None
    return ["nsenter", "-t", str(h.pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", *cmd]


def wait_running(h: HostState, deadline: float) -> None:
    """Wait until the host's systemd says `running`; on `degraded`/timeout raise with the failed units."""
    state = ""
    while time.monotonic() < deadline:
        if h.pid is None or not proc_alive(h.pid):
            h.status = "failed"
            raise LabError(f"{h.name}: its init (PID {h.pid}) is gone\n{console_tail(h)}")
        remaining = max(1.0, deadline - time.monotonic())
        try:
            proc = run(nsenter_cmd(h, ["systemctl", "is-system-running", "--wait"]), check=False, timeout=remaining)
            state = proc.stdout.strip()
        except subprocess.TimeoutExpired:
            break
        if state == "running":
            return
        if state in ("degraded", "maintenance", "stopping"):
            break
        time.sleep(0.2)  # systemd's bus is not up yet
    h.status = "failed"
    failed = run(nsenter_cmd(h, ["systemctl", "--failed", "--no-legend", "--plain"]), check=False).stdout.strip()
    raise LabError(
        f"{h.name}: systemd is {state or 'not answering'}, not running"
        + ("; failed units:\n    " + failed.replace("\n", "\n    ") if failed else "")
        + f"\n(inspect: python -m tests.lab ssh --name {h.name.rsplit('-', 1)[0]} {h.name} -- journalctl -b)"
    )


def wait_ssh(h: HostState, deadline: float) -> None:
    """Wait until sshd answers with its banner on port 22 of the host's address."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((h.address, 22), timeout=2) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-"):
                    s.sendall(b"SSH-2.0-kuma-vm-lab-probe\r\n")
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    h.status = "failed"
    raise LabError(f"{h.name}: sshd does not answer on {h.address}:22 ({last})")


# --- teardown -------------------------------------------------------------------------------------------------


def _is_ours(pid: int, start: int | None, h: HostState, want: str) -> bool:
    """Is `pid` still the process we recorded (same start time, expected program, in the host's namespaces)?"""
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    if start is not None and st[2] != start:
        return False  # the PID was reused by another process
    cmd = proc_cmdline(pid)
    if not cmd or not any(want in a for a in cmd[:1] + cmd[1:2]):
        return False
    if want == INIT:
        ns = ns_inode(network.netns_path(h.netns))
        if ns is not None and ns == ns_inode(f"/proc/{pid}/ns/net"):
            return True
        try:
            return os.readlink(f"/proc/{pid}/root") == str(h.root)
        except OSError:
            return False
    return True


def power_off(h: HostState) -> None:
    """SIGKILL the host's init (every process of its PID namespace dies with it: nothing shuts down cleanly, as
    on a power cut) and its launcher; its disk (the overlay), netns and veth stay."""
    if h.pid is not None and _is_ours(h.pid, h.pid_start, h, INIT) and not kill_and_wait(h.pid):
        raise LabError(f"{h.name}: init PID {h.pid} did not end after SIGKILL")
    if h.launcher_pid is not None and _is_ours(h.launcher_pid, h.launcher_start, h, "unshare"):
        kill_and_wait(h.launcher_pid)
    h.pid = h.launcher_pid = None
    h.status = "off"


def stop(h: HostState) -> None:
    """End the host's processes, unmount its root, remove its netns, veth, cgroup and directories."""
    power_off(h)
    # Anything still in the host's netns belongs to the host (e.g. a crash between launch and recording the init).
    if network.netns_exists(h.netns):
        ns = ns_inode(network.netns_path(h.netns))
        pids = run(["ip", "netns", "pids", h.netns], check=False).stdout.split()
        for p in map(int, pids):
            if ns is not None and ns_inode(f"/proc/{p}/ns/net") == ns:
                kill_and_wait(p)
    unmount_all_under(h.dir)
    network.remove_host(h.netns, h.veth)
    if Path(h.cgroup).exists():
        remove_cgroup_tree(Path(h.cgroup))
    remove_tree(h.dir)
    h.status = "down"
