"""What `status` prints: the JSON summary and Ansible inventories (INI and YAML). Pure functions of the state."""

from __future__ import annotations

import json
from typing import Any

from . import naming
from .state import LabState


def ssh_options(lab: LabState) -> list[str]:
    """Options for the system ssh/scp client to reach the lab's hosts as root with the lab's key."""
    return [
        "-F",
        "/dev/null",
        "-i",
        lab.ssh_key,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={lab.known_hosts}",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ]


def ssh_common_args(lab: LabState) -> str:
    return f"-o StrictHostKeyChecking=no -o UserKnownHostsFile={lab.known_hosts} -o IdentitiesOnly=yes"


def status_json(lab: LabState) -> dict[str, Any]:
    return {
        "name": lab.name,
        "subnet": lab.subnet,
        "gateway": lab.gateway,
        "bridge": lab.bridge,
        "ssh_key": lab.ssh_key,
        "known_hosts": lab.known_hosts,
        "hosts": [
            {
                "name": h.name,
                "address": h.address,
                "release": h.release,
                "pid": h.pid,
                "resolved": h.resolved,
                "netns": h.netns,
                "status": h.status,
            }
            for h in lab.hosts
        ],
    }


def status_text(lab: LabState) -> str:
    lines = [
        f"lab {lab.name}: subnet {lab.subnet} on bridge {lab.bridge}, ssh key {lab.ssh_key}",
        f"{'HOST':<20} {'ADDRESS':<16} {'RELEASE':<10} {'RESOLVED':<9} {'PID':<8} STATUS",
    ]
    for h in lab.hosts:
        lines.append(
            f"{h.name:<20} {h.address:<16} {h.release:<10} {'yes' if h.resolved else 'no':<9} "
            f"{h.pid if h.pid is not None else '-'!s:<8} {h.status}"
        )
    return "\n".join(lines)


def _vars(lab: LabState) -> dict[str, str]:
    return {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": lab.ssh_key,
        "ansible_ssh_common_args": ssh_common_args(lab),
        "ansible_python_interpreter": "/usr/bin/python3",
    }


def _groups(lab: LabState) -> dict[str, list[str]]:
    """The lab's group (all its hosts), and one group per release (`release_bookworm`, ...)."""
    groups: dict[str, list[str]] = {naming.inventory_group(lab.name): [h.name for h in lab.hosts]}
    for h in lab.hosts:
        groups.setdefault(f"release_{h.release}", []).append(h.name)
    return groups


def render_ini(lab: LabState) -> str:
    addr = {h.name: h.address for h in lab.hosts}
    out: list[str] = [f"# kuma-vm lab {lab.name} (python -m tests.lab status --name {lab.name} --inventory)"]
    for i, (group, members) in enumerate(_groups(lab).items()):
        out.append(f"[{group}]")
        # Host variables once, in the lab's group (which holds every host); other groups only name hosts.
        out.extend(f"{m} ansible_host={addr[m]}" if i == 0 else m for m in members)
        out.append("")
    out.append("[all:vars]")
    for k, v in _vars(lab).items():
        out.append(f"{k}='{v}'" if " " in v else f"{k}={v}")
    return "\n".join(out) + "\n"


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid double-quoted YAML scalar


def render_yaml(lab: LabState) -> str:
    addr = {h.name: h.address for h in lab.hosts}
    out = [f"# kuma-vm lab {lab.name}", "all:", "  vars:"]
    out.extend(f"    {k}: {_q(v)}" for k, v in _vars(lab).items())
    out.append("  children:")
    for i, (group, members) in enumerate(_groups(lab).items()):
        out.append(f"    {group}:")
        if not members:
            out.append("      hosts: {}")
            continue
        out.append("      hosts:")
        for m in members:
            if i == 0:
                out.append(f"        {m}:")
                out.append(f"          ansible_host: {_q(addr[m])}")
            else:
                out.append(f"        {m}: {{}}")
    return "\n".join(out) + "\n"
