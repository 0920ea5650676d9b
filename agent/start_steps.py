"""The steps of starting Envoy that kuma-dp's head start (agent/head_start.py) and its agent (agent/run.py)
share: the local checks of kuma-dp's inputs, the bootstrap file, the admin port, an Envoy left behind, and
the first Envoy, spawned before its bootstrap exists and handed it over a pipe (agent/envoy/bootstrap_pipe.py).

Light on purpose, as the head start is: no asyncio, no grpc (tests/unit/test_agent_startup_imports.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import access_log_pipe, dataplane, ports, rundir
from agent.bootstrap_client import CpAddress
from agent.config import EXIT_FAILURE, EXIT_USAGE, DpConfig
from agent.envoy.binary import EnvoyBinaryError, find_envoy
from agent.envoy.bootstrap_pipe import BootstrapPipe
from agent.envoy.options import EnvoyOptions
from agent.notify import child_environment
from agent.proc import Child, process_is, spawn
from kuma_shared.access_logs import access_log_pipe as access_log_path

log = logging.getLogger("kuma-dp.run")


class Fatal(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


@dataclass
class Inputs:
    definition: dataplane.Definition
    token: str
    ca_pem: bytes
    ca_source: str
    binary: Path
    cp: CpAddress


def read_token(cfg: DpConfig, definition: dataplane.Definition) -> str:
    command = ("kumactl generate zone-token --zone ZONE --scope ingress" if definition.proxy_type == "ingress"
               else f"kumactl generate dataplane-token --mesh {definition.mesh} --name {definition.name}")
    fix = f"generate one with: {command} > TOKEN_FILE, then pass --dataplane-token-file TOKEN_FILE"
    if cfg.token:
        return cfg.token.strip()
    if not cfg.token_file:
        raise Fatal(f"no dataplane token: {fix}", EXIT_USAGE)
    path = cfg.token_file
    try:
        token = Path(path).read_text().strip()
    except FileNotFoundError:
        raise Fatal(f"--dataplane-token-file {path}: no such file; {fix}", EXIT_USAGE) from None
    except PermissionError:
        raise Fatal(f"--dataplane-token-file {path}: permission denied (kuma-dp runs as uid {os.getuid()})",
                    EXIT_USAGE) from None
    except (OSError, UnicodeDecodeError) as e:
        raise Fatal(f"--dataplane-token-file {path}: cannot read it: {getattr(e, 'strerror', None) or e}",
                    EXIT_USAGE) from None
    if not token:
        raise Fatal(f"--dataplane-token-file {path} is empty; {fix}", EXIT_USAGE)
    return token


def read_ca(cfg: DpConfig) -> tuple[bytes, str]:
    if cfg.ca_cert:
        pem, source = cfg.ca_cert.encode(), "$KUMA_CONTROL_PLANE_CA_CERT"
    elif cfg.ca_cert_file:
        source = f"--ca-cert-file {cfg.ca_cert_file}"
        try:
            pem = Path(cfg.ca_cert_file).read_bytes()
        except FileNotFoundError:
            raise Fatal(f"{source}: no such file (it is the control plane's <workDir>/tls/ca.crt)",
                        EXIT_USAGE) from None
        except PermissionError:
            raise Fatal(f"{source}: permission denied (kuma-dp runs as uid {os.getuid()})", EXIT_USAGE) from None
        except OSError as e:
            raise Fatal(f"{source}: cannot read it: {e.strerror or e}", EXIT_USAGE) from None
    else:
        raise Fatal("no CA certificate for the control plane: pass --ca-cert-file with the control plane's "
                    "<workDir>/tls/ca.crt (the dp-server speaks TLS only)", EXIT_USAGE)
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise Fatal(f"{source}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)", EXIT_USAGE)
    import ssl  # ~6 ms: loaded once Envoy is spawned (the call needs it next anyway)

    try:
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as e:
        raise Fatal(f"{source}: not a usable CA certificate: {e}", EXIT_USAGE) from None
    return pem, source


def check_cp_and_binary(cfg: DpConfig) -> tuple[CpAddress, Path]:
    """What Envoy's early spawn needs checked first: the control plane's address and the Envoy binary."""
    try:
        cp = CpAddress.parse(cfg.cp_address)
    except ValueError as e:
        raise Fatal(str(e), EXIT_USAGE) from None
    try:
        binary = find_envoy(cfg.binary_path)
    except EnvoyBinaryError as e:
        raise Fatal(str(e), EXIT_USAGE) from None
    return cp, binary


def load_definition(cfg: DpConfig) -> dataplane.Definition:
    """The definition: read, templated, parsed (its full validation is the control plane's, or the bootstrap
    worker's)."""
    try:
        definition = dataplane.load(cfg)
    except dataplane.DefinitionError as e:
        raise Fatal(str(e), EXIT_USAGE) from None
    for warning in definition.warnings:
        log.warning(warning)
    if definition.proxy_type == "ingress" and cfg.dns_enabled:
        raise Fatal(f"{definition.source} is a ZoneIngress and DNS is enabled: a zone ingress runs no DNS stub "
                    "(run it as kuma-dp@NAME, or set KUMA_DNS_ENABLED=false)", EXIT_USAGE)
    return definition


def claim_admin_port(port: int, fixed: bool, key: str) -> int:
    """The admin port to start Envoy on: `port`, free when chosen; if something took it meanwhile, another
    (unless it was given)."""
    if fixed or ports.is_free(port):
        return port
    new = ports.pick(f"admin:{key}:{time.time()}", ports.ADMIN_RANGE)
    log.warning("Envoy admin port taken; using another", extra={"old": port, "new": new})
    return new


def write_bootstrap(runtime: rundir.RuntimeDir, bootstrap: dict[str, Any], admin_port: int) -> bytes:
    """The bootstrap file Envoy starts from, with its admin address (returned as written); the old admin
    address file removed (Envoy writes the new one once it listens)."""
    bootstrap.setdefault("admin", {}).setdefault("address", {}).setdefault("socket_address", {}).update(
        {"address": "127.0.0.1", "port_value": admin_port})
    data = json.dumps(bootstrap, indent=1).encode()
    runtime.write_private(rundir.BOOTSTRAP, data)
    with contextlib.suppress(OSError):
        runtime.file(rundir.ADMIN_ADDRESS).unlink()
    return data


def envoy_options(cfg: DpConfig, binary: Path, runtime: rundir.RuntimeDir) -> EnvoyOptions:
    return EnvoyOptions(binary=binary, bootstrap_file=runtime.file(rundir.BOOTSTRAP),
                        admin_address_file=runtime.file(rundir.ADMIN_ADDRESS),
                        concurrency=cfg.effective_concurrency, drain_time=cfg.drain_time,
                        log_level=cfg.effective_envoy_log_level, component_log_level=cfg.envoy_component_log_level)


def envoy_started_status(pid: int) -> str:
    return f"Envoy started (pid {pid}); waiting for it to get live"


def kill_stale_envoy(runtime: rundir.RuntimeDir, options: EnvoyOptions) -> None:
    """An Envoy left by a kuma-dp that died before PR_SET_PDEATHSIG took hold: ours by its admin address path,
    which every Envoy of this runtime directory has on its command line (the first one reads its bootstrap
    from a pipe, not from the bootstrap file)."""
    try:
        pid = int(runtime.file(rundir.ENVOY_PID).read_text().strip())
    except (OSError, ValueError):
        return
    p = process_is(pid, str(options.admin_address_file))
    if p is not None:
        log.warning("killing an Envoy left behind by a previous kuma-dp", extra={"pid": pid})
        with contextlib.suppress(Exception):
            p.kill()
            p.wait(5)


def create_access_log_pipe(name: str, mesh: str) -> access_log_pipe.Pipe | None:
    """MeshAccessLog's Tcp backend pipe, before Envoy starts; None (and a warning) when it cannot be made."""
    path = access_log_path(name, mesh)
    try:
        return access_log_pipe.create(path)
    except OSError as e:
        log.warning("could not create the access log pipe: MeshAccessLog Tcp backends will not reach their "
                    "address from this dataplane", extra={"path": path, "error": str(e)})
        return None


# --- the first Envoy, spawned before its bootstrap exists -----------------------------------------------------

@dataclass
class WaitingEnvoy:
    """An Envoy spawned with `-c /dev/fd/N`: it initialises, then reads its bootstrap from `pipe`."""

    child: Child
    pipe: BootstrapPipe


def spawn_envoy(options: EnvoyOptions, child_env: dict[str, str], pipe: BootstrapPipe | None = None) -> Child:
    """Envoy as kuma-dp runs every one: its output on a pipe (the supervisor passes it on), in the runtime
    directory, in its own process group, dying with kuma-dp; its bootstrap from the file, or from `pipe`."""
    return spawn(options.argv(config_path=pipe.config_path if pipe else None), env=child_env,
                 cwd=str(options.bootstrap_file.parent), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                 pass_fds=(pipe.read_fd,) if pipe else ())


def spawn_waiting_envoy(options: EnvoyOptions, env: dict[str, str]) -> WaitingEnvoy:
    """Envoy reading its bootstrap from a pipe that `deliver` fills."""
    pipe = BootstrapPipe()
    try:
        child = spawn_envoy(options, child_environment(env), pipe)
    except BaseException:
        pipe.close()
        raise
    pipe.spawned()
    return WaitingEnvoy(child, pipe)


def deliver(waiting: WaitingEnvoy, runtime: rundir.RuntimeDir, bootstrap: dict[str, Any], admin_port: int) -> bool:
    """The bootstrap file written (restarts spawn from it) and the same bytes handed to the waiting Envoy.
    False: it could not take them (gone, or a bootstrap too big for the pipe); it is killed, and the caller
    spawns an Envoy from the file instead."""
    data = write_bootstrap(runtime, bootstrap, admin_port)
    if waiting.pipe.deliver(data):
        return True
    log.warning("the early Envoy could not take its bootstrap; starting another from the bootstrap file",
                extra={"pid": waiting.child.pid, "bytes": len(data), "exit": waiting.child.proc.poll()})
    abandon(waiting)
    return False


def abandon(waiting: WaitingEnvoy) -> None:
    """Kill a waiting Envoy (kuma-dp stops or failed before its bootstrap), then close its pipe: it never
    reads a bootstrap."""
    if waiting.child.proc.poll() is None:
        waiting.child.kill_tree()
    with contextlib.suppress(OSError):
        waiting.child.proc.wait(5)
    if waiting.child.proc.stdout is not None:
        waiting.child.proc.stdout.close()
    waiting.pipe.close()
