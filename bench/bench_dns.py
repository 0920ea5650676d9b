""".mesh DNS over UDP on loopback: the control plane's server against dnsmasq serving the same names.

For each server, in the same run: the answers per second that N load generator processes keep together, each
with a fixed window of 64 queries in flight (closed loop; any query not answered counts as lost, and the figure
counts only with zero loss), the server's CPU time per answer over that window (utime + stime from
/proc/PID/stat, every thread), then latency percentiles with queries sent at a steady half of that rate (open
loop, split between the generators). Each generator is a process of its own (a blocking loop over a connected
UDP socket, ids patched into prebuilt queries), so none shares a Python interpreter with the server, and there
are enough of them that the server is the ceiling: `--generators` (default 2 on this 2-core machine kind) is
checked every run by measuring dnsmasq with one generator more (its rate should not rise). The control
plane's server runs in its own process (the DnsServer component, its event loop idle as in kuma-cp). Rounds
alternate between servers; the median round is reported, and each server's answers/s and CPU per answer as
a ratio to dnsmasq's in the same round (median of the rounds): the machine is shared and noisy, ratios and
CPU per answer are steadier than any one rate. The load average before and after is printed.

dnsmasq is Debian's (package dnsmasq-base: the binary without the service that the `dnsmasq` package would
start on port 53); the benchmark installs it with apt-get when missing and runs it on a free loopback port:
`--no-daemon --port P --listen-address 127.0.0.1 --bind-interfaces --no-resolv --no-hosts --addn-hosts FILE`
(plus `--local=/mesh/` so unknown names are NXDOMAIN, `--local-ttl 60` as our TTL, and no config file).
It is stopped by its PID.

    .venv/bin/python bench/bench_dns.py [--services 100] [--duration 5] [--rounds 3] [--generators 2] [--json-only]
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

WINDOW = 64  # queries in flight per load generator
GENERATORS = 2  # see --generators: dnsmasq's rate does not rise with a third on 2 cores
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


# --- the load generator (N processes of their own) ---------------------------------------------------------
#
# Each generator process binds its own socket, prints "ready", waits for "go" on stdin, runs its measured
# window, prints "end" the moment that window closes (before draining what is still in flight), then its JSON.
# The parent reads the server's CPU time between "go" and the last "end", so CPU per answer covers exactly
# the window every generator was sending in.


def _start_line() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go line on stdin")


def _end_line() -> None:
    print("end", flush=True)


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


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
    _start_line()
    cpu0 = _own_cpu()
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
    cpu = _own_cpu() - cpu0
    _end_line()
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
            "bad": bad, "cpu_s": cpu}


def client_open(port: int, names: list[str], rate: float, duration: float) -> dict[str, Any]:
    """Send at a steady `rate` regardless of replies; latency of every reply (microseconds), loss of the rest."""
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
    _start_line()
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
    _end_line()
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
    return {"rate": rate, "sent": sent, "achieved_rate": sent / duration, "answers": len(lat), "lost": lost,
            "bad": bad, "latencies_us": [round(v * 1e6) for v in lat]}


def run_clients(server: Server, names: list[str], mode: str, value: float, duration: float,
                generators: int) -> dict[str, Any]:
    """`generators` load generator processes against one server at once (closed: each keeps `value` queries
    in flight; open: `value` queries/s split between them); their figures summed, with the server's CPU time
    over the window they all ran in."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(names, f)
    procs: list[subprocess.Popen[str]] = []
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed below; a file, so no pipe can fill up and block

    def failed(what: str) -> RuntimeError:
        errors.seek(0)
        return RuntimeError(f"load generator {what}: {errors.read()[-2000:].decode(errors='replace')}")

    try:
        each = value if mode == "closed" else value / generators
        for _ in range(generators):
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--client", mode, "--port", str(server.port), "--names-file", f.name,
                 "--value", str(each), "--duration", str(duration)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True))
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise failed("did not start")
        cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "end":
                raise failed("failed")
        cpu1, t1 = cpu_seconds(server.proc.pid), time.perf_counter()
        outs = []
        for p in procs:
            assert p.stdout is not None
            out = p.stdout.read()  # the same buffered reader as the lines above: nothing read ahead is lost
            if p.wait(duration + 60) != 0:
                raise failed("failed")
            outs.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()
        errors.close()
        os.unlink(f.name)
    wall = t1 - t0
    server_cpu = cpu1 - cpu0
    if mode == "closed":
        answers = sum(o["answers"] for o in outs)
        return {"generators": generators, "answers": answers,
                "answers_per_s": sum(o["answers_per_s"] for o in outs),
                "per_generator": [o["answers_per_s"] for o in outs],
                "lost": sum(o["lost"] for o in outs), "bad": sum(o["bad"] for o in outs),
                "server_cpu": server_cpu / wall,  # cores busy (1.0 = one core)
                "server_cpu_us_per_answer": server_cpu / answers * 1e6 if answers else float("nan"),
                "client_cpu": sum(o["cpu_s"] for o in outs) / wall}
    lat = sorted(v for o in outs for v in o["latencies_us"])

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] / 1000 if lat else float("nan")

    return {"generators": generators, "rate": value, "sent": sum(o["sent"] for o in outs),
            "achieved_rate": sum(o["achieved_rate"] for o in outs), "answers": len(lat),
            "lost": sum(o["lost"] for o in outs), "bad": sum(o["bad"] for o in outs),
            "server_cpu_us_per_answer": server_cpu / len(lat) * 1e6 if lat else float("nan"),
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "max_ms": lat[-1] / 1000 if lat else float("nan")}


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


def measure(server: Server, names: list[str], duration: float, generators: int, window: int) -> dict[str, Any]:
    run_clients(server, names, "closed", window, 1.0, generators)  # warm up (caches, CPU frequency)
    closed = run_clients(server, names, "closed", window, duration, generators)
    half = closed["answers_per_s"] / 2
    opened = run_clients(server, names, "open", half, duration, generators)
    return {"closed": closed, "open": opened}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["closed"]["answers_per_s"] for r in rounds]
    cpu = [r["closed"]["server_cpu_us_per_answer"] for r in rounds]
    median_round = sorted(rounds, key=lambda r: r["closed"]["answers_per_s"])[len(rounds) // 2]
    return {
        "answers_per_s": statistics.median(rates),
        "answers_per_s_rounds": rates,
        "server_cpu_us_per_answer": statistics.median(cpu),
        "server_cpu_us_per_answer_rounds": cpu,
        "lost": sum(r["closed"]["lost"] for r in rounds),
        "bad": sum(r["closed"]["bad"] for r in rounds),
        "server_cpu": median_round["closed"]["server_cpu"],
        "client_cpu": median_round["closed"]["client_cpu"],
        "per_generator": median_round["closed"]["per_generator"],
        "half_load_rate": median_round["open"]["rate"],
        "half_load_achieved": median_round["open"]["achieved_rate"],
        "half_load_lost": median_round["open"]["lost"],
        "p50_ms": median_round["open"]["p50_ms"],
        "p99_ms": median_round["open"]["p99_ms"],
        "p999_ms": median_round["open"]["p999_ms"],
    }


def add_ratios(servers: dict[str, dict[str, Any]], base: str = "dnsmasq") -> None:
    """Each server's answers/s and CPU per answer as a ratio to `base`'s in the same run (per round, then the
    median: both ran in the same minutes, so the ratio is steadier than either figure)."""
    ref = servers.get(base)
    if not ref:
        return
    for s in servers.values():
        rates = [a / b for a, b in zip(s["answers_per_s_rounds"], ref["answers_per_s_rounds"], strict=True)]
        cpus = [a / b for a, b in zip(s["server_cpu_us_per_answer_rounds"], ref["server_cpu_us_per_answer_rounds"],
                                      strict=True)]
        s["answers_ratio_to_dnsmasq"] = statistics.median(rates)
        s["cpu_per_answer_ratio_to_dnsmasq"] = statistics.median(cpus)


def saturation(server: Server, names: list[str], duration: float, generators: int, window: int,
               rounds: int) -> dict[str, Any]:
    """Is the server (dnsmasq) the ceiling with `generators` load generators? Its rate with one generator
    more, alternated with the rate at `generators`, median of `rounds`: a ratio near 1.0 says yes."""
    at_n: list[float] = []
    at_more: list[float] = []
    for _ in range(rounds):
        at_n.append(run_clients(server, names, "closed", window, duration, generators)["answers_per_s"])
        at_more.append(run_clients(server, names, "closed", window, duration, generators + 1)["answers_per_s"])
    return {"server": server.name, "generators": generators, "answers_per_s": statistics.median(at_n),
            "generators_plus_one": generators + 1, "answers_per_s_plus_one": statistics.median(at_more),
            "ratio": statistics.median(b / a for a, b in zip(at_n, at_more, strict=True))}


def table(doc: dict[str, Any]) -> str:
    rows = [("server", "answers/s", "lost full/half", "cpu srv/cli", "us cpu/answer", "half load /s", "p50 ms",
             "p99 ms", "p99.9 ms", "x dnsmasq /s", "x dnsmasq cpu")]
    for name, s in doc["servers"].items():
        ratio = f"{s['answers_ratio_to_dnsmasq']:.2f}" if "answers_ratio_to_dnsmasq" in s else "-"
        cratio = f"{s['cpu_per_answer_ratio_to_dnsmasq']:.2f}" if "cpu_per_answer_ratio_to_dnsmasq" in s else "-"
        rows.append((name, f"{s['answers_per_s']:,.0f}", f"{s['lost']}/{s['half_load_lost']}",
                     f"{s['server_cpu']:.2f}/{s['client_cpu']:.2f}", f"{s['server_cpu_us_per_answer']:.2f}",
                     f"{s['half_load_rate']:,.0f}", f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}",
                     f"{s['p999_ms']:.3f}", ratio, cratio))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def saturation_line(sat: dict[str, Any]) -> str:
    return (f"load generators: {sat['server']} {sat['answers_per_s']:,.0f}/s with {sat['generators']}, "
            f"{sat['answers_per_s_plus_one']:,.0f}/s with {sat['generators_plus_one']} "
            f"(x{sat['ratio']:.2f}: {'the server is the ceiling' if sat['ratio'] <= 1.05 else 'NOT saturated'})")


def load_line(doc: dict[str, Any]) -> str:
    return f"load average before {doc['load_before']}, after {doc['load_after']} ({doc['cpus']} cpus)"


def add_load_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generators", type=int, default=GENERATORS,
                        help="load generator processes per measurement (enough to saturate dnsmasq)")
    parser.add_argument("--window", type=int, default=WINDOW, help="queries each generator keeps in flight")
    parser.add_argument("--no-saturation-check", action="store_true",
                        help="skip measuring dnsmasq with one generator more")


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=100, help="services (each has 2 names)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-dnsmasq", action="store_true", help="measure only the control plane's server")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install dnsmasq-base")
    parser.add_argument("--json-only", action="store_true")
    add_load_options(parser)
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
    doc: dict[str, Any] = {"services": args.services, "names": len(names), "generators": args.generators,
                           "window_per_generator": args.window, "duration_s": args.duration, "rounds": args.rounds,
                           "cpus": os.cpu_count(), "load_before": load_average(), "servers": {}}
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
                    results[s.name].append(measure(s, names, args.duration, args.generators, args.window))
            if dnsmasq and not args.no_saturation_check:
                doc["saturation"] = saturation(servers[-1], names, args.duration, args.generators, args.window,
                                               args.rounds)
        finally:
            for s in servers:
                s.stop()
    doc["load_after"] = load_average()
    for name, rounds in results.items():
        doc["servers"][name] = summarize(rounds)
    add_ratios(doc["servers"])
    if "dnsmasq" in doc["servers"]:
        cp = doc["servers"]["kuma-cp"]
        doc["ratio_to_dnsmasq"] = cp["answers_ratio_to_dnsmasq"]
        doc["cpu_per_answer_ratio_to_dnsmasq"] = cp["cpu_per_answer_ratio_to_dnsmasq"]
        doc["target"] = "answers/s ratio >= 1.0 and CPU per answer ratio < 1.0, zero loss"
        doc["verdict"] = "PASS" if (doc["ratio_to_dnsmasq"] >= 1.0 and doc["cpu_per_answer_ratio_to_dnsmasq"] < 1.0
                                    and cp["lost"] + cp["half_load_lost"] == 0) else "MISS"
    print(json.dumps(doc, indent=2, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))
    if not args.json_only:
        print()
        print(table(doc))
        if "saturation" in doc:
            print(saturation_line(doc["saturation"]))
        print(load_line(doc))
        if "verdict" in doc:
            print(f"kuma-cp / dnsmasq: answers/s x{doc['ratio_to_dnsmasq']:.2f}, CPU per answer "
                  f"x{doc['cpu_per_answer_ratio_to_dnsmasq']:.2f} ({doc['target']}): {doc['verdict']}")


if __name__ == "__main__":
    main()
