""".mesh DNS over UDP on loopback: the control plane's server against dnsmasq serving the same names.

For each server, in the same run: the answers per second a client keeps with a fixed window of 64 queries
in flight (closed loop; any query not answered counts as lost, and the figure counts only with zero loss),
then latency percentiles with queries sent at a steady half of that rate (open loop). The load generator is
a separate process (a blocking loop over a connected UDP socket, ids patched into prebuilt queries), so it
never shares a core's Python interpreter with the server; the control plane's server also runs in its own
process (the DnsServer component, its event loop idle as in kuma-cp). Rounds alternate between servers and
the median round is reported, because this machine is noisy.

dnsmasq is Debian's (package dnsmasq-base: the binary without the service that the `dnsmasq` package would
start on port 53); the benchmark installs it with apt-get when missing and runs it on a free loopback port:
`--no-daemon --port P --listen-address 127.0.0.1 --bind-interfaces --no-resolv --no-hosts --addn-hosts FILE`
(plus `--local=/mesh/` so unknown names are NXDOMAIN, `--local-ttl 60` as our TTL, and no config file).
It is stopped by its PID.

    .venv/bin/python bench/bench_dns.py [--services 100] [--duration 5] [--rounds 3] [--json-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `controlplane` importable without installing

WINDOW = 64
DOMAIN = "mesh"


def service_names(count: int) -> list[str]:
    return [f"backend-{i}_bench_svc_80" for i in range(count)]


def zone(count: int) -> dict[str, str]:
    """DNS name -> VIP, exactly as the control plane derives them (exact and `_` -> `.` names)."""
    from controlplane.dns.names import zone_names

    vips = {svc: f"127.240.{(i + 1) >> 8}.{(i + 1) & 255}" for i, svc in enumerate(service_names(count))}
    return zone_names({"default": vips}, DOMAIN)


def query(name: str, qtype: int = 1) -> bytes:
    """A plain query, RD set, without its 2-byte id."""
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack(">HHHHH", 0x0100, 1, 0, 0, 0) + wire + struct.pack(">HH", qtype, 1)


def free_port() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no free loopback port")


# --- the load generator (runs in its own process) ----------------------------------------------------------


def client_closed(port: int, names: list[str], window: int, duration: float) -> dict[str, Any]:
    """Keep `window` queries in flight for `duration` seconds; a reply frees a slot for the next query."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    bodies = [query(n) for n in names]
    ids = [i.to_bytes(2, "big") for i in range(65536)]
    pending = bytearray(65536)  # 1: sent, not answered yet
    send, recv, now = sock.send, sock.recv, time.perf_counter
    nb = len(bodies)
    qid = 0
    for _ in range(window):
        send(ids[qid] + bodies[qid % nb])
        pending[qid] = 1
        qid += 1
    answers = bad = reused = 0
    start = now()
    end = start + duration
    while True:
        try:
            data = recv(2048)
        except TimeoutError:
            break  # every query in flight was lost
        rid = (data[0] << 8) | data[1]
        if pending[rid]:
            pending[rid] = 0
            answers += 1
            if data[3] & 0x0F or data[6:8] != b"\x00\x01":
                bad += 1
        else:
            bad += 1  # an answer to nothing we asked (or a duplicate)
        if answers & 1023 == 0 and now() >= end:
            break
        if pending[qid]:
            reused += 1  # 65536 queries later and still unanswered: lost
        send(ids[qid] + bodies[qid % nb])
        pending[qid] = 1
        qid = (qid + 1) & 0xFFFF
    elapsed = now() - start
    # Drain what is still in flight; whatever does not come back within a second is lost.
    sock.settimeout(0.2)
    deadline = now() + 1.0
    while sum(pending) and now() < deadline:
        try:
            data = recv(2048)
        except TimeoutError:
            continue
        pending[(data[0] << 8) | data[1]] = 0
    lost = sum(pending) + reused
    sock.close()
    return {"answers": answers, "seconds": elapsed, "answers_per_s": answers / elapsed, "lost": lost,
            "bad": bad}


def client_open(port: int, names: list[str], rate: float, duration: float) -> dict[str, Any]:
    """Send at a steady `rate` regardless of replies; latency of every reply, loss of the rest."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    bodies = [query(n) for n in names]
    nb = len(bodies)
    ids = [i.to_bytes(2, "big") for i in range(65536)]
    sent_at = array("d", bytes(8 * 65536))
    lat = array("d")
    send, recv, now = sock.send, sock.recv, time.perf_counter
    interval = 1.0 / rate
    sent = lost = bad = 0
    qid = 0
    start = now()
    end = start + duration
    next_send = start
    while True:
        t = now()
        if t >= end:
            break
        burst = 0
        while next_send <= t and burst < 32:
            if sent_at[qid]:
                lost += 1  # its id comes round again unanswered
            send(ids[qid] + bodies[qid % nb])
            sent_at[qid] = t
            qid = (qid + 1) & 0xFFFF
            next_send += interval
            sent += 1
            burst += 1
        while True:
            try:
                data = recv(2048)
            except BlockingIOError:
                break
            rid = (data[0] << 8) | data[1]
            s = sent_at[rid]
            if s:
                lat.append(now() - s)
                sent_at[rid] = 0.0
            else:
                bad += 1
    deadline = now() + 1.0
    while now() < deadline and len(lat) + lost < sent:
        try:
            data = recv(2048)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        rid = (data[0] << 8) | data[1]
        if sent_at[rid]:
            lat.append(now() - sent_at[rid])
            sent_at[rid] = 0.0
    lost += sum(1 for s in sent_at if s)
    sock.close()
    ordered = sorted(lat)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else float("nan")

    achieved = sent / duration
    return {"rate": rate, "sent": sent, "achieved_rate": achieved, "answers": len(lat), "lost": lost, "bad": bad,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "max_ms": ordered[-1] * 1000 if ordered else float("nan")}


def run_client(port: int, names: list[str], mode: str, value: float, duration: float) -> dict[str, Any]:
    """The load generator in a process of its own; returns its JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(names, f)
    try:
        out = subprocess.run([sys.executable, __file__, "--client", mode, "--port", str(port), "--names-file",
                              f.name, "--value", str(value), "--duration", str(duration)],
                             capture_output=True, text=True, timeout=duration + 60, check=True)
    finally:
        os.unlink(f.name)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# --- the servers -------------------------------------------------------------------------------------------


def serve_cp(port: int, services: int) -> None:
    """The control plane's DnsServer in this process (its event loop idle, as in kuma-cp), until SIGTERM."""
    import asyncio

    from controlplane.dns.server import DnsServer

    async def main() -> None:
        server = DnsServer("127.0.0.1", port, domain=DOMAIN, ttl=60)
        server.set_records(zone(services))
        await server.start()
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(main())


class Server:
    def __init__(self, name: str, argv: list[str], port: int, ready_line: bool, log: Path) -> None:
        self.name, self.port = name, port
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE if ready_line else self._log,
                                     stderr=self._log, stdin=subprocess.DEVNULL)
        if ready_line:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if b"ready" not in line:
                self.stop()
                raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-2000:]}")
        else:
            wait_answering(port, name, self.proc, log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def wait_answering(port: int, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    q = b"\x12\x34" + query("backend-0_bench_svc_80.mesh")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        for _ in range(100):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {log.read_text(errors='replace')[-2000:]}")
            s.sendto(q, ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                if s.recv(2048)[:2] == b"\x12\x34":
                    return
        raise RuntimeError(f"{name} does not answer on 127.0.0.1:{port}")


def find_dnsmasq(install: bool) -> str | None:
    found = shutil.which("dnsmasq") or next((p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.path.exists(p)),
                                             None)
    if found or not install:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in (["apt-get", "install", "-y", "-q", "--no-install-recommends", "dnsmasq-base"],):
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        if r.returncode != 0:  # the package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            subprocess.run(args, capture_output=True, env=env)
    return shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)


def start_dnsmasq(binary: str, records: dict[str, str], tmp: Path) -> Server:
    hosts = tmp / "mesh.hosts"
    hosts.write_text("".join(f"{ip} {name}\n" for name, ip in sorted(records.items())))
    os.chmod(tmp, 0o755)  # dnsmasq may read it as an unprivileged user
    os.chmod(hosts, 0o644)
    port = free_port()
    argv = [binary, "--no-daemon", "--port", str(port), "--listen-address", "127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", "--addn-hosts", str(hosts), "--conf-file=/dev/null",
            f"--pid-file={tmp / 'dnsmasq.pid'}", "--local=/mesh/", "--local-ttl=60"]
    return Server("dnsmasq", argv, port, ready_line=False, log=tmp / "dnsmasq.log")


def start_cp(services: int, tmp: Path) -> Server:
    port = free_port()
    argv = [sys.executable, __file__, "--serve-cp", "--port", str(port), "--services", str(services)]
    return Server("kuma-cp", argv, port, ready_line=True, log=tmp / "cp.log")


# --- the run -----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (every thread), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(server: Server, names: list[str], duration: float) -> dict[str, Any]:
    run_client(server.port, names, "closed", WINDOW, 1.0)  # warm up (caches, CPU frequency)
    server_cpu, client_cpu, wall = cpu_seconds(server.proc.pid), children_cpu(), time.perf_counter()
    closed = run_client(server.port, names, "closed", WINDOW, duration)
    wall = time.perf_counter() - wall
    # How busy each side was during the closed loop (1.0 = one core): the side at ~1.0 is the bottleneck.
    closed["server_cpu"] = (cpu_seconds(server.proc.pid) - server_cpu) / wall
    closed["client_cpu"] = (children_cpu() - client_cpu) / wall
    half = closed["answers_per_s"] / 2
    opened = run_client(server.port, names, "open", half, duration)
    return {"closed": closed, "open": opened}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["closed"]["answers_per_s"] for r in rounds]
    median_round = sorted(rounds, key=lambda r: r["closed"]["answers_per_s"])[len(rounds) // 2]
    return {
        "answers_per_s": statistics.median(rates),
        "answers_per_s_rounds": rates,
        "lost": sum(r["closed"]["lost"] for r in rounds),
        "bad": sum(r["closed"]["bad"] for r in rounds),
        "server_cpu": median_round["closed"]["server_cpu"],
        "client_cpu": median_round["closed"]["client_cpu"],
        "half_load_rate": median_round["open"]["rate"],
        "half_load_achieved": median_round["open"]["achieved_rate"],
        "half_load_lost": median_round["open"]["lost"],
        "p50_ms": median_round["open"]["p50_ms"],
        "p99_ms": median_round["open"]["p99_ms"],
        "p999_ms": median_round["open"]["p999_ms"],
    }


def table(doc: dict[str, Any]) -> str:
    rows = [("server", "answers/s (w=64)", "lost", "cpu srv/cli", "half load /s", "p50 ms", "p99 ms", "p99.9 ms",
             "x dnsmasq")]
    base = doc["servers"].get("dnsmasq", {}).get("answers_per_s")
    for name, s in doc["servers"].items():
        ratio = f"{s['answers_per_s'] / base:.2f}" if base else "-"
        rows.append((name, f"{s['answers_per_s']:,.0f}", str(s["lost"] + s["half_load_lost"]),
                     f"{s['server_cpu']:.2f}/{s['client_cpu']:.2f}",
                     f"{s['half_load_rate']:,.0f}", f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}",
                     f"{s['p999_ms']:.3f}", ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=100, help="services (each has 2 names)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-dnsmasq", action="store_true", help="measure only the control plane's server")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install dnsmasq-base")
    parser.add_argument("--json-only", action="store_true")
    # internal: the load generator and the server processes
    parser.add_argument("--client", choices=["closed", "open"], help=argparse.SUPPRESS)
    parser.add_argument("--serve-cp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--names-file", help=argparse.SUPPRESS)
    parser.add_argument("--value", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.client:
        names = json.loads(Path(args.names_file).read_text())
        fn = client_closed if args.client == "closed" else client_open
        value = int(args.value) if args.client == "closed" else args.value
        print(json.dumps(fn(args.port, names, value, args.duration)))  # type: ignore[operator]
        return
    if args.serve_cp:
        serve_cp(args.port, args.services)
        return

    records = zone(args.services)
    names = sorted(records)
    doc: dict[str, Any] = {"services": args.services, "names": len(names), "window": WINDOW,
                           "duration_s": args.duration, "rounds": args.rounds, "cpus": os.cpu_count(),
                           "servers": {}}
    dnsmasq = None if args.no_dnsmasq else find_dnsmasq(install=not args.no_install)
    if not args.no_dnsmasq and dnsmasq is None:
        doc["dnsmasq"] = "not available (not installed and apt-get install dnsmasq-base not possible)"
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as d:
        tmp = Path(d)
        servers: list[Server] = []
        try:
            servers.append(start_cp(args.services, tmp))
            if dnsmasq:
                servers.append(start_dnsmasq(dnsmasq, records, tmp))
            results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
            for _ in range(args.rounds):
                for s in servers:
                    results[s.name].append(measure(s, names, args.duration))
        finally:
            for s in servers:
                s.stop()
    for name, rounds in results.items():
        doc["servers"][name] = summarize(rounds)
    if "dnsmasq" in doc["servers"]:
        cp, dm = doc["servers"]["kuma-cp"], doc["servers"]["dnsmasq"]
        doc["ratio_to_dnsmasq"] = cp["answers_per_s"] / dm["answers_per_s"]
        doc["target_ratio"] = 1.0
    print(json.dumps(doc, indent=2, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))
    if not args.json_only:
        print()
        print(table(doc))


if __name__ == "__main__":
    main()
