"""`kuma-dp run`: the whole life of one dataplane, from where its head start left off.

1. Before this event loop exists (agent/head_start.py): the local checks (bad input exits 2 with a message
   naming the flag and the fix), the private runtime directory, the ports, Envoy's version, one bootstrap
   call and, with its answer, Envoy's spawn. Its failure is raised here, so that it is reported and cleaned
   up in one place; the signals it saw are replayed here. The control plane's answer settles the definition
   (it validated it with the same model); without one, the bootstrap worker's field-by-field check
   (agent/bootstrap_worker.py), running since kuma-dp's start, gives the verdict, taken here.
2. The bootstrap call, when the head start's one did not succeed, on this loop: it does not wait for the
   worker's verdict. That is safe because the bootstrap RPC has no side effects
   (controlplane/xds/bootstrap_service.py only authenticates, validates the definition with the same model
   and renders; the Dataplane is registered later, on Envoy's xDS stream), and the control plane refuses an
   invalid definition itself. Retried with backoff and a `STATUS=` line while the control plane is
   unreachable; a refusal (token, CA, Dataplane) exits 1 with the control plane's reason, unless the worker
   finds the definition invalid: then its field-by-field message wins (exit 2), as does a verdict of
   "invalid" that arrives while the control plane is unreachable (no endless retries for a bad file).
   Once it answers, the worker is stopped: the answer settles the definition.
3. Envoy, supervised (agent/supervisor.py): the head start's, adopted, or spawned here once the bootstrap
   answer is in (and the DNS stub started, with --dns-enabled).
   `READY=1` (and 200 on /ready) once it is live with its listeners initialised.
   Watchdog pings; status lines as the control plane connection comes and goes.
4. SIGTERM / SIGINT: readiness fails, Envoy drains its inbound listeners for `--drain-time`, then Envoy and
   kuma-dp exit 0. A second signal stops Envoy at once (exit 128+signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import agent
from agent import prestart, rundir
from agent.access_logs import AccessLogStreamer
from agent.bootstrap import BootstrapFailed, BootstrapWorker
from agent.bootstrap_fetch import Retry, fetch_with_retries
from agent.config import EXIT_FAILURE, EXIT_OK, DpConfig
from agent.cp_channel import CpChannel
from agent.envoy.admin import AdminClient, AdminError
from agent.head_start import STOP_SIGNALS, HeadStart, drop_waiting_envoy, start_envoy
from agent.httpd import serve
from agent.metrics import CONTENT_TYPE, DpMetrics
from agent.metrics_watch import MeshMetricServer
from agent.notify import Notifier, child_environment
from agent.proc import Child
from agent.readiness import DpState, Monitor, envoy_hung
from agent.start_steps import (
    Fatal,
    Inputs,
    claim_admin_port,
    envoy_options,
    envoy_started_status,
    write_bootstrap,
)
from agent.supervisor import EnvoyFailure, Supervisor, describe_exit

if TYPE_CHECKING:
    from agent.dns.component import HostDns  # DNS (agent/dns): imported only when --dns-enabled

log = logging.getLogger("kuma-dp.run")


@dataclass
class Agent:
    cfg: DpConfig
    env: dict[str, str]
    notifier: Notifier
    head: HeadStart  # what kuma-dp did before this loop (agent/head_start.py)
    state: DpState = field(default_factory=DpState)
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    urgent: asyncio.Event = field(default_factory=asyncio.Event)
    signals_seen: list[int] = field(default_factory=list)
    supervisor: Supervisor | None = None
    admin: AdminClient | None = None
    runtime: rundir.RuntimeDir | None = None
    servers: list[asyncio.Server] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)  # cancelled on close
    cleanups: list[asyncio.Task[Any]] = field(default_factory=list)  # awaited on close
    monitor: Monitor | None = None
    admin_port_fixed: bool = False
    readiness_address: str = ""
    dns: HostDns | None = None  # DNS: the host's .mesh stub, with --dns-enabled
    access_logs: AccessLogStreamer | None = None  # MeshAccessLog's Tcp backend: the pipe Envoy writes to
    cp_channel: CpChannel | None = None  # the MeshMetric follow's grpcio channel (connected after the spawn)
    validation: asyncio.Task[None] | None = None  # the bootstrap worker's verdict on the definition
    # Set when kuma-dp reports Envoy ready (READY=1): what waits for it no longer delays that (agent/metrics_watch.py)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.metrics = DpMetrics(self.state)
        # MeshMetric: the Prometheus backends' listeners, following the control plane (agent/metrics_watch.py)
        self.mesh_metric = MeshMetricServer(render=lambda policy: self.metrics.merged(self.admin, policy),
                                            cert_path=self.cfg.metrics_cert_path, key_path=self.cfg.metrics_key_path)

    # --- status --------------------------------------------------------------------------------------

    def status(self, text: str, level: int = logging.INFO, **extra: Any) -> None:
        log.log(level, text, extra=extra)
        self.notifier.status(text)

    # --- signals -------------------------------------------------------------------------------------

    def on_signal(self, sig: int) -> None:
        self.signals_seen.append(sig)
        name = signal.Signals(sig).name
        if not self.stop_requested.is_set():
            log.info("stop requested", extra={"signal": name})
            self.stop_requested.set()
        else:
            log.warning("second stop signal: stopping Envoy now", extra={"signal": name})
            self.urgent.set()
            if self.supervisor is not None:
                self.supervisor.kill_now()

    def forward(self, sig: int) -> None:
        if self.supervisor is not None:
            log.info("forwarding signal to Envoy", extra={"signal": signal.Signals(sig).name})
            self.supervisor.forward(sig)

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            loop.add_signal_handler(sig, self.forward, sig)

    # --- endpoints -----------------------------------------------------------------------------------

    async def _ready(self) -> tuple[int, str, bytes]:
        ok, reason = self.state.ready()
        return (200 if ok else 503), "text/plain", (reason + "\n").encode()

    async def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, await self.metrics.merged(self.admin)

    async def serve_endpoints(self) -> None:
        """Serve the sockets the head start bound (agent/head_start.py)."""
        head = self.head
        if head.readiness is not None:
            self.readiness_address = head.readiness_address
            self.servers.append(await serve(head.readiness, {"/ready": self._ready, "/metrics": self._metrics}))
        if head.metrics is not None:
            self.servers.append(await serve(head.metrics, {"/metrics": self._metrics, "/": self._metrics}))

    # --- the run --------------------------------------------------------------------------------------

    async def run(self) -> int:
        self.install_signals()
        head = self.head
        for sig in head.signals.seen:  # those that came before this loop, in order
            (self.on_signal if sig in STOP_SIGNALS else self.forward)(sig)
        self.runtime, self.dns = head.runtime, head.dns  # made so far: cleaned up by close()
        if head.failure is not None:
            for sock in (head.readiness, head.metrics):
                if sock is not None:
                    sock.close()
            drop_waiting_envoy(head)
            if head.envoy is not None:  # handed its bootstrap, then something failed
                head.envoy.kill_tree()
            if head.access_log_pipe is not None:  # made just before the spawn
                head.access_log_pipe.close()
            raise head.failure
        await self.serve_endpoints()
        assert head.inputs is not None  # set before any wait a stop can interrupt
        inputs, cfg = head.inputs, self.cfg
        d = inputs.definition
        label = head.label
        self.state.phase = "bootstrapping"
        self.cp_channel = CpChannel(inputs.cp, inputs.ca_pem)
        answer = head.answer  # the control plane's: it validated the definition with the same model
        validation = None
        # Without an answer the worker's verdict counts (no definition given: nothing to check).
        if answer is None and d.doc is not None:
            payload = prestart.worker_payload(d, cfg.log_level, cfg.log_format)
            worker = BootstrapWorker.start(child_environment(self.env))
            self.validation = validation = asyncio.create_task(worker.validate(payload))
            self.state.definition_pending = True  # not ready (READY=1, /ready) before the verdict
            validation.add_done_callback(self._on_verdict)
            # Not awaited on the way to Envoy: it need not wait for the worker's interpreter to shut down.
            self.cleanups.append(asyncio.create_task(retire_worker(worker, validation)))
        if not head.request:  # stopped before the request was ready
            return self._stopped_exit()
        self.admin = AdminClient("127.0.0.1", head.admin_port)
        self.admin_port_fixed = head.admin_port_fixed
        if answer is None:
            answer = await self._bootstrap(validation, inputs, head.request)
            if answer is None:
                return self._stopped_exit()
            self._settled_by_the_control_plane()
        return await self._serve(answer, inputs, head.envoy_version, label)

    def _settled_by_the_control_plane(self) -> None:
        """The control plane answered the bootstrap call, so it validated the definition with the same model:
        the worker's verdict cannot add to that, and waiting for it would hold READY=1 back (its imports take
        ~150 ms) while it takes a core from Envoy's start. Cancelled; the worker is stopped by retire_worker."""
        validation = self.validation
        if validation is not None and not validation.done():
            validation.cancel()
            log.debug("the control plane accepted the definition; the bootstrap worker's check is not needed")
        self.state.definition_pending = False

    async def _bootstrap(self, validation: asyncio.Task[None] | None, inputs: Inputs,
                         request: dict[str, Any]) -> dict[str, Any] | None:
        """The control plane's answer (the worker's verdict may still be pending); None when stopped meanwhile.

        Every ordering of (verdict, answer, stop): a stop wins (None); an invalid verdict ends the call and its
        retries at once (exit 2, the worker's message); a refusal waits for a pending verdict, and an invalid
        one wins over it (it names every bad field); an answer is returned at once."""
        cfg = self.cfg

        def on_status(message: dict[str, Any]) -> None:
            self.metrics.bootstrap_attempts.inc()
            self.status(message["status"], logging.WARNING)
            self.notifier.extend_timeout(float(message.get("retryIn", 0)) + 15.0)

        fetch = asyncio.create_task(fetch_with_retries(inputs.cp, inputs.ca_pem, inputs.ca_source, request,
                                                       Retry(cfg.retry_backoff, cfg.retry_max_duration), on_status))
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            while not stop.done():
                failure = self._verdict_failure()
                if failure is not None:
                    raise failure
                verdict = {validation} if validation is not None and not validation.done() else set()
                if fetch.done() and (fetch.exception() is None or not verdict):
                    break
                # The answer still to come, or a refusal with the verdict still to come.
                await asyncio.wait({stop, *verdict} | (set() if fetch.done() else {fetch}),
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, BootstrapFailed):
                    await fetch
        if stop.done() and not stop.cancelled():
            if fetch.done() and not fetch.cancelled():
                fetch.exception()  # retrieved: stopping wins over it
            log.info("stopped while waiting for the bootstrap")
            return None
        self.metrics.bootstrap_attempts.inc()
        try:
            return fetch.result()
        except BootstrapFailed as e:
            raise Fatal(e.message, e.exit_code) from None

    def _on_verdict(self, validation: asyncio.Task[None]) -> None:
        if not validation.cancelled() and validation.exception() is None:
            self.state.definition_pending = False
            log.debug("the bootstrap worker found the definition valid")

    def _verdict_failure(self) -> Fatal | None:
        """The worker's verdict as the error kuma-dp exits with; None while pending, or when it is valid."""
        validation = self.validation
        if validation is None or not validation.done() or validation.cancelled():
            return None
        e = validation.exception()
        if e is None:
            return None
        if isinstance(e, BootstrapFailed):
            return Fatal(e.message, e.exit_code)
        return Fatal(f"the bootstrap worker failed: {e}")

    def _stopped_exit(self) -> int:
        return 128 + self.signals_seen[-1] if self.urgent.is_set() and self.signals_seen else EXIT_OK

    async def _serve(self, answer: dict[str, Any], inputs: Inputs, envoy_ver: str, label: str) -> int:
        cfg, runtime, admin = self.cfg, self.runtime, self.admin
        assert runtime is not None and admin is not None
        head, d = self.head, inputs.definition
        bootstrap = answer["bootstrap"]
        options = envoy_options(cfg, inputs.binary, runtime)
        self.start_access_logs()
        assert head.envoy is not None  # the head start spawned it (waiting for its bootstrap, or handed it)

        def before_start() -> None:
            admin.port = claim_admin_port(admin.port, self.admin_port_fixed, f"{d.mesh}/{d.name}")
            write_bootstrap(runtime, bootstrap, admin.port)

        def on_started(child: Child, generation: int) -> None:
            self.state.envoy_started(child.pid, generation)
            if generation > 1:
                self.metrics.envoy_restarts.inc()
            if child is not head.envoy:  # the first Envoy was announced when it was handed its bootstrap
                runtime.write_private(rundir.ENVOY_PID, f"{child.pid}\n".encode())
                self.status(envoy_started_status(child.pid))
            monitor.wake.set()

        def on_exited(code: int, ran: float, restart_in: float | None, failures: int) -> None:
            self.state.envoy_gone()
            if restart_in is not None:
                hang = self.supervisor.hang_reason if self.supervisor is not None else None
                how = f"was hung ({hang}) and killed" if hang else describe_exit(code)
                self.status(f"Envoy {how} after {ran:.1f}s; restarting in {restart_in:.1f}s "
                            f"(failure {failures} of at most {cfg.envoy_max_restarts})", logging.WARNING)

        self.supervisor = supervisor = Supervisor(
            options, env=child_environment(self.env), max_restarts=cfg.envoy_max_restarts,
            backoff=cfg.envoy_restart_backoff, before_start=before_start, on_started=on_started,
            on_exited=on_exited, was_live=lambda generation: self.state.live_generation == generation,
            hung=lambda generation, started_at: envoy_hung(self.state, generation, started_at,
                                                           cfg.envoy_start_timeout, cfg.envoy_liveness_timeout))
        self.metrics.info.info({"version": agent.__version__, "envoy_version": envoy_ver,
                                "mesh": inputs.definition.mesh, "dataplane": inputs.definition.name,
                                "proxy_type": inputs.definition.proxy_type})

        ready_generation = [0]

        def on_locally_ready() -> None:
            if self.state.draining or ready_generation[0] == self.state.envoy_generation:
                return
            ready_generation[0] = self.state.envoy_generation
            text = self._running_status()
            log.info("Envoy live", extra={"envoy_pid": self.state.envoy_pid, "admin": f"127.0.0.1:{admin.port}",
                                          "readiness": self.readiness_address or "off"})
            if not self.notifier.ready_sent:
                self.notifier.ready(text)
                self.notifier.ready_sent = True
            else:
                self.notifier.status(text)
            self.ready.set()

        def on_cp_change(connected: bool, first: bool) -> None:
            if self.state.draining:
                return
            if connected and not self.state.locally_ready:
                self.status(f"Envoy (pid {self.state.envoy_pid}) connected to the control plane; waiting for it "
                            "to get live")
            elif connected:
                self.status(self._running_status() if first else f"{self._running_status()} (reconnected)")
            else:
                self.metrics.cp_disconnects.inc()
                self.status(f"Envoy (pid {self.state.envoy_pid}) serves with its last config; connection to the "
                            f"control plane at {cfg.cp_address} lost, reconnecting", logging.WARNING)

        self.monitor = monitor = Monitor(self.state, lambda: self.admin, on_locally_ready=on_locally_ready,
                                         on_cp_change=on_cp_change, liveness_timeout=cfg.envoy_liveness_timeout)
        if head.waiting is None:  # handed its bootstrap before this loop: supervised from here on
            supervisor.adopt(head.envoy, head.envoy_started_at)
        if self.stop_requested.is_set():
            return self._stopped_exit()  # a waiting Envoy is killed by close()
        if self.dns is not None:  # DNS: serve .mesh (its map came with the bootstrap), then point the host at it
            from agent.dns.component import DnsError
            from agent.dns.watch import WatchParams

            self.dns.on_status = self.notifier.status  # the guard logs; this puts it in `systemctl status` too
            try:
                await self.dns.start(answer.get("vips"), WatchParams(cfg.cp_address, inputs.ca_pem,
                                                                     inputs.definition.mesh, inputs.token,
                                                                     inputs.definition.name))
            except DnsError as e:
                raise Fatal(e.message, e.exit_code) from None
            log.info(self.dns.summary())
        self.state.phase = "running"
        if head.waiting is not None:  # waiting for the answer (the loop's retries) or for the DNS stub
            head.answer = answer
            start_envoy(head)
            admin.port = head.admin_port
            assert head.envoy is not None
            supervisor.adopt(head.envoy, head.envoy_started_at)
        self.tasks.append(asyncio.create_task(monitor.run()))
        if cfg.proxy_type == "dataplane":
            from agent.metrics_watch import follow

            self.tasks.append(asyncio.create_task(follow(
                self.mesh_metric, cfg.cp_address, inputs.ca_pem, inputs.definition.mesh, inputs.definition.name,
                inputs.token, channel=self.cp_channel, ready=self.ready)))
        if self.notifier.watchdog_interval:
            self.tasks.append(asyncio.create_task(self._watchdog(self.notifier.watchdog_interval)))
        supervise = asyncio.create_task(supervisor.run())
        stop = asyncio.create_task(self.stop_requested.wait())
        await asyncio.wait({supervise, stop}, return_when=asyncio.FIRST_COMPLETED)
        if supervise.done() and not self.stop_requested.is_set():
            try:
                supervise.result()
            except EnvoyFailure as e:
                self.state.envoy_gone()
                stop.cancel()
                tail = "\n".join(e.tail[-10:])
                raise Fatal(f"{e.message}" + (f"\n--- Envoy's last lines ---\n{tail}" if tail else "")) from None
            stop.cancel()
            return EXIT_FAILURE  # pragma: no cover - run() returns only when stopping
        await self._drain(supervise)
        return self._stopped_exit()

    def _running_status(self) -> str:
        s = self.state
        cp = "connected to the control plane" if s.cp_connected else "waiting for the control plane connection"
        admin = f"admin 127.0.0.1:{self.admin.port}" if self.admin else ""
        readiness = f", readiness {self.readiness_address}" if self.readiness_address else ""
        return f"ready: Envoy (pid {s.envoy_pid}) live, {admin}{readiness}; {cp}"

    async def _drain(self, supervise: asyncio.Task[None]) -> None:
        cfg, supervisor = self.cfg, self.supervisor
        assert supervisor is not None
        self.state.draining = True
        self.state.phase = "draining"
        supervisor.stopping.set()  # an Envoy exit from now on is expected, not restarted
        child = supervisor.child
        if self.urgent.is_set() or child is None or not child.alive():
            self.notifier.stopping("stopping")
        else:
            self.notifier.stopping(f"draining Envoy (pid {child.pid}) for {cfg.drain_time:g}s")
            self.notifier.extend_timeout(cfg.drain_time + 15.0)
            log.info("draining", extra={"envoy_pid": child.pid, "drain_time_s": cfg.drain_time})
            if self.admin is not None:
                for path in ("/healthcheck/fail", "/drain_listeners?inboundonly&graceful"):
                    try:
                        await self.admin.post(path)
                    except AdminError as e:
                        log.warning("drain request failed", extra={"path": path, "error": str(e)})
            urgent = asyncio.create_task(self.urgent.wait())
            try:
                await asyncio.wait({urgent, supervise}, timeout=cfg.drain_time,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                urgent.cancel()
        code = await supervisor.stop(timeout=1.0 if self.urgent.is_set() else 10.0)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(supervise, 2.0)
        self.state.envoy_gone()
        self.state.phase = "stopped"
        if code is not None:
            log.info("Envoy stopped", extra={"how": describe_exit(code)})

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def start_access_logs(self) -> None:
        """Read MeshAccessLog's pipe, made by the head start before Envoy could read a bootstrap naming it
        (None: it could not be made, and said so)."""
        pipe = self.head.access_log_pipe
        if pipe is None:
            return
        self.access_logs = streamer = AccessLogStreamer(str(pipe.path))
        streamer.start(pipe)

    async def close(self) -> None:
        if self.validation is not None and not self.validation.done():
            self.validation.cancel()  # kuma-dp is exiting: the verdict no longer matters
        if self.dns is not None:  # DNS: the host's resolver put back first, then the stub stopped
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dns.stop(), 15.0)
        if self.monitor is not None:
            self.monitor.stop()
        for task in self.tasks:
            task.cancel()
        if self.tasks:  # bounded: a task that swallowed its cancellation must not keep kuma-dp alive
            await asyncio.wait(self.tasks, timeout=3.0)
        for server in self.servers:
            server.close()
        await self.mesh_metric.close()
        if self.cp_channel is not None:  # after the tasks that use it
            await self.cp_channel.close()
        if self.cleanups:
            await asyncio.wait(self.cleanups, timeout=5.0)
        if self.supervisor is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.supervisor.stop(timeout=2.0), 10.0)
        drop_waiting_envoy(self.head)  # never handed its bootstrap: stopped or failed before
        if self.access_logs is not None:  # after Envoy: it writes there until it exits
            self.access_logs.stop()
        if self.runtime is not None:
            self.runtime.cleanup()


async def retire_worker(worker: BootstrapWorker, validation: asyncio.Task[None]) -> None:
    """Stop the bootstrap worker once its verdict is in (or kuma-dp gave up on it)."""
    await asyncio.wait({validation})
    await worker.stop()


async def run(head: HeadStart) -> int:
    """The agent, from where the head start (agent/head_start.py) left off, until it exits."""
    notifier = head.notifier
    dp = Agent(head.cfg, head.env, notifier, head)
    try:
        code = await dp.run()
        notifier.stopping("stopped")
        log.info("stopped", extra={"exit": code})
        return code
    except Fatal as e:
        log.error(e.message, extra={"exit": e.exit_code})
        notifier.send("STOPPING=1", f"STATUS=failed: {' '.join(e.message.splitlines()[0].split())}")
        return e.exit_code
    finally:
        await dp.close()
        prestart.discard()  # a pre-started `envoy --version` that an early failure left unused
        notifier.close()
