"""Names derived from a lab's name: hosts, network namespaces, links, cgroups.

Everything the lab creates on this machine is named here, so `down` can find it again from the state file
and nothing else is ever touched. Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
import re

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
IFNAMSIZ = 15  # Linux interface names are at most 15 characters
MAX_HOSTS = 253  # .2 .. .254 of the lab's /24

RELEASES = ("bookworm", "trixie")


class InvalidName(ValueError):
    """A lab or host name the lab cannot use."""


def validate_lab_name(name: str) -> str:
    """Lab names become hostnames (`LAB-1`): lower-case letters, digits and dashes, 1-32 characters."""
    if not LAB_NAME_RE.match(name) or "--" in name:
        raise InvalidName(
            f"invalid lab name {name!r}: use 1-32 lower-case letters, digits and single dashes, "
            "starting with a letter and not ending with a dash"
        )
    return name


def lab_tag(lab: str) -> str:
    """A short tag unique per lab name: up to 5 characters of the name plus 4 hex digits of its hash."""
    compact = re.sub(r"[^a-z0-9]", "", lab)[:5]
    digest = hashlib.sha1(lab.encode()).hexdigest()[:4]
    return f"{compact}{digest}"


def host_name(lab: str, index: int) -> str:
    if not 1 <= index <= MAX_HOSTS:
        raise InvalidName(f"host index {index} out of range 1..{MAX_HOSTS}")
    return f"{lab}-{index}"


def bridge_name(lab: str) -> str:
    name = f"klb{lab_tag(lab)}"
    assert len(name) <= IFNAMSIZ
    return name


def veth_name(lab: str, index: int) -> str:
    """The host-side end of a host's veth pair (the other end is `eth0` inside the host's netns)."""
    name = f"kv{lab_tag(lab)}-{index}"
    if len(name) > IFNAMSIZ:
        raise InvalidName(f"interface name {name!r} longer than {IFNAMSIZ} characters")
    return name


def netns_name(host: str) -> str:
    return f"klab-{host}"


def cgroup_relpath(lab: str, host: str) -> str:
    """Where a host's systemd lives in this machine's cgroup2 tree (relative to the cgroup2 mount)."""
    return f"kuma-vm-lab/{lab}/{host}"


def inventory_group(lab: str) -> str:
    """Ansible warns about dashes in group names."""
    return re.sub(r"[^A-Za-z0-9_]", "_", lab)
