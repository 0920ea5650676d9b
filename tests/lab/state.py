"""The lab's state file, its directories, locks, and subnet allocation.

A lab lives in `<state root>/<LAB>/` (state root: `/var/lib/kuma-vm-lab`, or `$KUMA_LAB_STATE`):

    state.json          what was made, written before anything is made and updated as hosts come up
    id_ed25519[.pub]    the lab's ssh key (root on every host accepts it)
    known_hosts         every host's ssh host key, by name and address
    hosts/<HOST>/       upper/ work/ (overlayfs layers), root/ (the merged root), boot.sh, console.log

`down` reads state.json and removes exactly what it names, so a lab left by a crashed run is cleaned too.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import naming

DEFAULT_STATE_ROOT = "/var/lib/kuma-vm-lab"
DEFAULT_CACHE_ROOT = "/var/cache/kuma-vm-lab"
LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
STATE_VERSION = 1


def state_root() -> Path:
    return Path(os.environ.get("KUMA_LAB_STATE") or DEFAULT_STATE_ROOT)


def cache_root() -> Path:
    return Path(os.environ.get("KUMA_LAB_CACHE") or DEFAULT_CACHE_ROOT)


def lab_dir(lab: str) -> Path:
    return state_root() / lab


@dataclass
class HostState:
    name: str
    index: int
    address: str
    release: str
    resolved: bool
    netns: str
    veth: str
    cgroup: str  # absolute path of the host's cgroup2 directory on this machine
    rootfs: str  # the cached lower layer
    dir: str  # hosts/<HOST>/
    launcher_pid: int | None = None  # the `unshare` process
    launcher_start: int | None = None  # its start time (clock ticks since boot), against PID reuse
    pid: int | None = None  # the host's init (systemd) as seen from this machine
    pid_start: int | None = None
    status: str = "new"  # new -> booting -> running | failed; running -> off -> booting (power_cycle)

    @property
    def root(self) -> Path:
        return Path(self.dir) / "root"


@dataclass
class LabState:
    name: str
    subnet: str
    bridge: str
    dir: str
    ssh_key: str
    known_hosts: str
    created: float = field(default_factory=time.time)
    # The process the lab belongs to (a pytest session), if any: a lab whose owner is gone was left by a crash.
    owner_pid: int | None = None
    owner_start: int | None = None
    version: int = STATE_VERSION
    hosts: list[HostState] = field(default_factory=list)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def state_file(self) -> Path:
        return Path(self.dir) / "state.json"

    def next_index(self) -> int:
        return max((h.index for h in self.hosts), default=0) + 1

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.name == name:
                return h
        # Accept the bare index too: `ssh --name e2e 2`.
        for h in self.hosts:
            if name == str(h.index):
                return h
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise KeyError(f"lab {self.name!r} has no host {name!r} (hosts: {known})")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        hosts = [HostState(**h) for h in data.get("hosts", [])]
        fields = {k: v for k, v in data.items() if k != "hosts"}
        return cls(hosts=hosts, **fields)

    def save(self) -> None:
        """Write atomically: a crash leaves the old or the new file, never half of one."""
        path = self.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def load(lab: str) -> LabState | None:
    path = lab_dir(lab) / "state.json"
    try:
        with open(path) as f:
            return LabState.from_json(json.load(f))
    except FileNotFoundError:
        return None


def all_lab_names() -> list[str]:
    root = state_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def all_labs() -> list[LabState]:
    labs = []
    for name in all_lab_names():
        st = load(name)
        if st is not None:
            labs.append(st)
    return labs


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """An exclusive lock held for the block (released by the kernel if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lab_lock(lab: str) -> contextlib.AbstractContextManager[None]:
    return flock(state_root() / f".{lab}.lock")


def global_lock() -> contextlib.AbstractContextManager[None]:
    return flock(state_root() / ".lock")


# --- subnets -------------------------------------------------------------------------------------------------


class NoFreeSubnet(RuntimeError):
    pass


def allocate_subnet(
    used: Iterable[ipaddress.IPv4Network],
    lab_range: ipaddress.IPv4Network = LAB_RANGE,
    prefixlen: int = 24,
) -> ipaddress.IPv4Network:
    """The first /24 of the lab range that overlaps nothing in `used` (other labs, this machine's networks)."""
    taken = [n for n in used if n.overlaps(lab_range)]
    for candidate in lab_range.subnets(new_prefix=prefixlen):
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise NoFreeSubnet(f"no free /{prefixlen} left in {lab_range}")


def host_address(subnet: ipaddress.IPv4Network, index: int) -> ipaddress.IPv4Address:
    """Host N gets .N+1 (the bridge has .1)."""
    if not 1 <= index <= min(naming.MAX_HOSTS, subnet.num_addresses - 3):
        raise ValueError(f"host index {index} does not fit in {subnet}")
    return subnet.network_address + 1 + index
