"""kuma-dp's head start: what `kuma-dp run` does before its event loop exists, up to handing Envoy its bootstrap.

Why before the loop: on the way to Envoy's start, every import is time Envoy waits for. asyncio and kuma-dp's
asynchronous modules (supervisor, readiness, metrics, HTTP server) cost ~40 ms of imports here, and grpcio
~50 ms more; this phase loads none of them (tests/unit/test_agent_startup_imports.py keeps it so). They load
once Envoy runs, while it starts (bench/bench_agent.py measures both).

In order:
1. What Envoy's spawn needs: the Envoy binary, checked, and the private runtime directory (0700, locked per
   dataplane). A directory given (--runtime-dir, or systemd's RUNTIME_DIRECTORY) comes before the definition
   (read, templated, parsed); the default one is named after the dataplane, so after it. Bad input exits 2
   with a message naming the flag and the fix.
2. Envoy, spawned at once, reading its bootstrap from a pipe (agent/envoy/bootstrap_pipe.py): it spends most
   of its own start (~45 of ~70 ms) loading and initialising before it reads one, and does that now, beside
   kuma-dp's remaining steps, instead of after them. MeshAccessLog's pipe is made first.
3. The remaining checks (the token, the CA); with --dns-enabled the host's DNS stub is prepared (lock, crash
   recovery, its sockets); the readiness and metrics sockets bound (served once the loop runs); the Envoy
   admin port; Envoy's version (remembered, or the pre-started `envoy --version`).
4. The bootstrap call, once, blocking (agent/bootstrap_client.py over agent/grpc_unary.py). Any failure is
   left to the loop's path (agent/bootstrap_fetch.py), which asks again: with retries while the control plane
   is unreachable, and with the message that says what to fix when it refuses. The call has no side effects
   (controlplane/xds/bootstrap_service.py), so asking twice is safe.
5. With the answer, and no DNS stub to start first: the bootstrap file written and the same bytes handed to
   the waiting Envoy (agent/supervisor.py adopts it as its first Envoy). Otherwise the agent hands it over
   once it has the answer and the stub runs; an Envoy never handed one is killed when kuma-dp stops.

No bootstrap worker (agent/bootstrap_worker.py) runs here: when the call succeeds, the control plane validated
the definition with the same model to answer it, and the worker's imports (~150 ms of pydantic models) would
only take a core from Envoy's start. When it fails, the agent starts the worker for its field-by-field verdict
(a bad file fails fast while the control plane is away, and with every bad field named when it refuses).

A failure is kept (`HeadStart.failure`) and raised by the agent once its loop runs, so that it is reported
and everything made so far is cleaned up in one place (agent/run.py). Stop and forwarded signals are recorded
and replayed to the agent; a stop during a blocking wait (the call, `envoy --version`) ends the wait at once.
Signals are not forwarded to the waiting Envoy: it has no config to reload or dump yet.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import agent
from agent import access_log_pipe, dataplane, ports, prestart, rundir
from agent.bootstrap_client import BootstrapError, fetch_bootstrap_blocking
from agent.config import EXIT_USAGE, DpConfig
from agent.envoy import version_cache
from agent.envoy.binary import EnvoyBinaryError, EnvoyVersionError, parse_envoy_version
from agent.notify import Notifier, child_environment
from agent.proc import Child, adopt
from agent.start_steps import (
    Fatal,
    Inputs,
    WaitingEnvoy,
    abandon,
    check_cp_and_binary,
    claim_admin_port,
    create_access_log_pipe,
    deliver,
    envoy_options,
    envoy_started_status,
    kill_stale_envoy,
    load_definition,
    read_ca,
    read_token,
    spawn_envoy,
    spawn_waiting_envoy,
)

if TYPE_CHECKING:
    from agent.dns.component import HostDns  # DNS (agent/dns): imported only when --dns-enabled

log = logging.getLogger("kuma-dp.run")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)  # Envoy's, once it runs
VERSION_TIMEOUT = 30.0


class Interrupted(Exception):
    """A stop signal arrived during one of the head start's blocking waits."""


class Signals:
    """The signals that arrive before kuma-dp's event loop handles them, in order (the agent replays them).
    A stop signal during `interruptible()` also ends the wait there (Interrupted): the waits inside only read
    and write sockets and pipes, so leaving them half-way leaves nothing half-done."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self._interruptible = False

    def install(self) -> None:
        for sig in (*STOP_SIGNALS, *FORWARDED_SIGNALS):
            signal.signal(sig, self._record)

    def _record(self, sig: int, frame: FrameType | None) -> None:
        self.seen.append(sig)
        if self._interruptible and sig in STOP_SIGNALS:
            self._interruptible = False
            raise Interrupted

    @property
    def stopping(self) -> bool:
        return any(sig in STOP_SIGNALS for sig in self.seen)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.stopping:
            raise Interrupted
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


@dataclass
class HeadStart:
    """What kuma-dp did before its event loop, handed to the agent (agent/run.py)."""

    cfg: DpConfig
    env: dict[str, str]
    notifier: Notifier
    signals: Signals = field(default_factory=Signals)
    failure: BaseException | None = None  # raised by the agent, which reports it and cleans up
    definition: dataplane.Definition | None = None  # checked first: the runtime directory and Envoy need it
    inputs: Inputs | None = None  # once the token and CA are checked too
    runtime: rundir.RuntimeDir | None = None
    dns: HostDns | None = None  # DNS: prepared, started by the agent before Envoy
    readiness: socket.socket | None = None  # bound and listening; served by the agent
    readiness_address: str = ""
    metrics: socket.socket | None = None
    admin_port: int = 0
    admin_port_fixed: bool = False  # given by a flag or the definition: never moved
    envoy_version: str = ""
    request: dict[str, Any] = field(default_factory=dict)
    answer: dict[str, Any] | None = None  # None: the agent asks, with retries
    access_log_pipe: access_log_pipe.Pipe | None = None
    envoy: Child | None = None  # spawned here; the supervisor adopts it once it has its bootstrap
    waiting: WaitingEnvoy | None = None  # that Envoy, while it waits for its bootstrap (start_envoy)
    envoy_started_at: float = 0.0  # time.monotonic() of its bootstrap's delivery

    @property
    def label(self) -> str:
        d = self.definition
        return f"dataplane {d.name!r} (mesh {d.mesh})" if d is not None else "a dataplane"

    def status(self, text: str) -> None:
        log.info(text)
        self.notifier.status(text)


def begin(cfg: DpConfig, env: dict[str, str], notifier: Notifier) -> HeadStart:
    """Everything up to Envoy's bootstrap that needs no event loop; never raises (see `HeadStart.failure`)."""
    head = HeadStart(cfg, env, notifier)
    head.signals.install()
    try:
        prepare(head)
        if not head.signals.stopping:
            head.status(f"requesting the Envoy bootstrap for {head.label} from {cfg.cp_address}")
            head.answer = ask(head)
        if head.answer is not None and head.dns is None and not head.signals.stopping:
            start_envoy(head)
    except Interrupted:
        log.info("stop requested before the event loop", extra={"signal": signal.Signals(head.signals.seen[-1]).name})
    except Exception as e:  # kept for the agent, which reports it after cleaning up
        head.failure = e
    return head


def prepare(head: HeadStart) -> None:
    cfg = head.cfg
    cp, binary = check_cp_and_binary(cfg)
    try:
        given = rundir.fixed(cfg.runtime_dir, head.env)
        if given is not None:  # a flag's or systemd's: Envoy starts before the definition is even read
            claim_runtime_dir(head, given)
            spawn_early(head, binary)
        d = head.definition = load_definition(cfg)
        if given is None:  # named after the dataplane
            claim_runtime_dir(head, rundir.prepare(cfg.runtime_dir, d.mesh, d.name, env=head.env))
            spawn_early(head, binary)
    except rundir.RuntimeDirError as e:
        raise Fatal(str(e), EXIT_USAGE) from None  # and leave the directory alone: it may be in use
    runtime = head.runtime
    assert runtime is not None
    head.access_log_pipe = create_access_log_pipe(d.name, d.mesh)  # before Envoy reads a bootstrap naming it
    token = read_token(cfg, d)
    ca_pem, ca_source = read_ca(cfg)
    head.inputs = inputs = Inputs(d, token, ca_pem, ca_source, binary, cp)
    if cfg.dns_enabled:  # DNS: one owner per host; crash recovery and the stub's sockets before the bootstrap
        from agent.dns.component import DnsError, for_config

        try:
            head.dns = for_config(cfg, head.env)
            head.dns.prepare()
        except DnsError as e:
            raise Fatal(e.message, e.exit_code) from None
    bind_endpoints(head, f"{d.mesh}/{d.name}")
    if head.readiness_address:
        runtime.write_private(rundir.READINESS, f"{head.readiness_address}\n".encode())
    head.admin_port, head.admin_port_fixed = choose_admin_port(cfg, f"{d.mesh}/{d.name}", d, head.readiness_address)
    try:
        head.envoy_version = envoy_version_of(inputs.binary, head.env, head.signals)
    except EnvoyBinaryError as e:
        raise Fatal(f"{inputs.binary} is not a usable Envoy binary (--binary-path): {e}", EXIT_USAGE) from None
    log.info("starting", extra={"version": agent.version(), "dataplane": d.name, "mesh": d.mesh,
                                "proxy_type": d.proxy_type, "envoy": f"{inputs.binary} {head.envoy_version}",
                                "runtime_dir": runtime.path, "admin": f"127.0.0.1:{head.admin_port}",
                                "readiness": head.readiness_address or "off"})
    head.request = {"mesh": d.mesh, "name": d.name, "dataplaneToken": inputs.token, "adminPort": head.admin_port,
                    "adminAddress": "127.0.0.1", "dataplane": d.doc, "proxyType": d.proxy_type,
                    "version": {"kumaDp": agent.version(), "envoy": head.envoy_version}}
    if head.dns is not None:
        head.request["vipListeners"] = True  # DNS: this proxy owns the host's VIP:80 / VIP:port listeners


def claim_runtime_dir(head: HeadStart, runtime: rundir.RuntimeDir) -> None:
    """The runtime directory, locked: one kuma-dp per directory (before anything is written in it)."""
    runtime.lock(head.label)
    head.runtime = runtime


def spawn_early(head: HeadStart, binary: Path) -> None:
    """The first Envoy, spawned as soon as its runtime directory is ours: it loads and initialises while
    kuma-dp checks the rest and asks the control plane, then waits for its bootstrap on a pipe (start_envoy,
    or the agent's once it has the answer and, with --dns-enabled, the DNS stub runs)."""
    runtime = head.runtime
    assert runtime is not None
    options = envoy_options(head.cfg, binary, runtime)
    kill_stale_envoy(runtime, options)
    head.waiting = waiting = spawn_waiting_envoy(options, head.env)
    head.envoy = waiting.child
    runtime.write_private(rundir.ENVOY_PID, f"{waiting.child.pid}\n".encode())
    log.debug("Envoy spawned; it reads its bootstrap once kuma-dp has it", extra={"pid": waiting.child.pid})


def ask(head: HeadStart) -> dict[str, Any] | None:
    """The control plane's answer, or None: the agent asks again, with retries and the reason."""
    assert head.inputs is not None
    try:
        with head.signals.interruptible():
            return fetch_bootstrap_blocking(head.inputs.cp, head.inputs.ca_pem, head.request)
    except BootstrapError as e:
        log.debug("bootstrap call before the event loop failed; asking again on it",
                  extra={"status": e.code, "error": e.message})
        return None


def start_envoy(head: HeadStart) -> None:
    """Envoy on its way with the control plane's answer: the waiting one handed its bootstrap or, when it could
    not take it, one spawned from the bootstrap file. Used by the agent too (agent/run.py), once
    the answer and the DNS stub are in."""
    cfg, inputs, runtime, answer = head.cfg, head.inputs, head.runtime, head.answer
    assert inputs is not None and runtime is not None and answer is not None
    d = inputs.definition
    head.admin_port = claim_admin_port(head.admin_port, head.admin_port_fixed, f"{d.mesh}/{d.name}")
    waiting = head.waiting
    assert waiting is not None  # spawned by prepare()
    # Cleared only once handed over: should writing the bootstrap file fail, the agent still kills it.
    delivered = deliver(waiting, runtime, answer["bootstrap"], head.admin_port)
    head.waiting = None
    if not delivered:  # it was killed; the bootstrap file is written: start one from it
        options = envoy_options(cfg, inputs.binary, runtime)
        head.envoy = spawn_envoy(options, child_environment(head.env))
        runtime.write_private(rundir.ENVOY_PID, f"{head.envoy.pid}\n".encode())
    assert head.envoy is not None
    head.envoy_started_at = time.monotonic()  # the start timeout counts from here, not from the early spawn
    head.status(envoy_started_status(head.envoy.pid))


def drop_waiting_envoy(head: HeadStart) -> None:
    """The early Envoy killed, never handed a bootstrap (kuma-dp stops, or failed before the answer)."""
    if head.waiting is not None:
        abandon(head.waiting)
        head.waiting = head.envoy = None


# --- the head start's own steps ----------------------------------------------------------------------------

def envoy_version_of(binary: Path, env: dict[str, str], signals: Signals | None = None,
                     timeout: float = VERSION_TIMEOUT) -> str:
    """The binary's version: remembered (agent/envoy/version_cache.py), else `binary --version`, from the run
    kuma-dp pre-started when it was for this binary (prestart starts one only when the cache had no answer).
    A stop signal (`signals`) ends the wait."""
    started = prestart.take_version(str(binary))
    if started is None and (known := version_cache.lookup(str(binary), env)) is not None:
        return known
    proc = started or prestart.start_version(str(binary))
    try:
        with signals.interruptible() if signals is not None else contextlib.nullcontext():
            output = proc.communicate(timeout=timeout)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        raise EnvoyVersionError(f"{binary} --version did not answer within {timeout:g}s") from None
    finally:
        if proc.poll() is None:  # timed out, or kuma-dp was stopped meanwhile
            adopt(proc).kill_tree()
            proc.wait()
    if proc.returncode != 0:
        raise EnvoyVersionError(f"{binary} --version exited with status {proc.returncode}: {output.strip()[:500]}")
    version = parse_envoy_version(output)
    version_cache.remember(str(binary), version, env)
    return version


def bind_endpoints(head: HeadStart, key: str) -> None:
    """The readiness socket (a free port derived from `key` unless --readiness-port; 0: none) and the metrics
    socket (--metrics-port), bound now so that a port problem exits 2 before anything starts."""
    cfg = head.cfg
    if cfg.readiness_port != 0:
        try:
            head.readiness = (ports.bind_listener(f"readiness:{key}", ports.READINESS_RANGE)
                              if cfg.readiness_port is None else ports.listen("127.0.0.1", cfg.readiness_port))
        except (OSError, ports.NoFreePort) as e:
            raise Fatal(f"--readiness-port: {e}", EXIT_USAGE) from None
        host, port = head.readiness.getsockname()[:2]
        head.readiness_address = f"{host}:{port}"
    if cfg.metrics_port:
        try:
            head.metrics = ports.listen(cfg.metrics_address, cfg.metrics_port)
        except OSError as e:
            raise Fatal(f"--metrics-port: {e}", EXIT_USAGE) from None


def choose_admin_port(cfg: DpConfig, key: str, definition: dataplane.Definition,
                      readiness_address: str) -> tuple[int, bool]:
    """(Envoy's admin port, whether it was given: a flag or the definition, never moved)."""
    chosen = cfg.admin_port
    avoid = {int(readiness_address.rsplit(":", 1)[1])} if readiness_address else set()
    if chosen is not None and chosen.low == chosen.high:
        if not ports.is_free(chosen.low):
            raise Fatal(f"--admin-port {chosen.low} is taken on 127.0.0.1: choose another, or leave it unset "
                        "(kuma-dp then picks a free one)", EXIT_USAGE)
        return chosen.low, True
    if chosen is None and definition.admin_port is not None:
        if not ports.is_free(definition.admin_port):
            raise Fatal(f"networking.admin.port {definition.admin_port} is taken on 127.0.0.1: choose "
                        "another, or remove it (kuma-dp then picks a free one)", EXIT_USAGE)
        return definition.admin_port, True
    try:
        return ports.pick(f"admin:{key}", chosen or ports.ADMIN_RANGE, avoid=avoid), False
    except ports.NoFreePort as e:
        raise Fatal(f"--admin-port: {e}", EXIT_USAGE) from None


