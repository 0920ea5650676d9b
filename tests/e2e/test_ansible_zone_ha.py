"""A zone with two control plane instances on one PostgreSQL database, deployed by playbooks/site.yml (the example
inventory's zone-2), on three booted lab hosts: instances A and B (kuma_zone_cp, kuma_cp_store_type postgres) and a
service host with `web` (outbound to `backend`) and `backend`. PostgreSQL is this machine's Debian server
(tests/postgres_server.py), listening only on this machine's address on the lab's own bridge.

The service host uses the roles' defaults: its dataplanes' tokens come from A (the zone's first control plane) and
so does the CA kuma-dp trusts, while kuma-dp dials the zone address (kuma_cp_zone_address), a name that resolves
to B on that host. So: both instances run from site.yml and migrate/share the store; both present one dp-server
certificate, which verifies against the CA the dataplane host got, under A's name, B's name and the zone address;
the dataplanes work through B; a second run changes nothing and --check reports nothing; with A's kuma-cp stopped
(A was deployed first and normally leads the zone) B keeps serving: a new endpoint applied through B reaches web's Envoy
and web's requests to backend reach it. Never against this machine."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.packages import build_release
from tests.e2e.test_ansible import recap
from tests.integration.mesh_harness import eventually
from tests.lab.fixtures import Lab
from tests.lab.fleet import ANSIBLE_PLAYBOOK, ECHO_APP, LAB_INVENTORY, REPO
from tests.lab.inventory import ssh_common_args
from tests.postgres_server import TEST_USER, PgServer, create_database, find_bin_dir, throwaway_server
from tests.requirements import unavailable

pytestmark = pytest.mark.e2e

ZONE = "zone-ha"
ZONE_ADDRESS = "kuma-cp.zone-ha.test"  # the operator's name for the zone (here: B, in the service host's /etc/hosts)
WEB_ADMIN_PORT = 9911
EXTRA_BACKEND_PORT = 20009

# Run on the service host: the SHA-256 of the certificate each dp-server presents, verified against the CA kuma-dp
# got (hostname checked), with gRPC's ALPN. argv: CA file, then NAME=ADDRESS pairs.
CERT_PROBE = """
import hashlib, json, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.set_alpn_protocols(["h2"])
out = {}
for pair in sys.argv[2:]:
    name, address = pair.split("=")
    with socket.create_connection((address, 5678), timeout=10) as raw, \\
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        out[name] = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
print(json.dumps(out))
"""


def dataplanes(address: str) -> list[dict[str, Any]]:
    return [
        {"name": "web", "networking": {
            "address": address, "admin": {"port": WEB_ADMIN_PORT},
            "inbound": [{"port": 20001, "servicePort": 8081,
                         "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}]}},
        {"name": "backend", "networking": {
            "address": address,
            "inbound": [{"port": 20002, "servicePort": 8080,
                         "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]}},
    ]


def dataplane_names_are(cp: Any, names: set[str]) -> bool:
    proc = cp.ssh("curl -sf http://127.0.0.1:5681/meshes/default/dataplanes", check=False)
    return proc.returncode == 0 and {i["name"] for i in json.loads(proc.stdout)["items"]} == names


class ZoneFleet:
    def __init__(self, lab: Lab, hosts: list[Any], inventory: Path, workdir: Path) -> None:
        self.lab, self.inventory, self.workdir = lab, inventory, workdir
        self.cp_a, self.cp_b, self.svc = hosts

    @property
    def all(self) -> list[Any]:
        return [self.cp_a, self.cp_b, self.svc]

    def play(self, *args: str) -> str:
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
               "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
        proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), "playbooks/site.yml", *args],
                              cwd=REPO, env=env, text=True, capture_output=True, timeout=1200)
        (self.workdir / "last-run.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"ansible-playbook {' '.join(args)} failed:\n{proc.stdout[-8000:]}\n{proc.stderr}"
        results = recap(proc.stdout)
        assert {h: (r["failed"], r["unreachable"]) for h, r in results.items()} == \
            {h.name: (0, 0) for h in self.all}, proc.stdout[-4000:]
        return proc.stdout

    def web_clusters(self) -> str:
        return str(self.svc.ssh(f"curl -sf http://127.0.0.1:{WEB_ADMIN_PORT}/clusters", check=False).stdout)


def write_inventory(lab: Lab, hosts: list[Any], pg: PgServer, db_name: str, packages: dict[str, Path],
                    out: Path) -> Path:
    cp_a, cp_b, svc = hosts
    cp_vars = {"kuma_zone": ZONE, "kuma_cp_store_type": "postgres", "kuma_cp_postgres_host": pg.host,
               "kuma_cp_postgres_port": pg.port, "kuma_cp_postgres_user": pg.user,
               "kuma_cp_postgres_password": pg.password, "kuma_cp_postgres_db_name": db_name,
               "kuma_cp_zone_address": ZONE_ADDRESS}
    inventory = {"all": {
        "vars": {"ansible_user": "root", "ansible_ssh_private_key_file": lab.ssh_key,
                 "ansible_ssh_common_args": ssh_common_args(lab.state),
                 "ansible_python_interpreter": "/usr/bin/python3",
                 "kuma_cp_package_file": str(packages["kuma-cp.deb"]),
                 "kuma_dp_package_file": str(packages["kuma-dp.deb"])},
        "children": {
            "kuma_zone_cp": {"hosts": {cp_a.name: {"ansible_host": cp_a.address, **cp_vars},
                                       cp_b.name: {"ansible_host": cp_b.address, **cp_vars}}},
            "kuma_dataplanes": {"hosts": {svc.name: {"ansible_host": svc.address, "kuma_zone": ZONE,
                                                     "kuma_dp_dataplanes": dataplanes(svc.address)}}}}}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "hosts.yml").write_text("---\n" + yaml.safe_dump(inventory, sort_keys=False, width=120))
    (out / "group_vars").symlink_to(LAB_INVENTORY / "group_vars", target_is_directory=True)
    return out


@pytest.fixture(scope="module")
def zone(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZoneFleet]:
    if os.geteuid() != 0:
        unavailable("lab", "the Ansible e2e tests boot lab hosts: root only")
    if find_bin_dir() is None:
        unavailable("postgres", "no PostgreSQL server binaries: apt-get install postgresql")
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.fail(f"{ANSIBLE_PLAYBOOK} is missing: scripts/setup.sh installs ansible-core (the dev extra)")
    own = tmp_path_factory.mktemp("packages")
    packages = {kind: Path(shutil.copy(path, own)) for kind, path in build_release("1").items()}
    hosts = lab.add_hosts(3)
    _, cp_b, svc = hosts
    for app, port in (("backend", 8080), ("web", 8081)):
        svc.copy(ECHO_APP, "/root/echo_http.py")
        svc.ssh(f"systemd-run --unit=echo-{app} python3 /root/echo_http.py --port {port} --name {app}")
    # The new endpoint of the last test: an operator's Dataplane (no kuma-dp) whose inbound is this app itself.
    svc.ssh(f"systemd-run --unit=echo-backend-extra python3 /root/echo_http.py --host {svc.address} "
            f"--port {EXTRA_BACKEND_PORT} --name backend-extra")
    # The operator's name for the zone: B's address, on the service host only (its /etc/hosts, not this machine's).
    svc.ssh(f"echo '{cp_b.address} {ZONE_ADDRESS}' >> /etc/hosts")
    # PostgreSQL on this machine's address on the lab's bridge only, open to the lab's hosts.
    network = ipaddress.IPv4Network(lab.state.subnet)
    with throwaway_server(listen_address=lab.gateway, allow_network=str(network)) as pg:
        assert pg.user == TEST_USER
        db_name = create_database(pg, prefix="kuma_zone_ha")
        workdir = tmp_path_factory.mktemp("ansible-zone-ha")
        inventory = write_inventory(lab, hosts, pg, db_name, packages, workdir / "inventory")
        yield ZoneFleet(lab, hosts, inventory, workdir)


def test_site_yml_runs_both_instances_on_one_postgresql_with_one_dp_server_certificate(zone: ZoneFleet) -> None:
    zone.play()
    a, b, svc = zone.cp_a, zone.cp_b, zone.svc
    for host, units in ((a, "kuma-cp"), (b, "kuma-cp"), (svc, "kuma-dp@web kuma-dp@backend")):
        assert host.ssh(f"systemctl is-active {units}").stdout.split() == ["active"] * len(units.split()), host
    # A generated the certificate (its work dir); B runs on copies of it.
    assert b.ssh("test -e /var/lib/kuma/kuma-cp/tls", check=False).returncode != 0
    config_b = yaml.safe_load(b.ssh("cat /etc/kuma/kuma-cp.yaml").stdout)
    assert config_b["general"]["tlsCaFile"] == "/etc/kuma/tls/ca.crt"
    assert "tlsCertFile" not in yaml.safe_load(a.ssh("cat /etc/kuma/kuma-cp.yaml").stdout)["general"]
    assert b.ssh("stat -c '%a %U %G' /etc/kuma/tls/server.key").stdout.strip() == "640 root kuma"
    # One store: what one instance registered, the other lists (kuma-dp registered web and backend via B).
    for cp in (a, b):
        eventually(functools.partial(dataplane_names_are, cp, {"web", "backend"}), timeout=60, interval=0.5,
                   message=f"web and backend in the store, seen from {cp.name}")
    # Both present one certificate, valid under every name kuma-dp may dial, against the CA the host got from A.
    assert svc.ssh("cat /etc/kuma/ca.crt").stdout == a.ssh("cat /var/lib/kuma/kuma-cp/tls/ca.crt").stdout
    probe = svc.ssh(["python3", "-c", CERT_PROBE, "/etc/kuma/ca.crt", f"{a.name}={a.address}",
                     f"{b.name}={b.address}", f"{ZONE_ADDRESS}={b.address}", f"{a.address}={a.address}"])
    fingerprints = json.loads(probe.stdout)
    assert len(fingerprints) == 4 and len(set(fingerprints.values())) == 1, fingerprints
    assert f"KUMA_CONTROL_PLANE_URL=https://{ZONE_ADDRESS}:5678" in svc.ssh("cat /etc/kuma/kuma-dp.conf").stdout
    body = eventually(lambda: svc.ssh("curl -sf http://127.0.0.1:10001/", check=False).stdout, timeout=90,
                      message="web's outbound to backend")
    assert json.loads(body)["service"] == "backend"


def test_a_second_run_changes_nothing_and_check_mode_reports_nothing(zone: ZoneFleet) -> None:
    """Then --check with the dataplane host pointed at B (tokens issued there, the CA read from B's configuration)
    reports nothing either: B names the same CA, the tokens A issued are good, the zone address stays."""
    names = {h.name for h in zone.all}
    out = zone.play()
    assert {h: c for h, c in changed_on(out).items() if h in names} == dict.fromkeys(names, 0), out[-6000:]
    out = zone.play("--check", "--diff", "-e", f"kuma_dp_control_plane={zone.cp_b.name}")
    assert {h: c for h, c in changed_on(out).items() if h in names} == dict.fromkeys(names, 0), out[-6000:]
    assert f"ok: [{zone.svc.name} -> {zone.cp_b.name}" in out, out[-6000:]  # read from B indeed


def changed_on(output: str) -> dict[str, int]:
    return {h: r["changed"] for h, r in recap(output).items()}


def test_with_the_first_instance_stopped_the_other_keeps_serving_the_dataplanes(zone: ZoneFleet) -> None:
    a, b, svc = zone.cp_a, zone.cp_b, zone.svc
    a.ssh("systemctl stop kuma-cp")
    assert a.ssh("systemctl is-active kuma-cp", check=False).stdout.strip() != "active"
    # A new endpoint of backend, applied through B (which now is the zone's only instance, and its leader).
    extra = {"type": "Dataplane", "mesh": "default", "name": "backend-extra",
             "networking": {"address": svc.address,
                            "inbound": [{"port": EXTRA_BACKEND_PORT,
                                         "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]}}
    b.ssh("kumactl apply -f -", input=yaml.safe_dump(extra))
    eventually(lambda: f"{svc.address}:{EXTRA_BACKEND_PORT}::" in zone.web_clusters(), timeout=60,
               message="the new backend endpoint in web's Envoy, pushed by B with A stopped")
    assert f"{svc.address}:20002::" in zone.web_clusters()  # the first one stays
    # web's requests to backend reach the new endpoint too (round robin over both).
    seen: set[str] = set()

    def answered_by_both() -> bool:
        proc = svc.ssh("curl -sf http://127.0.0.1:10001/", check=False)
        if proc.returncode == 0:
            seen.add(json.loads(proc.stdout)["service"])
        return seen == {"backend", "backend-extra"}

    eventually(answered_by_both, timeout=60, message="web's requests reaching both backends with A stopped")
    for unit in ("kuma-dp@web", "kuma-dp@backend"):
        assert svc.ssh(f"systemctl is-active {unit}").stdout.strip() == "active"
