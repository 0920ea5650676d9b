"""`python -m tests.lab {up,down,status,ssh,copy}` (as root)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import core, inventory, naming
from .system import LabError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.lab",
        description="Booted Debian hosts (systemd, sshd) in network namespaces on this machine, for e2e tests.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="boot a lab's hosts (LAB-1, LAB-2, ...)")
    up.add_argument("--name", required=True, help="the lab's name")
    up.add_argument("--hosts", type=int, default=1, help="how many hosts to boot (default 1)")
    up.add_argument("--release", choices=naming.RELEASES, default="bookworm")
    up.add_argument("--resolved", action="store_true", help="run systemd-resolved (stub resolv.conf) on the hosts")
    up.add_argument("--add", action="store_true", help="add hosts to an existing lab, continuing its numbering")
    up.add_argument("--timeout", type=float, default=None, help="seconds to wait for the hosts (default 180)")
    up.add_argument("--json", action="store_true", help="print the lab's status as JSON when up")
    up.add_argument(
        "--owner-pid",
        type=int,
        default=None,
        help="tie a new lab to a process: once it is gone, the next test session removes the lab",
    )

    down = sub.add_parser("down", help="remove a lab (or all) and everything it made")
    g = down.add_mutually_exclusive_group(required=True)
    g.add_argument("--name")
    g.add_argument("--all", action="store_true")

    st = sub.add_parser("status", help="show a lab's hosts, or print an Ansible inventory")
    st.add_argument("--name", help="the lab (default: the only one)")
    st.add_argument("--json", action="store_true")
    st.add_argument("--inventory", nargs="?", const="ini", choices=("ini", "yaml", "lab"),
                    help="print an Ansible inventory of the lab's hosts (ini, yaml), or write the inventory of the "
                    "fleet booted by scripts/fleet-up.sh (lab: hosts.yml into --out)")
    st.add_argument("--out", default=None,
                    help="with --inventory lab: the inventory directory (default playbooks/inventories/lab)")

    ssh = sub.add_parser("ssh", help="run a command on a host over ssh (exit status passed through)")
    ssh.add_argument("--name", help="the lab (default: the only one)")
    ssh.add_argument("host", help="host name (LAB-N) or index (N)")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND... (none: interactive shell)")

    cp = sub.add_parser("copy", help="copy files to a host (scp -r), or from it with --from")
    cp.add_argument("--name", help="the lab (default: the only one)")
    cp.add_argument("--from", dest="from_host", action="store_true", help="copy SRC on the host to local DEST")
    cp.add_argument("host")
    cp.add_argument("src")
    cp.add_argument("dest")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (LabError, ValueError) as e:
        print(f"lab: error: {e}", file=sys.stderr)
        return 1
    except KeyError as e:
        print(f"lab: error: {e.args[0]}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        core.up(
            args.name,
            args.hosts,
            release=args.release,
            resolved=args.resolved,
            add=args.add,
            timeout=args.timeout,
            owner_pid=args.owner_pid,
        )
        lab = core.get(args.name)
        if args.json:
            print(json.dumps(inventory.status_json(lab), indent=2))
        else:
            print(inventory.status_text(lab))
        return 0
    if args.command == "down":
        if args.all:
            core.down_all()
        else:
            core.down(args.name)
        return 0
    if args.command == "status":
        lab = core.get(args.name)
        if args.inventory == "lab":
            from . import fleet  # the fleet's layout and its dataplanes

            out = fleet.write_inventory(lab, Path(args.out) if args.out else fleet.LAB_INVENTORY)
            print(f"wrote {out / 'hosts.yml'} (ansible-playbook -i {out} playbooks/site.yml)")
        elif args.inventory == "yaml":
            sys.stdout.write(inventory.render_yaml(lab))
        elif args.inventory == "ini":
            sys.stdout.write(inventory.render_ini(lab))
        elif args.json:
            print(json.dumps(inventory.status_json(lab), indent=2))
        else:
            print(inventory.status_text(lab))
        return 0
    if args.command == "ssh":
        lab = core.get(args.name)
        cmd = list(args.cmd)
        if cmd[:1] == ["--"]:
            cmd = cmd[1:]
        return core.ssh(lab, args.host, cmd)
    if args.command == "copy":
        lab = core.get(args.name)
        return core.copy(lab, args.host, args.src, args.dest, from_host=args.from_host)
    raise AssertionError(args.command)
