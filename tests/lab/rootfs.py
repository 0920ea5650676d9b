"""Cached Debian root filesystems: one debootstrap per release, shared read-only by every host (overlayfs).

The cache lives in `/var/cache/kuma-vm-lab/` (or `$KUMA_LAB_CACHE`) as `<release>-<key>/`, where the key hashes
the package list and the base customisation, so changing either builds a new cache instead of using a stale
one. A build runs in `.build-<release>-<pid>/` and is renamed into place only when complete, under a per-release
lock, so a crashed build never leaves half a cache and two concurrent builds don't collide.

systemd-resolved is installed in every cache (a separate package on both bookworm and trixie); each host
enables or masks it (see host.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from . import state
from .system import LabError, log, remove_tree

PACKAGES = (
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",  # Ansible's apt module
    "sudo",
    "curl",
    "ca-certificates",
    "gnupg",
    "iproute2",
    "iptables",
    "iputils-ping",
    "bind9-dnsutils",  # dig
    "procps",
    "netbase",
    "adduser",
    "libcap2-bin",
    "less",
    "xz-utils",
)

# Units that cannot work (or must not run) in a host that shares this machine's kernel.
MASKED_UNITS = (
    "systemd-modules-load.service",  # no module loading from a namespace
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "getty@.service",  # would take over this machine's ttys
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-binfmt.service",
    "systemd-firstboot.service",
    "systemd-pstore.service",
    "apt-daily.timer",  # no network to fetch from
    "apt-daily-upgrade.timer",
    "fstrim.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
)

SSHD_CONFIG = """\
# Written by the kuma-vm lab.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

# Bump when customize() changes, so existing caches are rebuilt.
CUSTOMIZE_VERSION = 2


def cache_key() -> str:
    text = "\n".join([*PACKAGES, "--", *MASKED_UNITS, "--", SSHD_CONFIG, str(CUSTOMIZE_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def cache_path(release: str) -> Path:
    return state.cache_root() / f"{release}-{cache_key()}"


def ensure(release: str) -> Path:
    """The cached root filesystem for `release`, built first if there is none."""
    final = cache_path(release)
    if (final / "etc/os-release").exists():
        return final
    root = state.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with state.flock(root / f".{release}.lock"):
        if (final / "etc/os-release").exists():  # another process built it while we waited
            return final
        for stale in root.glob(f".build-{release}-*"):
            log(f"removing {stale} left by an interrupted build")
            remove_tree(stale)
        tmp = root / f".build-{release}-{os.getpid()}"
        try:
            build(release, tmp)
            os.rename(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
        prune(release, keep=final)
    return final


def build(release: str, target: Path) -> None:
    logfile = target.with_name(target.name + ".log")
    log(f"building the {release} root filesystem with debootstrap (about a minute, once; log: {logfile})")
    started = time.monotonic()
    cmd = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        release,
        str(target),
    ]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(logfile, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if rc != 0:
        tail = "".join(logfile.read_text(errors="replace").splitlines(keepends=True)[-20:])
        sys.stderr.write(tail)
        raise LabError(f"debootstrap {release} failed (exit {rc}); full log: {logfile}")
    customize(target)
    logfile.unlink(missing_ok=True)
    log(f"built {release} in {time.monotonic() - started:.0f} s")


def customize(root: Path) -> None:
    """What every host of this release shares; per-host settings are written into each host's overlay."""
    etc = root / "etc"
    # Per-host identity is written at boot time: no shared host keys or machine-id.
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    (etc / "machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    (etc / "hostname").write_text("localhost\n")
    (etc / "default/locale").write_text("LANG=C.UTF-8\n")  # pam_env complains on every login without it
    (etc / "ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (etc / "ssh/sshd_config.d/kuma-vm-lab.conf").write_text(SSHD_CONFIG)
    units = etc / "systemd/system"
    for unit in MASKED_UNITS:
        for wants in units.glob(f"*.wants/{unit}"):
            wants.unlink()
        link = units / unit
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to("/dev/null")
    for wants in units.glob("getty.target.wants/*"):
        wants.unlink()
    # Downloaded .debs are not needed once installed (about 75 MB per release).
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def prune(release: str, keep: Path) -> None:
    """Remove older caches of a release that no lab uses any more."""
    in_use = {h.rootfs for lab in state.all_labs() for h in lab.hosts}
    for old in state.cache_root().glob(f"{release}-*"):
        if old != keep and old.is_dir() and str(old) not in in_use:
            log(f"removing old cache {old}")
            remove_tree(old)
