"""Small helpers over this machine: running commands, tools, mounts, processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Binary -> the Debian package that ships it.
TOOLS = {
    "debootstrap": "debootstrap",
    "ssh": "openssh-client",
    "scp": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
}


class LabError(RuntimeError):
    """Something the user should read: the message says what failed and what to do."""


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(cmd),
            check=False,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            stdin=subprocess.DEVNULL if input is None else None,
            input=input,
            timeout=timeout,
        )
    except FileNotFoundError as e:
        raise LabError(f"{cmd[0]}: command not found") from e
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip()
        raise LabError(f"{' '.join(cmd)} exited {proc.returncode}" + (f": {err}" if err else ""))
    return proc


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, mounts, cgroups): run it as root")


def ensure_tools(names: Sequence[str]) -> None:
    """Install the Debian packages of missing tools with apt-get, saying so."""
    missing = sorted({TOOLS[n] for n in names if shutil.which(n) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise LabError(f"missing tools from packages {', '.join(missing)} and no apt-get to install them")
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env, stdout=sys.stderr, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, stdout=sys.stderr, check=False)
        if subprocess.run(cmd, env=env, stdout=sys.stderr, check=False).returncode != 0:
            raise LabError(f"apt-get install {' '.join(missing)} failed")


# --- mounts ---------------------------------------------------------------------------------------------------


def _unescape_mountinfo(field: str) -> str:
    # Mount points in mountinfo escape space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        esc = field[i + 1 : i + 4]
        if field[i] == "\\" and len(esc) == 3 and esc.isdigit():
            out.append(chr(int(esc, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountpoints(mountinfo: str | None = None) -> list[str]:
    """This mount namespace's mount points, in mount order."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    return [_unescape_mountinfo(line.split()[4]) for line in mountinfo.splitlines() if line.strip()]


def is_under(path: str, top: str) -> bool:
    top = top.rstrip("/")
    return path == top or path.startswith(top + "/")


def mounts_under(top: Path | str) -> list[str]:
    return [m for m in mountpoints() if is_under(m, str(top))]


def unmount_all_under(top: Path | str) -> None:
    """Unmount everything at or below `top`, deepest (latest) first; lazily if a mount is busy."""
    for _ in range(5):
        mounts = mounts_under(top)
        if not mounts:
            return
        for m in reversed(mounts):
            if run(["umount", m], check=False).returncode != 0:
                run(["umount", "-l", m], check=False)
    left = mounts_under(top)
    if left:
        raise LabError(f"could not unmount {', '.join(left)}")


def remove_tree(path: Path | str) -> None:
    """rm -rf, but only once nothing is mounted below (so it never reaches into /proc, /sys or /dev)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    unmount_all_under(path)
    if mounts_under(path):  # pragma: no cover - unmount_all_under raises first
        raise LabError(f"refusing to remove {path}: something is still mounted below it")
    shutil.rmtree(path)


# --- processes ------------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process, or None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19])


def proc_alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_children(pid: int) -> list[int]:
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [int(x) for x in raw.split()]


def ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def kill_and_wait(pid: int, timeout: float = 10.0) -> bool:
    """SIGKILL a process and wait for it to be gone (or a zombie). True if it is gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc_alive(pid):
            return True
        time.sleep(0.05)
    return not proc_alive(pid)


def cgroup2_mount() -> Path:
    """This machine's cgroup2 mount (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return Path(_unescape_mountinfo(left.split()[4]))
    raise LabError("no cgroup2 filesystem is mounted on this machine; the lab's hosts need one")


def remove_cgroup_tree(path: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup and every cgroup below it, deepest first (cgroup dirs hold no files to delete)."""
    deadline = time.monotonic() + timeout
    while path.exists():
        dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, path]:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                break  # still busy: a dying process has not left yet
        if not path.exists():
            return
        if time.monotonic() > deadline:
            raise LabError(f"could not remove cgroup {path}")
        time.sleep(0.1)
