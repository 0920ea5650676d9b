"""The lab's operations: up (and add), down, status, ssh, copy. The CLI and the pytest fixtures call these."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import host as hostmod
from . import inventory, naming, network, rootfs, state
from .state import HostState, LabState
from .system import (
    LabError,
    cgroup2_mount,
    ensure_tools,
    log,
    proc_stat,
    remove_cgroup_tree,
    remove_tree,
    require_root,
    run,
)

DEFAULT_BOOT_TIMEOUT = 180.0
RUNTIME_TOOLS = ("ip", "unshare", "nsenter", "ssh", "scp", "ssh-keygen")


def boot_timeout() -> float:
    return float(os.environ.get("KUMA_LAB_BOOT_TIMEOUT") or DEFAULT_BOOT_TIMEOUT)


def _forwarding_enabled() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return False


def _new_lab(name: str, owner_pid: int | None) -> LabState:
    d = state.lab_dir(name)
    with state.global_lock():
        others = [other.network for other in state.all_labs() if other.name != name]
        subnet = state.allocate_subnet([*others, *network.used_networks()])
        lab = LabState(
            name=name,
            subnet=str(subnet),
            bridge=naming.bridge_name(name),
            dir=str(d),
            ssh_key=str(d / "id_ed25519"),
            known_hosts=str(d / "known_hosts"),
        )
        if owner_pid is not None:
            st = proc_stat(owner_pid)
            lab.owner_pid, lab.owner_start = owner_pid, (st[2] if st else None)
        lab.save()  # recorded before anything is made, so `down` can always clean up
    key = Path(lab.ssh_key)
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kuma-vm-lab-{name}", "-f", str(key)])
    Path(lab.known_hosts).touch()
    return lab


def up(
    name: str,
    hosts: int,
    release: str = "bookworm",
    resolved: bool = False,
    add: bool = False,
    timeout: float | None = None,
    owner_pid: int | None = None,
) -> list[HostState]:
    """Boot `hosts` new hosts into lab `name` (made if it doesn't exist; with add=False it must not exist).

    `owner_pid`: the process the lab belongs to, when a new lab is made (see `owner_alive`).

    Returns the new hosts once each one's systemd is `running` and its sshd answers.
    """
    require_root()
    naming.validate_lab_name(name)
    if release not in naming.RELEASES:
        raise LabError(f"unknown release {release!r}: use one of {', '.join(naming.RELEASES)}")
    if hosts < 1:
        raise LabError("--hosts must be at least 1")
    ensure_tools(RUNTIME_TOOLS)
    if not (rootfs.cache_path(release) / "etc/os-release").exists():
        ensure_tools(["debootstrap"])
    lower = rootfs.ensure(release)
    cgroot = cgroup2_mount()
    started = time.monotonic()
    deadline = started + (timeout if timeout is not None else boot_timeout())

    with state.lab_lock(name):
        lab = state.load(name)
        if lab is not None and not add:
            raise LabError(f"lab {name!r} exists; use --add to add hosts, or `down --name {name}` first")
        if lab is None:
            lab = _new_lab(name, owner_pid)
        first = lab.next_index()
        if first + hosts - 1 > naming.MAX_HOSTS:
            raise LabError(f"a lab holds at most {naming.MAX_HOSTS} hosts")
        new: list[HostState] = []
        for index in range(first, first + hosts):
            hname = naming.host_name(name, index)
            h = HostState(
                name=hname,
                index=index,
                address=str(state.host_address(lab.network, index)),
                release=release,
                resolved=resolved,
                netns=naming.netns_name(hname),
                veth=naming.veth_name(name, index),
                cgroup=str(cgroot / naming.cgroup_relpath(name, hname)),
                rootfs=str(lower),
                dir=str(Path(lab.dir) / "hosts" / hname),
            )
            lab.hosts.append(h)
            new.append(h)
        lab.save()

        try:
            _boot(lab, new, deadline)
        finally:
            lab.save()
    log(
        f"{len(new)} host(s) up in {time.monotonic() - started:.1f} s: "
        + ", ".join(f"{h.name} {h.address}" for h in new)
    )
    return new


def _boot(lab: LabState, new: list[HostState], deadline: float) -> None:
    gateway = lab.gateway
    default_route: str | None = gateway
    if _forwarding_enabled():
        log("this machine forwards IPv4: lab hosts get no default route, so nothing they send leaves the lab")
        default_route = None
    network.ensure_bridge(lab.bridge, gateway, lab.prefixlen)
    pubkey = Path(lab.ssh_key + ".pub").read_text()
    for h in new:
        network.add_host(h.netns, h.veth, lab.bridge, h.address, lab.prefixlen, default_route)
        hostmod.mount_overlay(h)
        hostmod.write_identity(h, lab, pubkey)
    # Every host (old ones too) knows every host by name.
    for h in lab.hosts:
        if h.status in ("running", "booting", "new") and h.root.is_dir():
            hostmod.write_hosts_file(h, lab)
    write_known_hosts(lab)
    for h in new:
        hostmod.launch(h)
    lab.save()
    for h in new:
        hostmod.find_init(h)
    lab.save()
    for h in new:
        hostmod.wait_running(h, deadline)
        hostmod.wait_ssh(h, deadline)
        h.status = "running"
        lab.save()


def power_cycle(lab: LabState, name: str, timeout: float | None = None) -> None:
    """Cut a running host's power (SIGKILL of its init) and boot it again from the same disk."""
    h = next((x for x in lab.hosts if x.name == name), None)
    if h is None:
        raise LabError(f"no host {name!r} in lab {lab.name}")
    deadline = time.monotonic() + (timeout if timeout is not None else boot_timeout())
    hostmod.power_off(h)
    lab.save()
    if Path(h.cgroup).exists():  # the dead systemd's sub-cgroups: the next one creates its own
        remove_cgroup_tree(Path(h.cgroup))
    hostmod.launch(h)
    lab.save()
    hostmod.find_init(h)
    lab.save()
    hostmod.wait_running(h, deadline)
    hostmod.wait_ssh(h, deadline)
    h.status = "running"
    lab.save()


def write_known_hosts(lab: LabState) -> None:
    lines = []
    for h in lab.hosts:
        try:
            lines.append(hostmod.host_key_line(h))
        except FileNotFoundError:
            continue
    Path(lab.known_hosts).write_text("".join(line + "\n" for line in lines))


def down(name: str) -> None:
    """Remove everything lab `name` made: processes, mounts, netns, links, cgroups, directories. Idempotent."""
    require_root()
    started = time.monotonic()
    with state.lab_lock(name):
        lab = state.load(name)
        errors: list[str] = []
        if lab is not None:
            for h in reversed(lab.hosts):
                try:
                    hostmod.stop(h)
                except LabError as e:
                    errors.append(str(e))
            if not errors:
                lab.hosts = []
            else:
                lab.save()
            network.remove_bridge(lab.bridge)
        else:
            network.remove_bridge(naming.bridge_name(name))
        try:
            cgroot = cgroup2_mount()
        except LabError:
            cgroot = None
        if cgroot is not None:
            for d in (cgroot / "kuma-vm-lab" / name, cgroot / "kuma-vm-lab"):
                with contextlib.suppress(OSError):
                    d.rmdir()
        if errors:
            raise LabError(f"lab {name!r} not fully removed:\n" + "\n".join(errors))
        remove_tree(state.lab_dir(name))
    (state.state_root() / f".{name}.lock").unlink(missing_ok=True)
    if lab is not None:
        log(f"lab {name} down in {time.monotonic() - started:.1f} s")


def owner_alive(lab: LabState) -> bool:
    """Is the process that owns the lab still running? (False for labs without an owner, e.g. made by the CLI.)"""
    if lab.owner_pid is None:
        return False
    st = proc_stat(lab.owner_pid)
    return st is not None and st[0] not in ("Z", "X") and lab.owner_start in (None, st[2])


def down_all() -> None:
    for name in state.all_lab_names():
        down(name)


def get(name: str | None) -> LabState:
    """A lab by name; without a name, the only lab there is."""
    if name is None:
        name = os.environ.get("KUMA_LAB") or None
    if name is None:
        names = state.all_lab_names()
        if len(names) == 1:
            name = names[0]
        elif not names:
            raise LabError("no lab is up")
        else:
            raise LabError(f"several labs are up ({', '.join(names)}): say which with --name")
    lab = state.load(name)
    if lab is None:
        raise LabError(f"no lab named {name!r}")
    return lab


def ssh_argv(lab: LabState, host: str, command: Sequence[str], tty: bool = False) -> list[str]:
    h = lab.host(host)
    argv = ["ssh", *inventory.ssh_options(lab)]
    if tty:
        argv.append("-t")
    argv.append(f"root@{h.address}")
    if command:
        argv += ["--", *command]
    return argv


def ssh(lab: LabState, host: str, command: Sequence[str]) -> int:
    tty = not command and sys.stdin.isatty()
    return subprocess.run(ssh_argv(lab, host, command, tty=tty), check=False).returncode


def scp_argv(lab: LabState, host: str, src: str, dest: str, from_host: bool = False) -> list[str]:
    h = lab.host(host)
    remote = f"root@{h.address}:"
    pair = [remote + src, dest] if from_host else [src, remote + dest]
    return ["scp", *inventory.ssh_options(lab), "-q", "-r", "-p", *pair]


def copy(lab: LabState, host: str, src: str, dest: str, from_host: bool = False) -> int:
    return subprocess.run(scp_argv(lab, host, src, dest, from_host), check=False).returncode
