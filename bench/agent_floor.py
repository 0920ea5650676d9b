"""The floor under kuma-dp's start (bench/bench_agent.py): the least a Python agent does before Envoy can
start. Start the interpreter, make the bootstrap call (/kuma.vm.dp.v1.Bootstrap/Get, TLS verified with the
CA), hand the bootstrap to Envoy, run with the arguments bench_agent.py gives "Envoy alone". Nothing else:
no input checks, no runtime directory, no readiness server, no retries, no supervision. bench_agent.py times
it from exec to Envoy ready, as it times kuma-dp and Envoy alone.

Three ways (MODE):
- `early`: as kuma-dp's head start does it: Envoy spawned first, reading its bootstrap from a pipe
  (`-c /dev/fd/N`, agent/envoy/bootstrap_pipe.py), then the call over h2 (agent/grpc_unary.py: ssl, a socket
  and h2, blocking), then the bootstrap written to the pipe; this process then waits for Envoy;
- `h2`: the call over h2, then the bootstrap written to a file and Envoy exec'd (kuma-dp's order before
  Envoy was spawned early);
- `grpcio`: the same on a grpcio channel, as kuma-dp made the call before the head start (and still does
  when the head start's call fails); grpcio's import loads asyncio and its Cython core.

    python bench/agent_floor.py MODE CP_TARGET CA_FILE REQUEST_FILE BOOTSTRAP_FILE ENVOY ADMIN_PORT

Envoy replaces this process (exec), or is its child (`early`), dying with it (PR_SET_PDEATHSIG, as kuma-dp's).
"""

from __future__ import annotations

import json
import os
import sys

METHOD = "/kuma.vm.dp.v1.Bootstrap/Get"  # agent/bootstrap_client.py
# Envoy's arguments, the same for "Envoy alone" in bench_agent.py.
ENVOY_ARGS = ["--disable-hot-restart", "--log-level", "warning", "--concurrency", "2", "--drain-time-s", "1"]


def main() -> None:
    mode, target, ca_file, request_file, bootstrap_file, envoy, admin_port = sys.argv[1:8]
    early = None
    if mode == "early":
        import subprocess

        from agent.pdeathsig import die_with_parent  # as kuma-dp: Envoy dies with this process when it is stopped

        read_fd, write_fd = os.pipe()
        early = subprocess.Popen([envoy, "-c", f"/dev/fd/{read_fd}", *ENVOY_ARGS], pass_fds=(read_fd,),
                                 preexec_fn=die_with_parent())
        os.close(read_fd)
    with open(ca_file, "rb") as f:
        ca_pem = f.read()
    with open(request_file, "rb") as f:
        request = f.read()
    if mode in ("h2", "early"):
        from agent.grpc_unary import call

        host, port = target.rsplit(":", 1)
        answer = json.loads(call(host, int(port), ca_pem, METHOD, request, timeout=10))
    else:
        import grpc

        with grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca_pem)) as channel:
            answer = json.loads(channel.unary_unary(METHOD)(request, timeout=10))
    bootstrap = answer["bootstrap"]
    bootstrap.setdefault("admin", {})["address"] = {"socket_address": {"address": "127.0.0.1",
                                                                       "port_value": int(admin_port)}}
    if early is not None:
        with os.fdopen(write_fd, "w") as pipe:
            json.dump(bootstrap, pipe)
        sys.exit(early.wait())
    with open(bootstrap_file, "w") as f:
        json.dump(bootstrap, f)
    os.execv(envoy, [envoy, "-c", bootstrap_file, *ENVOY_ARGS])


if __name__ == "__main__":
    main()
