"""The kuma-cp and kuma-dp packages on booted Debian 12 and 13 hosts (packaging/, `make packages`).

One story, in order (the tests of this module share their hosts and build on each other):
static checks of the packages (lintian, rpmlint, `rpm -qp`); `apt-get install ./*.deb` on a bookworm host and
a trixie host (systemd-resolved) with no network: kuma-cp starts by itself, kuma-dp does not; a mesh with
mTLS applied with kumactl; a dataplane on each host (kuma-dp@web on bookworm, the primary kuma-dp.service on
trixie); `systemctl start` returns once the proxy is ready; web -> backend across the hosts through both
Envoys with mTLS; the agent's status lines in the journal; `systemctl stop` leaves the host's DNS as it was;
an upgrade to the same version rebuilt with release 2 restarts what ran and keeps the configuration; purge
leaves nothing. Then the .rpm on a bookworm host with Debian's rpm: its scriptlets (user, bytecode, preset,
upgrade restart, erase).

Packages are built once (packaging/build.py keys them by a hash of the source tree) into the packaging
cache, so a rerun without source changes starts at once. Measurements (sizes, install and start times) are
written to <cache>/e2e-measurements.json and printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.e2e.packages import build_release, lintian, pkgbuild
from tests.lab.fixtures import Lab, LabHost
from tests.requirements import unavailable

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


T = TypeVar("T")
MEASURED: dict[str, Any] = {}
ECHO_APP = REPO / "tests/apps/echo_http.py"
RPM_TOOL_DEBS = ("rpm", "rpm-common", "librpm9", "librpmio9", "liblua5.3-0", "libpopt0")

MESH = """\
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
"""


def eventually(fn: Callable[[], T], timeout: float = 30, interval: float = 0.3, message: str = "") -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = fn()
            if result:
                return result
            last = result
        except Exception as e:  # the last error is the useful message
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}; last: {last!r}")
        time.sleep(interval)


def out(host: LabHost, cmd: str, timeout: float = 300) -> str:
    return host.ssh(cmd, timeout=timeout).stdout


def timed(host: LabHost, cmd: str, timeout: float = 300) -> float:
    """Seconds `cmd` took on the host (measured there, without ssh's own time)."""
    text = out(host, f"s=$(date +%s.%N); {cmd} >/tmp/timed.log 2>&1 || {{ cat /tmp/timed.log; exit 1; }}; "
                     "e=$(date +%s.%N); python3 -c \"print($e - $s)\"", timeout=timeout)
    return round(float(text.strip().splitlines()[-1]), 2)


def record(key: str, value: Any) -> None:
    MEASURED[key] = value
    path = pkgbuild.cache_root() / "e2e-measurements.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(MEASURED, indent=1) + "\n")


# --- packages ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packages() -> dict[str, dict[str, Path]]:
    if os.geteuid() != 0:
        unavailable("lab", "the package tests boot lab hosts: root only")
    started = time.monotonic()
    built = {"1": build_release("1"), "2": build_release("2")}
    record("build_seconds_both_releases_this_run", round(time.monotonic() - started, 1))
    stamp = json.loads((pkgbuild.cache_root() / "e2e-dist/.build-1.json").read_text())
    record("package_bytes", {p.name: p.stat().st_size for p in built["1"].values()})
    record("runtime_bytes", {k: v["runtime_bytes"] for k, v in stamp["sizes"].items() if isinstance(v, dict)})
    return built


@pytest.fixture(scope="module")
def hosts(lab: Lab) -> dict[str, LabHost]:
    """Fresh hosts: the packages change them in ways other modules should not see."""
    (bookworm,) = lab.add_hosts(1, release="bookworm")
    (trixie,) = lab.add_hosts(1, release="trixie", resolved=True)
    return {"bookworm": bookworm, "trixie": trixie}


# --- static checks -------------------------------------------------------------------------------------------


def test_lintian_finds_no_error(packages: dict[str, dict[str, Path]]) -> None:
    if not shutil.which("lintian"):
        unavailable("lint", "lintian is not installed (scripts/setup.sh installs it)")
    code, output = lintian([packages["1"]["kuma-cp.deb"], packages["1"]["kuma-dp.deb"]])  # started at the build
    errors = [line for line in output.splitlines() if line.startswith("E:")]
    assert code == 0 and not errors, output


def test_rpmlint_finds_no_error(packages: dict[str, dict[str, Path]]) -> None:
    if not shutil.which("rpmlint"):
        unavailable("rpm", "rpmlint is not installed (scripts/setup.sh installs it)")
    rpms = [str(packages["1"]["kuma-cp.rpm"]), str(packages["1"]["kuma-dp.rpm"])]
    proc = subprocess.run(["rpmlint", "-c", str(REPO / "packaging/rpmlint.toml"), *rpms], text=True,
                          capture_output=True, timeout=600)
    assert " 0 errors" in proc.stdout and proc.returncode in (0, 64), proc.stdout + proc.stderr


def rpm_query(path: Path, *args: str) -> str:
    proc = subprocess.run(["rpm", "-qp", *args, str(path)], text=True, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_rpm_scripts_and_requirements(packages: dict[str, dict[str, Path]]) -> None:
    if not shutil.which("rpm"):
        unavailable("rpm", "rpm is not installed (scripts/setup.sh installs it)")
    version = pkgbuild.project()["version"]
    for pkg in ("kuma-cp", "kuma-dp"):
        rpm = packages["1"][f"{pkg}.rpm"]
        assert rpm_query(rpm, "--queryformat", "%{NAME} %{VERSION}-%{RELEASE}") == f"{pkg} {version}-1"
        requires = rpm_query(rpm, "--requires").splitlines()
        assert "(python3.11 or python3.13)" in requires and "glibc >= 2.34" in requires and "systemd" in requires
        scripts = rpm_query(rpm, "--scripts")
        for scriptlet in ("preinstall", "postinstall", "preuninstall", "postuninstall"):
            assert f"{scriptlet} scriptlet" in scripts, scripts
        assert "useradd -r -g kuma" in scripts and "systemd-sysusers -" in scripts  # %pre: the user first
        assert "compileall" in scripts  # %post: bytecode for the host's Python
        # %post: kuma-cp follows the distribution's preset policy; kuma-dp is never enabled by the package
        assert ("systemctl --no-reload preset" in scripts) == (pkg == "kuma-cp")
        assert "try-restart" in scripts  # %postun on upgrade: restart what was running
        assert "-name __pycache__" in scripts  # %preun on erase: the bytecode goes
        files = rpm_query(rpm, "--list").splitlines()
        assert f"/usr/lib/sysusers.d/{pkg}.conf" in files and "/usr/lib/systemd/system/" + (
            "kuma-cp.service" if pkg == "kuma-cp" else "kuma-dp@.service") in files
        config = rpm_query(rpm, "--configfiles").split()
        assert config == (["/etc/kuma/kuma-cp.yaml"] if pkg == "kuma-cp" else ["/etc/kuma/kuma-dp.conf"])
        units = [f for f in files if f.startswith("/usr/lib/systemd/system/")]
        assert units and not set(units) & set(config)  # units are not configuration
    dp_files = rpm_query(packages["1"]["kuma-dp.rpm"], "--list")
    assert "/opt/kuma-vm/kuma-dp/lib/common/envoy/_bin/envoy" in dp_files
    assert "/opt/kuma-vm/kuma-cp/lib/common/envoy/_bin/envoy" not in rpm_query(packages["1"]["kuma-cp.rpm"], "--list")


def test_deb_metadata(packages: dict[str, dict[str, Path]]) -> None:
    for pkg, conffile in (("kuma-cp", "/etc/kuma/kuma-cp.yaml"), ("kuma-dp", "/etc/kuma/kuma-dp.conf")):
        deb = str(packages["1"][f"{pkg}.deb"])
        fields = subprocess.run(["dpkg-deb", "-f", deb, "Version", "Depends"], text=True, capture_output=True,
                                check=True).stdout
        assert f"Version: {pkgbuild.project()['version']}-1" in fields
        assert "python3.11 | python3.13" in fields and "libc6 (>= 2.34)" in fields
        control = subprocess.run(["dpkg-deb", "-I", deb, "conffiles"], text=True, capture_output=True,
                                 check=True).stdout.split()
        assert control == [conffile]  # only the configuration; the units are not conffiles
        assert subprocess.run(["dpkg-deb", "-f", str(packages["2"][f"{pkg}.deb"]), "Version"], text=True,
                              capture_output=True, check=True).stdout.strip().endswith("-2")


# --- install, mesh, traffic ----------------------------------------------------------------------------------


def install_debs(host: LabHost, debs: list[Path]) -> float:
    names = []
    for deb in debs:
        host.copy(deb, f"/root/{deb.name}")
        names.append(f"/root/{deb.name}")
    # No mirror in the lab: every dependency must already be on the host.
    return timed(host, "DEBIAN_FRONTEND=noninteractive apt-get install -y "
                       + " ".join(names), timeout=600)


SNAPSHOT = ("find / -xdev \\( -path /proc -o -path /root -o -path /tmp -o -path /var/log -o -path /var/cache "
            "-o -path /var/lib/apt -o -path /var/lib/dpkg -o -path /var/lib/systemd -o -path /var/tmp \\) -prune "
            "-o -print | sort")


def test_install_on_bookworm_and_trixie(packages: dict[str, dict[str, Path]], hosts: dict[str, LabHost]) -> None:
    for release, host in hosts.items():
        host.ssh(f"{SNAPSHOT} > /root/files-before-install.txt")
        seconds = install_debs(host, [packages["1"]["kuma-cp.deb"], packages["1"]["kuma-dp.deb"]])
        record(f"install_seconds_{release}", seconds)
        status = out(host, "dpkg-query -W -f='${Package} ${Version} ${Status}\\n' kuma-cp kuma-dp")
        assert status.count("install ok installed") == 2, status
        # kuma-cp: enabled and started by the install (its defaults are a working standalone zone) ...
        assert out(host, "systemctl is-enabled kuma-cp").strip() == "enabled"
        assert out(host, "systemctl is-active kuma-cp").strip() == "active"
        assert "default" in out(host, "kumactl get meshes")
        # ... kuma-dp: nothing enabled, nothing running, without a dataplane definition.
        for unit in ("kuma-dp.service", "kuma-dp@web.service"):
            assert host.ssh(f"systemctl is-enabled {unit}", check=False).stdout.strip() == "disabled"
            assert host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip() == "inactive"
        # The runtime runs on the host's own Python (3.11 on bookworm, 3.13 on trixie), from /opt/kuma-vm.
        py = out(host, "/opt/kuma-vm/kuma-dp/bin/python -I -c 'import sys, grpc; print(sys.version_info[:2], "
                       "sys.prefix, grpc.__file__)'")
        expected = "(3, 11)" if release == "bookworm" else "(3, 13)"
        assert py.startswith(expected) and "/opt/kuma-vm/kuma-dp" in py, py
        assert "envoy" in out(host, "kuma-dp version --detailed")
        assert out(host, "id -u kuma").strip().isdigit()
        assert out(host, "getent passwd kuma").strip().endswith(":/var/lib/kuma:/usr/sbin/nologin")
        record(f"installed_kbytes_{release}", {p: int(out(host, f"dpkg-query -W -f='${{Installed-Size}}' {p}"))
                                               for p in ("kuma-cp", "kuma-dp")})
        record(f"du_opt_kuma_vm_{release}", out(host, "du -sh /opt/kuma-vm/* | tr '\\t' ' '").strip())


def test_units_verify(hosts: dict[str, LabHost]) -> None:
    for host in hosts.values():
        # Loads each unit (the template through an instance) with the installed binaries, as systemd would.
        proc = host.ssh("SYSTEMD_LOG_LEVEL=notice systemd-analyze verify kuma-cp.service kuma-dp.service "
                        "kuma-dp@web.service kuma-dp-dns-restore.service 2>&1", check=False)
        findings = [line for line in proc.stdout.splitlines() if "kuma" in line]
        assert proc.returncode == 0 and not findings, proc.stdout


@pytest.fixture(scope="module")
def mesh(hosts: dict[str, LabHost]) -> dict[str, Any]:
    """kuma-cp on the bookworm host is the mesh's control plane; both hosts' dataplanes connect to it."""
    cp, other = hosts["bookworm"], hosts["trixie"]
    cp.ssh("cat > /root/mesh.yaml", input=MESH)
    cp.ssh("kumactl apply -f /root/mesh.yaml")
    assert "ca-1" in out(cp, "kumactl get mesh default -o yaml")
    ca = out(cp, "cat /var/lib/kuma/kuma-cp/tls/ca.crt")
    apps = {"bookworm": ("web", 8081), "trixie": ("backend", 8080)}
    for release, host in hosts.items():
        service, port = apps[release]
        host.copy(ECHO_APP, "/root/echo_http.py")
        host.ssh(f"systemd-run --unit=echo-{service} python3 /root/echo_http.py --port {port} --name {service}")
        host.ssh("install -m 0644 /dev/stdin /etc/kuma/ca.crt", input=ca)
        # The packaged environment file points at https://localhost:5678 (right on the control plane's host);
        # the other host names it (its certificate carries the host name).
        conf = out(host, "cat /etc/kuma/kuma-dp.conf")
        if host is not cp:
            conf = conf.replace("KUMA_CONTROL_PLANE_URL=https://localhost:5678",
                                f"KUMA_CONTROL_PLANE_URL=https://{cp.name}:5678")
        conf += "KUMA_DATAPLANE_DRAIN_TIME=1s\n"
        host.ssh("cat > /etc/kuma/kuma-dp.conf", input=conf)
    web = f"""type: Dataplane
mesh: default
name: web
networking:
  address: {cp.address}
  inbound:
  - port: 20001
    servicePort: 8081
    tags: {{kuma.io/service: web, kuma.io/protocol: http}}
  outbound:
  - port: 10001
    tags: {{kuma.io/service: backend}}
"""
    backend = f"""type: Dataplane
mesh: default
name: backend
networking:
  address: {other.address}
  inbound:
  - port: 20002
    servicePort: 8080
    tags: {{kuma.io/service: backend, kuma.io/protocol: http}}
"""
    client = f"""type: Dataplane
mesh: default
name: client
networking:
  address: {cp.address}
  inbound:
  - port: 20003
    servicePort: 8082
    tags: {{kuma.io/service: client, kuma.io/protocol: http}}
"""
    # Tokens: readable by the kuma user (the units' user) and nobody else.
    install_token = "install -m 0640 -g kuma /dev/stdin /etc/kuma/dataplanes/{}.token"
    for name, file, doc in (("web", "web", web), ("client", "primary", client)):
        cp.ssh(f"cat > /etc/kuma/dataplanes/{file}.yaml", input=doc)
        cp.ssh(f"kumactl generate dataplane-token --mesh default --name {name} | {install_token.format(file)}")
    other.ssh("cat > /etc/kuma/dataplanes/primary.yaml", input=backend)
    other.ssh(install_token.format("primary"), input=out(cp, "kumactl generate dataplane-token --mesh default "
                                                            "--name backend"))
    # Debian 12: kuma-dp@web (no DNS) and the primary dataplane `client` (DNS stub, /etc/resolv.conf);
    # Debian 13: the primary dataplane `backend` (DNS stub, systemd-resolved).
    return {"cp": cp, "units": {"bookworm": ["kuma-dp@web.service", "kuma-dp.service"],
                                "trixie": ["kuma-dp.service"]}}


def dns_state(host: LabHost) -> str:
    text = out(host, "readlink /etc/resolv.conf; cat /etc/resolv.conf")
    if host.resolved:
        text += out(host, "resolvectl dns; resolvectl domain; ip -br link")
    return text


def rundir(unit: str) -> str:
    return "/run/kuma-dp/" + ("web" if unit.startswith("kuma-dp@") else "primary")


def readiness(host: LabHost, unit: str) -> int:
    code = host.ssh(f"curl -s -o /dev/null -w '%{{http_code}}' http://$(cat {rundir(unit)}/readiness-address)/ready",
                    check=False).stdout.strip()
    return int(code or 0)


def test_start_returns_once_ready(hosts: dict[str, LabHost], mesh: dict[str, Any]) -> None:
    for release in ("trixie", "bookworm"):
        host = hosts[release]
        mesh.setdefault("dns_before", {})[release] = dns_state(host)
        for unit in mesh["units"][release]:
            seconds = timed(host, f"systemctl start {unit}", timeout=120)
            record(f"start_to_ready_seconds_{release}_{unit}", seconds)
            # `systemctl start` returned: kuma-dp has said READY=1, so Envoy is live and the readiness
            # endpoint answers 200 already (no polling here).
            assert out(host, f"systemctl is-active {unit}").strip() == "active"
            assert readiness(host, unit) == 200
            status = out(host, f"systemctl show -p StatusText --value {unit}")
            assert status.startswith("ready: Envoy (pid "), status
            main_pid = out(host, f"systemctl show -p MainPID --value {unit}").strip()
            user = out(host, f"ps -o user= -p {main_pid}").strip()
            assert user == "kuma", user  # not root
            caps = out(host, f"grep CapEff /proc/{main_pid}/status").split()[1]
            # CAP_NET_BIND_SERVICE (bit 10) for the primary dataplane's DNS stub and VIP:80; nothing otherwise.
            assert caps == ("0000000000000400" if unit == "kuma-dp.service" else "0000000000000000"), caps
            assert "1048576" in out(host, f"systemctl show -p LimitNOFILE --value {unit}")


def test_primary_dataplane_points_host_dns_at_its_stub(hosts: dict[str, LabHost], mesh: dict[str, Any]) -> None:
    bookworm, trixie = hosts["bookworm"], hosts["trixie"]
    # Debian 12 without systemd-resolved: /etc/resolv.conf names the stub (the original is kept to restore).
    assert "nameserver 127.0.1.53" in out(bookworm, "cat /etc/resolv.conf")
    # Debian 13 with systemd-resolved: only .mesh goes to the stub (a link with routing domain ~mesh).
    assert "~mesh" in out(trixie, "resolvectl domain")
    for host in (bookworm, trixie):
        # <service>.mesh resolves on the host, through the resolver it already had, to the service's VIP.
        addr = eventually(lambda h=host: (r := h.ssh("getent hosts backend.mesh", check=False)).returncode == 0
                          and r.stdout.split()[0], timeout=30, message=f"backend.mesh on {host.name}")
        assert addr.startswith("127.2"), addr  # the loopback VIP range 127.240.0.0/12
        assert host.ssh("getent hosts nosuchname.mesh", check=False).returncode == 2


def test_web_talks_to_backend_across_hosts_with_mtls(hosts: dict[str, LabHost], mesh: dict[str, Any]) -> None:
    web = hosts["bookworm"]

    def call() -> dict[str, Any] | None:
        proc = web.ssh("curl -s -m 5 http://127.0.0.1:10001/hello", check=False)
        if proc.returncode != 0 or not proc.stdout.startswith("{"):
            return None
        body: dict[str, Any] = json.loads(proc.stdout)
        return body if body.get("service") == "backend" else None

    body = eventually(call, timeout=60, message="web (bookworm) -> backend (trixie) through both Envoys")
    assert body["path"] == "/hello"
    # The backend saw web's SPIFFE identity: the request crossed between the Envoys over mTLS.
    assert "URI=spiffe://default/web" in body["headers"]["x-forwarded-client-cert"]
    overview = out(mesh["cp"], "kumactl get dataplanes -o json")
    assert '"backend"' in overview and '"web"' in overview and '"client"' in overview


def test_journal_has_the_agents_status_lines(hosts: dict[str, LabHost], mesh: dict[str, Any]) -> None:
    journal = out(hosts["bookworm"], "journalctl -u kuma-dp@web --no-pager -o cat")
    for line in ("requesting the Envoy bootstrap for dataplane 'web'", "Envoy started (pid", "Envoy live"):
        assert line in journal, journal[-3000:]
    assert "Started kuma-dp@web.service" in out(hosts["bookworm"], "journalctl -u kuma-dp@web --no-pager")
    assert "kuma-dp dns configure:" in out(hosts["trixie"], "journalctl -u kuma-dp --no-pager -o cat")


def test_the_watchdog_restarts_a_stopped_kuma_cp(hosts: dict[str, LabHost], mesh: dict[str, Any]) -> None:
    """kuma-cp pings systemd's watchdog from its event loop: a stopped (or stuck) kuma-cp is killed and
    restarted. On the trixie host, whose kuma-cp is not the mesh's control plane."""
    host = hosts["trixie"]
    dropin = "/run/systemd/system/kuma-cp.service.d/test-watchdog.conf"
    host.ssh(f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Service]\\nWatchdogSec=3s\\n' > {dropin} "
             "&& systemctl daemon-reload && systemctl restart kuma-cp", timeout=120)
    try:
        assert out(host, "systemctl show -p WatchdogUSec --value kuma-cp").strip() == "3s"
        pid = out(host, "systemctl show -p MainPID --value kuma-cp").strip()
        time.sleep(4)  # pings keep a running kuma-cp alive past its watchdog timeout
        assert out(host, "systemctl show -p MainPID --value kuma-cp").strip() == pid
        host.ssh(f"kill -STOP {pid}")
        out(host, f"for i in $(seq 600); do p=$(systemctl show -p MainPID --value kuma-cp); "
                  f"[ \"$p\" != {pid} ] && [ \"$p\" != 0 ] && systemctl is-active -q kuma-cp && exit 0; "
                  "sleep 0.1; done; exit 1", timeout=90)
        assert "Watchdog timeout" in out(host, "journalctl -u kuma-cp --no-pager")
    finally:
        host.ssh(f"rm -f {dropin} && systemctl daemon-reload && systemctl restart kuma-cp", timeout=120)


def test_the_plain_http_api_is_admin_only_for_loopback_callers(hosts: dict[str, LabHost],
                                                                mesh: dict[str, Any]) -> None:
    """trixie's kuma-cp (not the mesh's control plane) with its plain-HTTP API bound to every interface: a call
    from the bookworm host is not admin (401 without a token), a call on trixie itself is; kuma-cp warns."""
    host, other = hosts["trixie"], hosts["bookworm"]
    dropin = "/run/systemd/system/kuma-cp.service.d/test-http-interface.conf"
    host.ssh(f"mkdir -p {dropin.rsplit('/', 1)[0]} && "
             f"printf '[Service]\\nEnvironment=KUMA_API_SERVER_HTTP_INTERFACE=0.0.0.0\\n' > {dropin} "
             "&& systemctl daemon-reload && systemctl restart kuma-cp", timeout=120)
    try:
        url = f"http://{host.address}:5681"
        for cmd in (f"curl -s -o /dev/null -w '%{{http_code}}' {url}/meshes",
                    f"curl -s -o /dev/null -w '%{{http_code}}' -H 'X-Forwarded-For: 127.0.0.1' {url}/meshes",
                    f"curl -s -o /dev/null -w '%{{http_code}}' -X PUT -H 'Content-Type: application/json' "
                    f"-d '{{\"type\": \"Mesh\", \"name\": \"intruder\"}}' {url}/meshes/intruder"):
            assert out(other, cmd).strip() == "401", cmd
        assert "default" in out(host, "kumactl get meshes")  # loopback: admin, as before
        assert "intruder" not in out(host, "kumactl get meshes")
        assert "the plain-HTTP API listens beyond loopback" in out(host, "journalctl -u kuma-cp -b --no-pager -o cat")
    finally:
        host.ssh(f"rm -f {dropin} && systemctl daemon-reload && systemctl restart kuma-cp", timeout=120)


def test_stop_leaves_host_dns_as_it_was(hosts: dict[str, LabHost], mesh: dict[str, Any]) -> None:
    for release in ("trixie", "bookworm"):
        host, units = hosts[release], mesh["units"][release]
        host.ssh(f"systemctl stop {' '.join(units)}")
        for unit in units:
            assert host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip() == "inactive"
            assert host.ssh(f"test -e {rundir(unit)}", check=False).returncode == 1
        # Byte for byte: /etc/resolv.conf (and resolved's links, servers and domains) as before the start.
        assert dns_state(host) == mesh["dns_before"][release]
        assert host.ssh("pgrep -x envoy", check=False).returncode == 1  # Envoy went with its agent
        # started again for the upgrade
        host.ssh(f"systemctl start {' '.join(units)}", timeout=120)


def test_a_power_cut_leaves_the_host_dns_restored_at_boot(hosts: dict[str, LabHost], mesh: dict[str, Any]) -> None:
    """bookworm runs kuma-dp.service with /etc/resolv.conf naming its stub; after a power cut (its init
    SIGKILLed) the change is still on disk, and kuma-dp-dns-restore.service puts the original back at boot,
    before anything resolves names, although kuma-dp.service (not enabled) does not start."""
    host = hosts["bookworm"]
    assert "nameserver 127.0.1.53" in out(host, "cat /etc/resolv.conf")
    host.power_cycle()
    assert host.ssh("systemctl is-active kuma-dp.service", check=False).stdout.strip() == "inactive"
    assert dns_state(host) == mesh["dns_before"]["bookworm"]
    journal = out(host, "journalctl -b -u kuma-dp-dns-restore --no-pager -o cat")
    assert "kuma-dp dns restore: /etc/resolv.conf restored" in journal, journal
    order = out(host, "systemctl show -p Before --value kuma-dp-dns-restore").split()
    assert "nss-lookup.target" in order and "sysinit.target" in order
    # A boot with nothing to restore skips it (the condition), and the next tests want the mesh back.
    host.ssh("systemctl start kuma-cp.service && systemctl start kuma-dp@web.service kuma-dp.service", timeout=180)
    assert "nameserver 127.0.1.53" in out(host, "cat /etc/resolv.conf")


def unit_pids(host: LabHost) -> dict[str, str]:
    units = ("kuma-cp.service", "kuma-dp.service", "kuma-dp@web.service")
    return {u: out(host, f"systemctl show -p MainPID --value {u}").strip() for u in units}


def test_upgrade_restarts_services_and_keeps_config(packages: dict[str, dict[str, Path]],
                                                    hosts: dict[str, LabHost], mesh: dict[str, Any]) -> None:
    for release, host in hosts.items():
        units = mesh["units"][release]
        host.ssh("echo '# edited by the operator' >> /etc/kuma/kuma-cp.yaml")
        config_before = out(host, "md5sum /etc/kuma/kuma-cp.yaml /etc/kuma/kuma-dp.conf /etc/kuma/dataplanes/*")
        before = unit_pids(host)
        assert all(before[u] != "0" for u in ("kuma-cp.service", *units)), before
        seconds = install_debs(host, [packages["2"]["kuma-cp.deb"], packages["2"]["kuma-dp.deb"]])
        record(f"upgrade_seconds_{release}", seconds)
        assert out(host, "dpkg-query -W -f='${Version}' kuma-dp").endswith("-2")
        after = unit_pids(host)
        for u in ("kuma-cp.service", *units):
            assert after[u] not in ("0", before[u]), (u, before, after)  # restarted ...
            assert out(host, f"systemctl is-active {u}").strip() == "active"  # ... and running
        for idle in {"kuma-dp@web.service", "kuma-dp.service"} - set(units):
            assert after[idle] == "0"  # what did not run was not started
        assert out(host, "md5sum /etc/kuma/kuma-cp.yaml /etc/kuma/kuma-dp.conf /etc/kuma/dataplanes/*") == \
            config_before
        assert not out(host, "ls /etc/kuma | grep -E 'dpkg-(dist|old|new)' || true").strip()
    test_web_talks_to_backend_across_hosts_with_mtls(hosts, mesh)
    test_primary_dataplane_points_host_dns_at_its_stub(hosts, mesh)


def test_purge_leaves_nothing(hosts: dict[str, LabHost], mesh: dict[str, Any]) -> None:
    for host in hosts.values():
        host.ssh("systemctl stop echo-web echo-backend 2>/dev/null; true")
        host.ssh("DEBIAN_FRONTEND=noninteractive apt-get purge -y kuma-cp kuma-dp", timeout=300)
        assert host.ssh("getent passwd kuma", check=False).returncode == 2
        assert host.ssh("getent group kuma", check=False).returncode == 2
        assert not host.ssh("systemctl list-unit-files --no-legend 'kuma*'", check=False).stdout.strip()
        assert not host.ssh("systemctl list-units --all --no-legend 'kuma*'", check=False).stdout.strip()
        assert host.ssh("pgrep -f '[k]uma|[e]nvoy'", check=False).returncode == 1
        # Every file and directory on the host is one that was there before the install (or made by this test:
        # the apps' transient units; package-manager and systemd bookkeeping are not compared).
        left = out(host, f"{SNAPSHOT} | comm -13 /root/files-before-install.txt - | "
                         "grep -v -e '^/run/systemd/transient/echo-' -e '^/run/systemd/units/' -e '^/run/user' || true")
        assert not left.strip(), left
        named = out(host, "find / -xdev \\( -path /proc -o -path /root -o -path /tmp -o -path /var/log/journal \\) "
                          "-prune -o \\( -name '*kuma*' -o -name 'envoy*' \\) -print | grep -v kuma-vm-lab || true")
        assert not named.strip(), named
        for path in ("/opt/kuma-vm", "/etc/kuma", "/var/lib/kuma", "/run/kuma-dp", "/run/kuma-cp"):
            assert host.ssh(f"test -e {path}", check=False).returncode == 1, path
        assert not out(host, "dpkg -l | grep -i kuma || true").strip()


# --- the .rpm on a Debian host, with Debian's rpm ------------------------------------------------------------


@pytest.fixture(scope="module")
def rpm_host(lab: Lab) -> LabHost:
    """A fresh host of this machine's release, with Debian's rpm tool from this machine's apt (the lab has no
    mirror): the .debs are downloaded here and installed there."""
    codename = re.search(r"^VERSION_CODENAME=(\w+)", Path("/etc/os-release").read_text(), re.M)
    if not codename or codename.group(1) not in ("bookworm", "trixie"):
        unavailable("rpm", "Debian's rpm packages are fetched with this machine's apt: it must be bookworm or trixie")
    release = codename.group(1)
    debs = pkgbuild.cache_root() / f"rpm-tool-{release}"
    debs.mkdir(parents=True, exist_ok=True)
    if len(list(debs.glob("*.deb"))) < len(RPM_TOOL_DEBS):
        proc = subprocess.run(["apt-get", "download", *RPM_TOOL_DEBS], cwd=debs, text=True, capture_output=True,
                              timeout=300)
        if proc.returncode != 0:
            unavailable("rpm", f"cannot download Debian's rpm packages here: {proc.stderr.strip()[-300:]}")
    (host,) = lab.add_hosts(1, release=release)
    names = []
    for deb in sorted(debs.glob("*.deb")):
        host.copy(deb, f"/root/{deb.name}")
        names.append(f"/root/{deb.name}")
    # Only rpm itself and the libraries it links: rpmbuild, debugedit and perl are not needed to install.
    host.ssh("dpkg -i --force-depends " + " ".join(names) + " >/dev/null")
    return host


def test_rpm_scriptlets_on_a_debian_host(packages: dict[str, dict[str, Path]], rpm_host: LabHost) -> None:
    host = rpm_host
    for release in ("1", "2"):
        for pkg in ("kuma-cp", "kuma-dp"):
            host.copy(packages[release][f"{pkg}.rpm"], f"/root/{pkg}-{release}.rpm")
    rpm = "rpm --force-debian --nodeps"  # Debian's rpm: its database knows none of dpkg's packages
    seconds = timed(host, f"{rpm} -i /root/kuma-cp-1.rpm /root/kuma-dp-1.rpm", timeout=300)
    record("rpm_install_seconds_bookworm", seconds)
    # %pre made the user, %post the bytecode for the host's Python and, for kuma-cp, the preset decision
    # (Debian's preset policy enables everything, RHEL's nothing); kuma-dp is never enabled by the package,
    # and RPM starts nothing by itself.
    assert out(host, "getent passwd kuma").strip().endswith(":/var/lib/kuma:/usr/sbin/nologin")
    assert out(host, "ls /opt/kuma-vm/kuma-cp/lib/common/controlplane/__pycache__ | head -1").strip().endswith(
        ".cpython-311.pyc")
    assert out(host, "systemctl is-enabled kuma-cp").strip() == "enabled"
    assert host.ssh("systemctl is-active kuma-cp", check=False).stdout.strip() == "inactive"
    assert host.ssh("systemctl is-enabled kuma-dp", check=False).stdout.strip() == "disabled"
    assert out(host, "rpm -q kuma-cp kuma-dp").split() == ["kuma-cp-0.1.0-1.x86_64", "kuma-dp-0.1.0-1.x86_64"]
    # The payload works: the control plane starts from the .rpm's runtime and answers kumactl.
    host.ssh("systemctl start kuma-cp", timeout=120)
    assert "default" in out(host, "kumactl get meshes")
    pid = out(host, "systemctl show -p MainPID --value kuma-cp").strip()
    # Upgrade: %postun of the old package restarts what was running.
    host.ssh(f"{rpm} -U /root/kuma-cp-2.rpm /root/kuma-dp-2.rpm", timeout=300)
    assert out(host, "rpm -q kuma-cp").strip() == "kuma-cp-0.1.0-2.x86_64"
    new_pid = out(host, "systemctl show -p MainPID --value kuma-cp").strip()
    assert new_pid not in ("0", pid) and out(host, "systemctl is-active kuma-cp").strip() == "active"
    # Erase: %preun stops and disables, %postun removes the runtime; configuration, state and the user stay
    # (as RPM packages do; a changed conffile is kept as .rpmsave).
    host.ssh("echo '# edited' >> /etc/kuma/kuma-cp.yaml")
    host.ssh("rpm --force-debian -e kuma-dp kuma-cp", timeout=300)
    assert host.ssh("systemctl is-active kuma-cp", check=False).stdout.strip() == "inactive"
    assert host.ssh("test -e /opt/kuma-vm", check=False).returncode == 1
    assert not host.ssh("systemctl list-unit-files --no-legend 'kuma*'", check=False).stdout.strip()
    assert host.ssh("test -e /etc/kuma/kuma-cp.yaml.rpmsave").returncode == 0
    assert host.ssh("test -d /var/lib/kuma/kuma-cp").returncode == 0
    assert out(host, "getent passwd kuma").strip()


def test_report_measurements() -> None:
    print("\npackage measurements: " + json.dumps(MEASURED, indent=1))
