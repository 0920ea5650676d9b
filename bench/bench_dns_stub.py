"""The kuma-dp DNS stub on loopback: `.mesh` answers against dnsmasq serving the same names, and forwarded
(cached) answers against dnsmasq forwarding to the same upstream, in the same run.

The method and the load generators are bench/bench_dns.py's (imported from it): for each server, the answers
per second N generator processes keep with 64 queries in flight each (closed loop; the figure counts only with
zero loss; `--generators`, checked by running dnsmasq with one more), the server's CPU time per answer over
that window, then latency percentiles at a steady half of that rate (open loop); rounds alternate between
servers and the median round is reported, with answers/s and CPU per answer as ratios to dnsmasq in the same
run (steadier than either figure when other work shares the machine's two cores) and the load average.
The stub runs exactly as kuma-dp runs it: the DNS worker's `serve()` (agent/dns/worker.py)
in a process of its own, on sockets bound by its parent, its zone built from a VIP map in the control plane's
shape (same services and names as bench/bench_dns.py). kuma-cp's authoritative server is measured alongside for
reference (`--no-cp` leaves it out).

Forwarding (`--no-forwarding` leaves it out): a dnsmasq "upstream" serves `name-N.example` on another port;
the stub (with that upstream) and a second dnsmasq (`--server=127.0.0.1#UPSTREAM`, its cache on) both forward
and cache; the load asks for those names, so after the first round trip both answer from their caches.

    .venv/bin/python bench/bench_dns_stub.py [--services 100] [--duration 5] [--rounds 3] [--generators 2] [--json-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import bench_dns as base  # noqa: E402 - after the sys.path line above

STUB_DOMAIN = "mesh"


def vip_map(services: int) -> dict[str, Any]:
    """The VIP map kuma-dp receives for these services (the control plane's own code builds it)."""
    from controlplane.dns.vips import MeshVips

    vips = {svc: f"127.240.{(i + 1) >> 8}.{(i + 1) & 255}" for i, svc in enumerate(base.service_names(services))}
    return MeshVips.build("default", vips, {}, STUB_DOMAIN).to_json()


def forward_names(count: int) -> dict[str, str]:
    return {f"name-{i}.example": f"192.0.2.{i % 250 + 1}" for i in range(count)}


# --- the stub, in its own process --------------------------------------------------------------------------


def serve_stub(port: int, services: int, upstream: str | None) -> None:
    """The DNS worker's serve(), on sockets bound here, until SIGTERM (prints its ready line)."""
    from agent.dns.server import bind
    from agent.dns.worker import serve

    udp, tcp = bind("127.0.0.1", port)
    payload = {"udpFd": udp.detach(), "tcpFd": tcp.detach(), "upstreams": [upstream] if upstream else [],
               "vips": vip_map(services), "domain": STUB_DOMAIN, "watch": None}
    asyncio.run(serve(payload))


def start_stub(services: int, tmp: Path, upstream_port: int | None = None, label: str = "kuma-dp stub") -> base.Server:
    port = base.free_port()
    argv = [sys.executable, __file__, "--serve-stub", "--port", str(port), "--services", str(services)]
    if upstream_port:
        argv += ["--upstream", f"127.0.0.1:{upstream_port}"]
    return base.Server(label, argv, port, ready_line=True, log=tmp / f"{label.replace(' ', '-')}.log")


def start_dnsmasq(binary: str, name: str, port: int, extra: list[str], tmp: Path) -> base.Server:
    """dnsmasq on 127.0.0.1:port with no config file, no resolv.conf, no /etc/hosts; plus `extra`."""
    argv = [binary, "--no-daemon", "--port", str(port), "--listen-address", "127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", "--conf-file=/dev/null", f"--pid-file={tmp / (name + '.pid')}", *extra]
    return base.Server(name, argv, port, ready_line=False, log=tmp / f"{name}.log")


# --- the run -----------------------------------------------------------------------------------------------


def run_part(servers: list[base.Server], names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    for _ in range(args.rounds):
        for s in servers:
            results[s.name].append(base.measure(s, names, args.duration, args.generators, args.window))
    out = {name: base.summarize(r) for name, r in results.items()}
    base.add_ratios(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=100, help="services (each has 2 names)")
    parser.add_argument("--forward-names", type=int, default=200, help="names the forwarding part asks for")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-cp", action="store_true", help="leave kuma-cp's authoritative server out")
    parser.add_argument("--no-forwarding", action="store_true", help="only the .mesh part")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install dnsmasq-base")
    parser.add_argument("--json-only", action="store_true")
    base.add_load_options(parser)
    parser.add_argument("--serve-stub", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_stub:
        serve_stub(args.port, args.services, args.upstream)
        return

    dnsmasq = base.find_dnsmasq(install=not args.no_install)
    doc: dict[str, Any] = {"services": args.services, "generators": args.generators,
                           "window_per_generator": args.window, "duration_s": args.duration, "rounds": args.rounds,
                           "cpus": os.cpu_count(), "load_before": base.load_average()}
    if dnsmasq is None:
        doc["dnsmasq"] = "not available (not installed and apt-get install dnsmasq-base not possible)"
    the_map = vip_map(args.services)
    records = {name: the_map["vips"][svc] for name, svc in the_map["names"].items()}
    names = sorted(records)
    doc["names"] = len(names)
    with tempfile.TemporaryDirectory(prefix="bench-dns-stub-") as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)  # dnsmasq may read its hosts file as an unprivileged user
        servers: list[base.Server] = []
        try:
            servers.append(start_stub(args.services, tmp))
            if dnsmasq:
                servers.append(base.start_dnsmasq(dnsmasq, records, tmp))
            if not args.no_cp:
                servers.append(base.start_cp(args.services, tmp))
            doc["mesh"] = run_part(servers, names, args)
            if dnsmasq and not args.no_saturation_check:
                doc["saturation"] = base.saturation(servers[1], names, args.duration, args.generators, args.window,
                                                    args.rounds)
            for s in servers:
                s.stop()
            servers.clear()
            if dnsmasq and not args.no_forwarding:
                fnames = forward_names(args.forward_names)
                hosts = tmp / "example.hosts"
                hosts.write_text("".join(f"{ip} {n}\n" for n, ip in sorted(fnames.items())))
                os.chmod(hosts, 0o644)
                up_port = base.free_port()
                servers.append(start_dnsmasq(dnsmasq, "upstream", up_port, [
                    "--addn-hosts", str(hosts), "--local=/example/", "--local-ttl=300"], tmp))
                measured = [start_stub(args.services, tmp, up_port),
                            start_dnsmasq(dnsmasq, "dnsmasq", base.free_port(), [
                                f"--server=127.0.0.1#{up_port}", "--cache-size=10000"], tmp)]
                servers.extend(measured)
                doc["forwarding"] = run_part(measured, sorted(fnames), args)
        finally:
            for s in servers:
                s.stop()
    doc["load_after"] = base.load_average()
    for part, key in (("mesh", "ratio_to_dnsmasq"), ("forwarding", "forwarding_ratio_to_dnsmasq")):
        stub = doc.get(part, {}).get("kuma-dp stub", {})
        if "answers_ratio_to_dnsmasq" in stub:
            doc[key] = stub["answers_ratio_to_dnsmasq"]
            doc[key.replace("ratio_to", "cpu_per_answer_ratio_to")] = stub["cpu_per_answer_ratio_to_dnsmasq"]
    if "ratio_to_dnsmasq" in doc:
        stub = doc["mesh"]["kuma-dp stub"]
        doc["target"] = "answers/s ratio >= 1.0 and CPU per answer ratio < 1.0, zero loss"
        doc["verdict"] = "PASS" if (doc["ratio_to_dnsmasq"] >= 1.0 and doc["cpu_per_answer_ratio_to_dnsmasq"] < 1.0
                                    and stub["lost"] + stub["half_load_lost"] == 0) else "MISS"
    print(json.dumps(doc, indent=2, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))
    if not args.json_only:
        for part, title in (("mesh", ".mesh names (dnsmasq: the same names from a hosts file)"),
                            ("forwarding", "forwarded names, cached (dnsmasq: forwarding to the same upstream)")):
            if doc.get(part):
                print(f"\n{title}")
                print(base.table({"servers": doc[part]}))
        print()
        if "saturation" in doc:
            print(base.saturation_line(doc["saturation"]))
        print(base.load_line(doc))
        if "verdict" in doc:
            print(f".mesh, stub / dnsmasq: answers/s x{doc['ratio_to_dnsmasq']:.2f}, CPU per answer "
                  f"x{doc['cpu_per_answer_ratio_to_dnsmasq']:.2f} ({doc['target']}): {doc['verdict']}")


if __name__ == "__main__":
    main()
