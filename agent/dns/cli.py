"""`kuma-dp dns ...` (also `python -m agent.dns ...`; stdlib argparse, so it runs without kuma-dp's other
dependencies):

    kuma-dp dns configure [--dns-host-config auto] [--dns-listen ...] [--wait 30]
                                                          point the host's resolver at the running owner's stub
                                                          (as root, for a kuma-dp that is not: ExecStartPost=+)
    kuma-dp dns restore [--dns-state-dir DIR] [--force]   put the host's DNS back (the unit's ExecStopPost)
    kuma-dp dns status  [--dns-state-dir DIR]             who owns the stub, what was changed on the host
    kuma-dp dns serve   [--dns-listen ...] [--dns-upstream ...] [--dns-host-config ...] [--vips-file FILE]
                        [--cp-address URL --ca-cert-file F --mesh M --dataplane-token-file F]
                                                          the stub and host integration alone, without Envoy

`restore` refuses while a running kuma-dp owns the host's DNS (it restores by itself when it stops) unless
`--force`; with nothing to restore it says so and exits 0. `configure` and `serve` read the same KUMA_DNS_*
variables as `kuma-dp run`; `configure` does nothing when KUMA_DNS_ENABLED is false or the mode is none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .settings import (
    DEFAULT_LISTEN,
    DEFAULT_RESOLV_CONF,
    HOST_CONFIGS,
    default_state_dir,
    parse_listen,
    parse_upstreams,
)


def _state_dir(args: argparse.Namespace) -> Path:
    given = args.dns_state_dir or os.environ.get("KUMA_DNS_STATE_DIR")
    return Path(given) if given else default_state_dir()


def restore(args: argparse.Namespace) -> int:
    from .host import Host, HostDnsError, OwnerBusy, OwnerLock

    state_dir = _state_dir(args)
    lock = OwnerLock(state_dir)
    try:
        lock.acquire(create=False)
    except OwnerBusy as e:
        if not args.force:
            print(f"kuma-dp dns restore: the host's DNS belongs to a running kuma-dp ({e}); it restores it when it "
                  "stops (--force restores now anyway)", file=sys.stderr)
            return 1
    except OSError as e:
        print(f"kuma-dp dns restore: {state_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    try:
        text = Host(state_dir).restore(force=args.force)
    except HostDnsError as e:
        print(f"kuma-dp dns restore: {e}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    print(f"kuma-dp dns restore: {text}" if text else f"kuma-dp dns restore: nothing to restore ({state_dir})")
    return 0


def configure(args: argparse.Namespace) -> int:
    from .component import configure_for_owner
    from .host import Host, HostDnsError, HostPaths
    from .settings import parse_address, parse_bool

    try:
        enabled = parse_bool(os.environ.get("KUMA_DNS_ENABLED", "true"))
    except ValueError:
        enabled = True
    if not enabled or args.dns_host_config == "none":
        print("kuma-dp dns configure: nothing to do (KUMA_DNS_ENABLED is false, or the host config is none)")
        return 0
    host = Host(_state_dir(args), HostPaths(resolv_conf=Path(args.dns_resolv_conf)))
    try:
        text = configure_for_owner(host, args.dns_host_config, parse_address(args.dns_listen), wait=args.wait)
    except HostDnsError as e:
        print(f"kuma-dp dns configure: {e}", file=sys.stderr)
        return 1
    print(f"kuma-dp dns configure: {text}")
    return 0


def status(args: argparse.Namespace) -> int:
    from .host import HostState, OwnerBusy, OwnerLock

    state_dir = _state_dir(args)
    lock = OwnerLock(state_dir)
    owner: Any = None
    try:
        if lock.acquire(create=False):
            lock.release()
    except OwnerBusy as e:
        owner = e.pid or "unknown pid"
    except OSError:
        pass
    doc = HostState(state_dir).load()
    if doc and "original" in doc:
        doc = {**doc, "original": {k: v for k, v in doc["original"].items() if k != "content"}}
    print(json.dumps({"stateDir": str(state_dir), "owner": owner, "host": doc}, indent=1))
    return 0


def serve(args: argparse.Namespace) -> int:
    from kuma_shared import logs

    from .component import DnsError, DnsOptions, HostDns
    from .watch import WatchParams

    logs.setup(args.log_level, "text")
    upstreams = tuple(args.dns_upstream or ()) or parse_upstreams(os.environ.get("KUMA_DNS_UPSTREAM", ""))
    options = DnsOptions(listen=args.dns_listen, upstreams=upstreams,
                         host_config=args.dns_host_config, state_dir=args.dns_state_dir,
                         resolv_conf=args.dns_resolv_conf)
    vips = json.loads(Path(args.vips_file).read_text()) if args.vips_file else None
    watch = None
    if args.cp_address:
        if not (args.ca_cert_file and args.mesh and args.dataplane_token_file):
            print("kuma-dp dns serve: --cp-address needs --ca-cert-file, --mesh and --dataplane-token-file",
                  file=sys.stderr)
            return 2
        watch = WatchParams(args.cp_address, Path(args.ca_cert_file).read_bytes(), args.mesh,
                            Path(args.dataplane_token_file).read_text().strip())

    async def main() -> int:
        dns = HostDns(options, log_level=args.log_level)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            dns.prepare()
            await dns.start(vips, watch)
            logging.getLogger("kuma-dp.dns").info(dns.summary())
            print(json.dumps({"ready": dns.ready, "host": dns.configured, "recovered": dns.recovered}), flush=True)
            await stop.wait()
            return 0
        except DnsError as e:
            print(f"kuma-dp dns serve: {e.message}", file=sys.stderr)
            return e.exit_code
        finally:
            await dns.stop()

    return asyncio.run(main())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kuma-dp dns", description="the host's .mesh DNS stub and resolver setup")
    sub = p.add_subparsers(dest="command", required=True)
    state_help = "where the host's DNS backup and the owner lock are (default $STATE_DIRECTORY/dns, else " \
                 "/var/lib/kuma/kuma-dp/dns) [env KUMA_DNS_STATE_DIR]"
    c = sub.add_parser("configure", help="point the host's resolver at the running kuma-dp's stub (as root)")
    c.add_argument("--dns-host-config", default=os.environ.get("KUMA_DNS_HOST_CONFIG", "auto"), choices=HOST_CONFIGS)
    c.add_argument("--dns-listen", default=os.environ.get("KUMA_DNS_LISTEN", DEFAULT_LISTEN), type=parse_listen)
    c.add_argument("--dns-state-dir", default=os.environ.get("KUMA_DNS_STATE_DIR"), help=state_help)
    c.add_argument("--dns-resolv-conf", default=os.environ.get("KUMA_DNS_RESOLV_CONF", DEFAULT_RESOLV_CONF))
    c.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the owner's stub to answer")
    r = sub.add_parser("restore", help="put the host's DNS back as it was before kuma-dp changed it")
    r.add_argument("--dns-state-dir", help=state_help)
    r.add_argument("--force", action="store_true",
                   help="restore even while a kuma-dp owns it, or when the file changed since kuma-dp wrote it")
    s = sub.add_parser("status", help="who owns the host's DNS stub and what was changed (JSON)")
    s.add_argument("--dns-state-dir", help=state_help)
    v = sub.add_parser("serve", help="run the stub (and host integration) alone, without Envoy, until SIGTERM")
    v.add_argument("--dns-listen", default=os.environ.get("KUMA_DNS_LISTEN", DEFAULT_LISTEN), type=parse_listen)
    v.add_argument("--dns-upstream", action="append", type=lambda t: parse_upstreams(t)[0])
    v.add_argument("--dns-host-config", default=os.environ.get("KUMA_DNS_HOST_CONFIG", "none"), choices=HOST_CONFIGS)
    v.add_argument("--dns-state-dir", default=os.environ.get("KUMA_DNS_STATE_DIR"), help=state_help)
    v.add_argument("--dns-resolv-conf", default=os.environ.get("KUMA_DNS_RESOLV_CONF", DEFAULT_RESOLV_CONF))
    v.add_argument("--vips-file", help="the mesh's VIP map (JSON, as GET /meshes/{mesh}/vips answers)")
    v.add_argument("--cp-address", help="follow the VIP map from this dp-server (https://HOST:5678)")
    v.add_argument("--ca-cert-file")
    v.add_argument("--mesh")
    v.add_argument("--dataplane-token-file")
    v.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return {"configure": configure, "restore": restore, "status": status, "serve": serve}[args.command](args)
