"""pytest fixtures for the lab. Load them with `pytest_plugins = ["tests.lab.fixtures"]` (or import them).

    def test_something(lab):
        a, b = lab.hosts_like(2, release="bookworm")      # shared hosts: reused by later tests if they ask alike
        c, = lab.add_hosts(1, release="trixie", resolved=True)  # always new hosts
        assert a.ssh("hostname").stdout.strip() == a.name
        a.copy("local/file", "/root/file")

One lab per test session (named `e2e-<pid>`, or `$KUMA_LAB_NAME`), with no hosts until a test asks; it is torn
down at the end of the session, on failure and on Ctrl-C/SIGTERM too (`KUMA_LAB_KEEP=1` keeps it for debugging,
until the next session). The lab records the session's PID as its owner: labs whose owner is gone (left by a
crashed session) are removed when a session starts, and labs of other running sessions are left alone. Tests are
skipped, with the reason, where the lab cannot run (not root, no cgroup2, no apt-get to install debootstrap).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import pytest

from tests.requirements import unavailable

from . import core, host, inventory
from . import state as labstate
from .state import HostState, LabState
from .system import LabError, cgroup2_mount


class LabCommandError(subprocess.CalledProcessError):
    """A command on a lab host exited non-zero; the message carries its output."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip()
        err = (self.stderr or "").strip()
        return (
            f"{super().__str__()}"
            + (f"\n--- stdout ---\n{out}" if out else "")
            + (f"\n--- stderr ---\n{err}" if err else "")
        )


class LabHost:
    """One booted host of the lab, reached over ssh as root."""

    def __init__(self, lab: Lab, state: HostState) -> None:
        self._lab = lab
        self._state = state

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def address(self) -> str:
        return self._state.address

    @property
    def release(self) -> str:
        return self._state.release

    @property
    def resolved(self) -> bool:
        return self._state.resolved

    @property
    def pid(self) -> int | None:
        """The host's init (systemd) as seen from this machine."""
        return self._state.pid

    @property
    def netns(self) -> str:
        return self._state.netns

    def __repr__(self) -> str:
        return f"LabHost({self.name!r}, {self.address}, {self.release}{', resolved' if self.resolved else ''})"

    def ssh(
        self,
        cmd: str | Sequence[str],
        check: bool = True,
        timeout: float | None = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` on the host (a string goes to the remote shell as is; a list is quoted). Output captured."""
        command = cmd if isinstance(cmd, str) else shlex.join(cmd)
        argv = core.ssh_argv(self._lab.state, self.name, [command])
        proc = subprocess.run(
            argv,
            text=True,
            capture_output=True,
            timeout=timeout,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabCommandError(proc.returncode, f"{self.name}: {command}", proc.stdout, proc.stderr)
        return proc

    def power_cycle(self, timeout: float | None = None) -> None:
        """Cut the host's power (SIGKILL of its init: no clean shutdown) and boot it again from the same disk;
        returns when it is running and answers ssh."""
        core.power_cycle(self._lab.state, self.name, timeout)

    def copy(self, src: str | os.PathLike[str], dest: str) -> None:
        """Copy a local file or directory to `dest` on the host (scp -r)."""
        self._scp(str(src), dest, from_host=False)

    def fetch(self, src: str, dest: str | os.PathLike[str]) -> None:
        """Copy `src` from the host to a local path."""
        self._scp(src, str(dest), from_host=True)

    def _scp(self, src: str, dest: str, from_host: bool) -> None:
        argv = core.scp_argv(self._lab.state, self.name, src, dest, from_host=from_host)
        proc = subprocess.run(argv, text=True, capture_output=True, check=False)
        if proc.returncode != 0:
            raise LabCommandError(proc.returncode, argv, proc.stdout, proc.stderr)

    def nsenter(self, cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the host's namespaces from this machine, without ssh (setup and debugging)."""
        proc = subprocess.run(host.nsenter_cmd(self._state, list(cmd)), text=True, capture_output=True, check=False)
        if check and proc.returncode != 0:
            raise LabCommandError(proc.returncode, list(cmd), proc.stdout, proc.stderr)
        return proc


class Lab:
    """The session's lab. Hosts are added on demand; all of them go when the session ends."""

    def __init__(self, name: str, owner_pid: int | None = None) -> None:
        self.name = name
        self._owner_pid = owner_pid
        self._lock = threading.Lock()
        self._private: set[str] = set()  # hosts add_hosts gave out

    @property
    def state(self) -> LabState:
        st = labstate.load(self.name)
        if st is None:
            raise LabError(f"lab {self.name!r} has no hosts yet: call add_hosts() first")
        return st

    @property
    def hosts(self) -> list[LabHost]:
        st = labstate.load(self.name)
        return [LabHost(self, h) for h in st.hosts] if st else []

    def host(self, name: str) -> LabHost:
        st = self.state
        return LabHost(self, st.host(name))

    def add_hosts(self, n: int = 1, release: str = "bookworm", resolved: bool = False) -> list[LabHost]:
        """Boot `n` new hosts into the lab and return them when they are running and answer ssh."""
        with self._lock:
            new = core.up(self.name, n, release=release, resolved=resolved, add=True, owner_pid=self._owner_pid)
            self._private.update(h.name for h in new)  # the caller's own: hosts_like never hands them out
        st = self.state
        return [LabHost(self, st.host(h.name)) for h in new]

    def hosts_like(self, n: int, release: str = "bookworm", resolved: bool = False) -> list[LabHost]:
        """The first `n` shared hosts of this kind, booting more if there are fewer: for tests that can share
        hosts. Hosts from add_hosts are their caller's alone (a module that installs packages changes them)."""
        with self._lock:
            def shared() -> list[LabHost]:
                return [h for h in self.hosts if h.release == release and h.resolved == resolved
                        and h.name not in self._private]

            have = shared()
            if len(have) < n:
                core.up(
                    self.name, n - len(have), release=release, resolved=resolved, add=True, owner_pid=self._owner_pid
                )
                have = shared()
        return have[:n]

    @property
    def ssh_key(self) -> str:
        return self.state.ssh_key

    @property
    def known_hosts(self) -> str:
        return self.state.known_hosts

    @property
    def gateway(self) -> str:
        """This machine's address on the lab bridge (hosts reach services on this machine there)."""
        return self.state.gateway

    def inventory(self, fmt: str = "ini") -> str:
        return inventory.render_yaml(self.state) if fmt == "yaml" else inventory.render_ini(self.state)

    def write_inventory(self, path: str | os.PathLike[str], fmt: str = "ini") -> Path:
        p = Path(path)
        p.write_text(self.inventory(fmt))
        return p

    def down(self) -> None:
        core.down(self.name)


def lab_skip_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab boots hosts in network namespaces and needs root (run the e2e tests as root)"
    for tool in ("ip", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None and shutil.which("apt-get") is None:
            return f"the lab needs {tool!r}, which is missing (and no apt-get to install it)"
    if shutil.which("debootstrap") is None and shutil.which("apt-get") is None:
        return "the lab needs debootstrap, which is missing (and no apt-get to install it)"
    try:
        cgroup2_mount()
    except LabError as e:
        return str(e)
    return None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The session's lab (see the module docstring)."""
    reason = lab_skip_reason()
    if reason:
        unavailable("lab", reason)
    name = os.environ.get("KUMA_LAB_NAME") or f"e2e-{os.getpid()}"
    for other in labstate.all_labs():
        if other.owner_pid is not None and not core.owner_alive(other):
            print(f"\nlab: removing lab {other.name}, left by a test session that is gone")
            core.down(other.name)
    existing = labstate.load(name)
    if existing is not None:
        if core.owner_alive(existing):
            raise LabError(f"lab {name!r} belongs to another running test session (PID {existing.owner_pid})")
        core.down(name)  # left by a crashed session or by hand
    the_lab = Lab(name, owner_pid=os.getpid())
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM tears the lab down too
    try:
        yield the_lab
    finally:
        try:
            if os.environ.get("KUMA_LAB_KEEP") == "1":
                print(f"\nlab: keeping lab {name} (KUMA_LAB_KEEP=1); remove it: python -m tests.lab down --name {name}")
            else:
                core.down(name)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
