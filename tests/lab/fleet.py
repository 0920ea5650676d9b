"""A multi-zone mesh on lab hosts, deployed by `playbooks/site.yml`: what the README's first command
(`scripts/fleet-up.sh`) runs and what the Ansible e2e tests (tests/e2e/test_ansible.py) check.

Four booted hosts: a bookworm host runs the global control plane; a bookworm host the control plane of zone-1,
the dataplane `web` (kuma-dp@web) and zone-1's ingress (kuma-dp@ingress-z1); a trixie host with
systemd-resolved zone-1's primary dataplane `backend` (kuma-dp.service, `.mesh` names in the host's resolver);
a bookworm host zone-2's control plane, `billing` and zone-2's ingress. Each service is a small echo app that
answers with its name and the headers it got (tests/apps/echo_http.py).

    python -m tests.lab.fleet    # (root) boot, build the packages, run site.yml, show traffic; Ctrl-C tears down
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ECHO_APP = REPO / "tests/apps/echo_http.py"
ANSIBLE_PLAYBOOK = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin/ansible-playbook"
APPS = {"cp": ("web", 8081), "other": ("backend", 8080), "z2": ("billing", 8082)}

# Cross-zone traffic needs mTLS (the ingress routes by the TLS SNI): applied on global.
MTLS = [{"type": "Mesh", "name": "default",
         "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}},
        {"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all",
         "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"},
                                                           "default": {"action": "Allow"}}]}}]


def ingress(host: Any, zone: str) -> dict[str, Any]:
    """A zone ingress on `host`, reachable by the other zone's hosts at the host's address."""
    return {"name": f"ingress-{zone}", "proxy_type": "ingress",
            "networking": {"address": host.address, "port": 10100, "advertisedAddress": host.address,
                           "advertisedPort": 10100}}


class Fleet:
    """The hosts, the inventory site.yml runs with, and ways to look at the result. `lab` is a
    tests.lab.fixtures.Lab, hosts are its LabHosts."""

    def __init__(self, lab: Any, glob: Any, cp: Any, other: Any, z2: Any, workdir: Path,
                 packages: dict[str, Path]) -> None:
        self.lab, self.glob, self.cp, self.other, self.z2, self.workdir = lab, glob, cp, other, z2, workdir
        self.packages = packages
        self.web_tags: dict[str, str] = {"kuma.io/service": "web", "kuma.io/protocol": "http"}

    @property
    def hosts(self) -> dict[str, Any]:
        return {"global": self.glob, "zone-1 control plane, web, ingress": self.cp,
                "zone-1 backend (primary, .mesh DNS)": self.other, "zone-2 control plane, billing, ingress": self.z2}

    def inventory(self) -> Path:
        web = {"name": "web", "networking": {
            "address": self.cp.address,
            "inbound": [{"port": 20001, "servicePort": 8081, "tags": self.web_tags}],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}]}}
        backend = {"name": "backend", "primary": True, "networking": {
            "address": self.other.address,
            "inbound": [{"port": 20002, "servicePort": 8080,
                         "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]}}
        billing = {"name": "billing", "networking": {
            "address": self.z2.address,
            "inbound": [{"port": 20003, "servicePort": 8082,
                         "tags": {"kuma.io/service": "billing", "kuma.io/protocol": "http"}}]}}
        state = self.lab.state
        common = {"ansible_user": "root", "ansible_ssh_private_key_file": state.ssh_key,
                  "ansible_ssh_common_args": f"-o StrictHostKeyChecking=no -o UserKnownHostsFile={state.known_hosts}"
                                             " -o IdentitiesOnly=yes",
                  "ansible_python_interpreter": "/usr/bin/python3",
                  # The files of this source tree (the directory may hold other builds too).
                  "kuma_cp_package_file": str(self.packages["kuma-cp.deb"]),
                  "kuma_dp_package_file": str(self.packages["kuma-dp.deb"]),
                  "kuma_dp_drain_time": "1s"}
        doc = {"all": {"vars": common, "children": {
            "kuma_global": {"hosts": {self.glob.name: {"ansible_host": self.glob.address}}},
            "kuma_zone_cp": {"hosts": {self.cp.name: {"ansible_host": self.cp.address, "kuma_zone": "zone-1"},
                                       self.z2.name: {"ansible_host": self.z2.address, "kuma_zone": "zone-2"}}},
            "kuma_dataplanes": {"hosts": {
                self.cp.name: {"ansible_host": self.cp.address, "kuma_dp_dataplanes": [web, ingress(self.cp, "z1")]},
                self.other.name: {"ansible_host": self.other.address, "kuma_zone": "zone-1",
                                  "kuma_dp_dataplanes": [backend]},
                self.z2.name: {"ansible_host": self.z2.address,
                               "kuma_dp_dataplanes": [billing, ingress(self.z2, "z2")]}}}}}}
        path = self.workdir / "inventory.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def play(self, *args: str, check: bool = True, stream: bool = False) -> subprocess.CompletedProcess[str]:
        """ansible-playbook site.yml with this fleet's inventory; `stream` shows its output as it runs."""
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_HOST_KEY_CHECKING": "False",
               "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
        argv = [str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory()), "playbooks/site.yml", *args]
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

    def zone_dataplanes(self) -> set[str]:
        items = (self.api(self.glob, "/meshes/default/dataplanes") or {}).get("items", [])
        return {i["labels"]["kuma.io/display-name"] for i in items if i["labels"].get("kuma.io/zone") == "zone-1"}

    def enable_mtls(self) -> None:
        self.glob.ssh("kumactl apply -f -", input=yaml.safe_dump_all(MTLS))

    def zone2_services_in_zone1(self) -> set[str]:
        items = (self.api(self.cp, "/zone-ingresses") or {}).get("items", [])
        return {s["tags"]["kuma.io/service"] for i in items if i.get("zone") == "zone-2"
                for s in i.get("availableServices", [])}


def boot(lab: Any, workdir: Path, packages: dict[str, Path]) -> Fleet:
    """Four new lab hosts with the echo apps running (systemd-run), nothing of kuma-vm yet."""
    glob, cp, z2 = lab.add_hosts(3, release="bookworm")
    (other,) = lab.add_hosts(1, release="trixie", resolved=True)
    for role, host in (("cp", cp), ("other", other), ("z2", z2)):
        service, port = APPS[role]
        host.copy(ECHO_APP, "/root/echo_http.py")
        host.ssh(f"systemd-run --unit=echo-{service} python3 /root/echo_http.py --port {port} --name {service}")
    return Fleet(lab, glob, cp, other, z2, workdir, packages)


def _until(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1)
    raise SystemExit(f"fleet-up: {what} did not happen within {timeout:g}s")


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
        print(f"--- booting 4 lab hosts (lab {name!r})", flush=True)
        fleet = boot(lab, workdir, packages)
        print("--- ansible-playbook playbooks/site.yml: global, zone-1, zone-2, their ingresses and dataplanes",
              flush=True)
        fleet.play(stream=True)
        print("--- mTLS on the default mesh, applied on global (cross-zone traffic needs it)", flush=True)
        fleet.enable_mtls()
        _until("zone-2's ingress reaching zone-1", lambda: "billing" in fleet.zone2_services_in_zone1())
        for target in ("backend.mesh", "billing.mesh"):
            body = _until(f"http://{target}/ from the zone-1 host", lambda t=target: fleet.other.ssh(
                f"curl -sf http://{t}/", check=False).stdout)
            answer = json.loads(body)
            xfcc = answer["headers"].get("x-forwarded-client-cert", "")
            caller = next((p[4:] for p in xfcc.split(";") if p.startswith("URI=spiffe://")), "no client certificate")
            print(f"    curl http://{target}/ on {fleet.other.name} (zone-1): answered by {answer['service']!r}, "
                  f"which saw the caller {caller}", flush=True)
        print("\nThe fleet is up. Hosts (ssh: python -m tests.lab ssh --name " + name + " HOST):")
        for what, host in fleet.hosts.items():
            print(f"    {host.name:<14} {host.address:<14} {what}")
        print(f"Inventory: {workdir / 'inventory.yml'} (re-run: .venv/bin/ansible-playbook -i that playbooks/site.yml)")
        print("Ctrl-C tears the lab down.", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("\n--- tearing the lab down", flush=True)
        lab.down()


if __name__ == "__main__":
    main()
