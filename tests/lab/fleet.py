"""A multi-zone mesh on lab hosts, deployed by `playbooks/site.yml`: what the README's first command
(`scripts/fleet-up.sh`) runs and what the Ansible e2e tests (tests/e2e/test_ansible.py) check.

Seven booted hosts (LAYOUT): the global control plane; the control planes of zone-1 and zone-2; one zone ingress
per zone (group kuma_ingress); in zone-1 a trixie host with systemd-resolved running `backend` (the primary
dataplane, kuma-dp.service, `.mesh` names in the host's resolver) and `web` (kuma-dp@web); in zone-2 a bookworm
host running `billing` (kuma-dp@billing). Each service is a small echo app that answers with its name and the
headers it got (tests/apps/echo_http.py).

The fleet records which host plays which part in the lab's directory (fleet.json); `python -m tests.lab status
--inventory lab` turns that and the lab's state into `playbooks/inventories/lab/hosts.yml` (render_hosts_yml),
next to the committed group_vars/. fleet-up and the e2e tests run site.yml with exactly that inventory.

    python -m tests.lab.fleet    # (root) boot, build the packages, run site.yml, show traffic; Ctrl-C tears down
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .inventory import ssh_common_args
from .state import LabState

REPO = Path(__file__).resolve().parents[2]
ECHO_APP = REPO / "tests/apps/echo_http.py"
ANSIBLE_PLAYBOOK = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin/ansible-playbook"
LAB_INVENTORY = REPO / "playbooks/inventories/lab"


@dataclass(frozen=True)
class Part:
    """One host of the fleet: its part, Debian release, inventory group, zone and echo apps (name, port)."""

    part: str
    release: str
    group: str
    zone: str = ""
    resolved: bool = False
    apps: tuple[tuple[str, int], ...] = ()


# Booted in this order (bookworm hosts together, then the trixie one); the inventory lists them in this order.
LAYOUT = (
    Part("global", "bookworm", "kuma_global"),
    Part("zone-1 control plane", "bookworm", "kuma_zone_cp", "zone-1"),
    Part("zone-2 control plane", "bookworm", "kuma_zone_cp", "zone-2"),
    Part("zone-1 ingress", "bookworm", "kuma_ingress", "zone-1"),
    Part("zone-2 ingress", "bookworm", "kuma_ingress", "zone-2"),
    Part("zone-2 billing", "bookworm", "kuma_dataplanes", "zone-2", apps=(("billing", 8082),)),
    Part("zone-1 backend (primary, .mesh DNS) and web", "trixie", "kuma_dataplanes", "zone-1", resolved=True,
         apps=(("backend", 8080), ("web", 8081))),
)
GROUPS = ("kuma_global", "kuma_zone_cp", "kuma_ingress", "kuma_dataplanes")
RECORD = "fleet.json"

# Cross-zone traffic needs mTLS (the ingress routes by the TLS SNI): applied on global.
MTLS = [{"type": "Mesh", "name": "default",
         "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}},
        {"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all",
         "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"},
                                                           "default": {"action": "Allow"}}]}}]

WEB_TAGS = {"kuma.io/service": "web", "kuma.io/protocol": "http"}


def echo_dataplane(app: str, address: str, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """The definition of one echo app's dataplane (an entry of kuma_dp_dataplanes)."""
    if app == "web":
        return {"name": "web", "networking": {
            "address": address,
            "inbound": [{"port": 20001, "servicePort": 8081, "tags": tags or WEB_TAGS}],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}]}}
    if app == "backend":
        return {"name": "backend", "primary": True, "networking": {
            "address": address,
            "inbound": [{"port": 20002, "servicePort": 8080,
                         "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]}}
    if app == "billing":
        return {"name": "billing", "networking": {
            "address": address,
            "inbound": [{"port": 20003, "servicePort": 8082,
                         "tags": {"kuma.io/service": "billing", "kuma.io/protocol": "http"}}]}}
    raise ValueError(f"no dataplane definition for the echo app {app!r}")


def read_record(lab: LabState) -> dict[str, Any]:
    """The fleet's record in the lab's directory: {"hosts": {part: host name}, "packages": {...}}."""
    path = Path(lab.dir) / RECORD
    if not path.exists():
        raise ValueError(f"lab {lab.name!r} has no fleet ({path} is missing): scripts/fleet-up.sh boots one; "
                         "`status --inventory yaml` prints a plain inventory of any lab")
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def render_hosts_yml(lab: LabState, record: dict[str, Any]) -> str:
    """hosts.yml of the lab's fleet: the groups site.yml deploys, each host's address, zone and dataplanes, and
    how Ansible reaches the hosts (the lab's ssh key). Everything else is in the committed group_vars/."""
    by_part: dict[str, str] = record["hosts"]
    address = {h.name: h.address for h in lab.hosts}
    missing = [p.part for p in LAYOUT if by_part.get(p.part) not in address]
    if missing:
        raise ValueError(f"lab {lab.name!r}: the fleet's hosts for {', '.join(missing)} are gone; "
                         "boot the fleet again (scripts/fleet-up.sh)")
    groups: dict[str, dict[str, Any]] = {g: {"hosts": {}} for g in GROUPS}
    for p in LAYOUT:
        name = by_part[p.part]
        hostvars: dict[str, Any] = {"ansible_host": address[name]}
        if p.zone:
            hostvars["kuma_zone"] = p.zone
        if p.apps:
            hostvars["kuma_dp_dataplanes"] = [echo_dataplane(app, address[name]) for app, _ in p.apps]
        groups[p.group]["hosts"][name] = hostvars
    common: dict[str, Any] = {"ansible_user": "root", "ansible_ssh_private_key_file": lab.ssh_key,
                              "ansible_ssh_common_args": ssh_common_args(lab),
                              "ansible_python_interpreter": "/usr/bin/python3"}
    # The packages the fleet was booted with (else group_vars' default: the newest in dist/, `make packages`).
    for kind, var in (("kuma-cp.deb", "kuma_cp_package_file"), ("kuma-dp.deb", "kuma_dp_package_file")):
        if record.get("packages", {}).get(kind):
            common[var] = record["packages"][kind]
    header = (f"---\n# Generated from lab {lab.name!r} by "
              f"`python -m tests.lab status --name {lab.name} --inventory lab`:"
              "\n# do not edit (host_vars/HOST.yml next to it overrides a host's variables).\n"
              "# " + "; ".join(f"{by_part[p.part]}: {p.part}" for p in LAYOUT) + "\n")
    return header + yaml.safe_dump({"all": {"vars": common, "children": groups}}, sort_keys=False, width=120)


def write_inventory(lab: LabState, out: Path) -> Path:
    """Write hosts.yml of the lab's fleet into `out`; an `out` other than playbooks/inventories/lab gets a link
    to its group_vars, so that every copy runs with the same settings."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "hosts.yml").write_text(render_hosts_yml(lab, read_record(lab)))
    group_vars = out / "group_vars"
    if out.resolve() != LAB_INVENTORY.resolve() and not group_vars.exists():
        group_vars.symlink_to(LAB_INVENTORY / "group_vars", target_is_directory=True)
    return out


class Fleet:
    """The hosts, the inventory site.yml runs with, and ways to look at the result. `lab` is a
    tests.lab.fixtures.Lab, hosts are its LabHosts."""

    def __init__(self, lab: Any, hosts: dict[str, Any], inventory: Path, workdir: Path) -> None:
        self.lab, self.by_part, self.inventory, self.workdir = lab, hosts, inventory, workdir
        self.glob = hosts["global"]
        self.cp1, self.cp2 = hosts["zone-1 control plane"], hosts["zone-2 control plane"]
        self.in1, self.in2 = hosts["zone-1 ingress"], hosts["zone-2 ingress"]
        self.z1, self.z2 = hosts["zone-1 backend (primary, .mesh DNS) and web"], hosts["zone-2 billing"]

    @property
    def all(self) -> list[Any]:
        return list(self.by_part.values())

    def regenerate(self) -> None:
        """hosts.yml again, by the command users run (`python -m tests.lab status --inventory lab`)."""
        proc = subprocess.run([sys.executable, "-m", "tests.lab", "status", "--name", self.lab.name,
                               "--inventory", "lab", "--out", str(self.inventory)],
                              cwd=REPO, text=True, capture_output=True, timeout=60)
        assert proc.returncode == 0, f"status --inventory lab failed:\n{proc.stdout}\n{proc.stderr}"

    def host_vars(self, host: Any, values: dict[str, Any] | None) -> None:
        """Override variables of one host (host_vars/HOST.yml beside hosts.yml), or drop the override (None)."""
        path = self.inventory / "host_vars" / f"{host.name}.yml"
        if values is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(exist_ok=True)
        path.write_text("---\n" + yaml.safe_dump(values, sort_keys=False))

    def play(self, *args: str, check: bool = True, stream: bool = False,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """ansible-playbook -i INVENTORY playbooks/site.yml; `stream` shows its output as it runs; `env` adds to
        its environment."""
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
               "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
               **(env or {})}
        argv = [str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), "playbooks/site.yml", *args]
        if stream:
            code = subprocess.run(argv, cwd=REPO, env=env, timeout=1800).returncode
            proc = subprocess.CompletedProcess(argv, code, "", "")
        else:
            proc = subprocess.run(argv, cwd=REPO, env=env, text=True, capture_output=True, timeout=1200)
            (self.workdir / "last-run.log").write_text(proc.stdout + proc.stderr)
        if check:
            assert proc.returncode == 0, \
                f"ansible-playbook {' '.join(args)} failed:\n{proc.stdout[-8000:]}\n{proc.stderr}"
        return proc

    def unit_pid(self, host: Any, unit: str) -> str:
        return str(host.ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip())

    def api(self, host: Any, path: str) -> Any:
        """GET on a control plane's local API (admin on loopback), from the host itself."""
        proc = host.ssh(f"curl -sf http://127.0.0.1:5681{path}", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def zone_dataplanes(self, zone: str = "zone-1") -> set[str]:
        items = (self.api(self.glob, "/meshes/default/dataplanes") or {}).get("items", [])
        return {i["labels"]["kuma.io/display-name"] for i in items if i["labels"].get("kuma.io/zone") == zone}

    def enable_mtls(self) -> None:
        self.glob.ssh("kumactl apply -f -", input=yaml.safe_dump_all(MTLS))

    def zone2_services_in_zone1(self) -> set[str]:
        items = (self.api(self.cp1, "/zone-ingresses") or {}).get("items", [])
        return {s["tags"]["kuma.io/service"] for i in items if i.get("zone") == "zone-2"
                for s in i.get("availableServices", [])}


def boot(lab: Any, workdir: Path, packages: dict[str, Path], inventory: Path) -> Fleet:
    """The LAYOUT's hosts booted into `lab` with the echo apps running (systemd-run), nothing of kuma-vm yet; the
    fleet recorded in the lab's directory and its inventory written into `inventory`."""
    hosts: dict[str, Any] = {}
    for release, resolved in dict.fromkeys((p.release, p.resolved) for p in LAYOUT):
        parts = [p for p in LAYOUT if (p.release, p.resolved) == (release, resolved)]
        for p, host in zip(parts, lab.add_hosts(len(parts), release=release, resolved=resolved), strict=True):
            hosts[p.part] = host
    for p in LAYOUT:
        for app, port in p.apps:
            hosts[p.part].copy(ECHO_APP, "/root/echo_http.py")
            hosts[p.part].ssh(f"systemd-run --unit=echo-{app} python3 /root/echo_http.py --port {port} --name {app}")
    hosts = {p.part: hosts[p.part] for p in LAYOUT}
    record = {"hosts": {part: h.name for part, h in hosts.items()},
              "packages": {kind: str(path) for kind, path in packages.items()}}
    (Path(lab.state.dir) / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    fleet = Fleet(lab, hosts, inventory, workdir)
    fleet.regenerate()
    return fleet


def until(what: str, check: Any, timeout: float = 120.0, *, who: str = "fleet-up", interval: float = 1.0) -> Any:
    """Poll `check` (a real state of the fleet) until it returns something true; else exit naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise SystemExit(f"{who}: {what} did not happen within {timeout:g}s")


def main() -> None:
    from tests.e2e.packages import build_release
    from tests.lab.fixtures import Lab, lab_skip_reason

    reason = lab_skip_reason()
    if reason:
        raise SystemExit(f"fleet-up: the lab cannot run here: {reason}")
    name = os.environ.get("KUMA_LAB_NAME", "fleet")
    workdir = REPO / ".work" / "fleet"
    workdir.mkdir(parents=True, exist_ok=True)
    print("--- building the kuma-cp and kuma-dp packages (cached per source state)", flush=True)
    packages = build_release("1")
    lab = Lab(name, owner_pid=os.getpid())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps it so:
    # restore the handler so an interrupt sent by PID tears the lab down like Ctrl-C does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print(f"--- booting {len(LAYOUT)} lab hosts (lab {name!r})", flush=True)
        fleet = boot(lab, workdir, packages, LAB_INVENTORY)
        print(f"--- python -m tests.lab status --name {name} --inventory lab: wrote "
              f"{LAB_INVENTORY.relative_to(REPO)}/hosts.yml", flush=True)
        print("--- ansible-playbook -i playbooks/inventories/lab playbooks/site.yml: global, zone-1, zone-2, "
              "their ingresses and dataplanes", flush=True)
        fleet.play(stream=True)
        print("--- mTLS on the default mesh, applied on global (cross-zone traffic needs it)", flush=True)
        fleet.enable_mtls()
        until("zone-2's ingress reaching zone-1", lambda: "billing" in fleet.zone2_services_in_zone1())
        for target in ("backend.mesh", "billing.mesh"):
            body = until(f"http://{target}/ from the zone-1 host", lambda t=target: fleet.z1.ssh(
                f"curl -sf http://{t}/", check=False).stdout)
            answer = json.loads(body)
            xfcc = answer["headers"].get("x-forwarded-client-cert", "")
            caller = next((p[4:] for p in xfcc.split(";") if p.startswith("URI=spiffe://")), "no client certificate")
            print(f"    curl http://{target}/ on {fleet.z1.name} (zone-1): answered by {answer['service']!r}, "
                  f"which saw the caller {caller}", flush=True)
        print("\nThe fleet is up. Hosts (ssh: python -m tests.lab ssh --name " + name + " HOST):")
        for part, host in fleet.by_part.items():
            print(f"    {host.name:<14} {host.address:<14} {part}")
        print("Re-run: .venv/bin/ansible-playbook -i playbooks/inventories/lab playbooks/site.yml")
        print(f"Ctrl-C tears the lab down (or, from another shell: python -m tests.lab down --name {name}).",
              flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("\n--- tearing the lab down", flush=True)
        lab.down()


if __name__ == "__main__":
    main()
