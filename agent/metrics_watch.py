"""kuma-dp's side of MeshMetric: follow the dataplane's merged MeshMetric and serve what it says.

The control plane answers `/kuma.vm.dp.v1.Metrics/Get` (controlplane/mads/dp_config.py) when the version
kuma-dp holds is no longer current (or after its wait), so this loop follows policy changes without polling.
For each Prometheus backend kuma-dp listens on the dataplane's address and the backend's port and serves the
merged Envoy + kuma-dp metrics, filtered and labelled (agent/metrics.py's MetricsPolicy), on its path. Those
are the address, port and path the control plane's MADS gives Prometheus. A backend with
`tls: {mode: ProvidedTLS}` is served over TLS with the certificate and key kuma-dp was given
(KUMA_DATAPLANE_RUNTIME_METRICS_CERT_PATH / _KEY_PATH), and MADS tells Prometheus `https`; without them it is
served in plain HTTP, as Kuma does, with an error in the log. While the control plane is away, the last
configuration stays served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.httpd import listen, serve
from agent.metrics import CONTENT_TYPE, MetricsPolicy

if TYPE_CHECKING:
    from agent.cp_channel import CpChannel

log = logging.getLogger("kuma-dp.metrics")

METHOD = "/kuma.vm.dp.v1.Metrics/Get"
CALL_TIMEOUT = 60.0  # the control plane answers within 30 s (its wait) when nothing changes
BACKOFF = 1.0
BACKOFF_CAP = 30.0
# Connected is not yet registered: the control plane stores the Dataplane when it takes the stream's first
# request, moments after Envoy counts itself connected. So the first NOT_FOUNDs are retried sooner (0.1, 0.2,
# 0.3, 0.4 s) before the backoff above.
REGISTRATION_RETRY = 0.1
REGISTRATION_RETRIES = 4

Render = Callable[[MetricsPolicy | None], Awaitable[bytes]]


async def get_config(cp: str, ca_pem: bytes, mesh: str, name: str, token: str, version: str,
                     channel: CpChannel | None = None) -> dict[str, Any]:
    """The dataplane's merged MeshMetric; on `channel` (kuma-dp's shared one) when given."""
    import grpc

    from agent.bootstrap_client import BootstrapError, CpAddress
    from agent.cp_channel import CpChannel

    request = json.dumps({"mesh": mesh, "name": name, "dataplaneToken": token, "version": version}).encode()
    own = channel is None
    shared = CpChannel(CpAddress.parse(cp), ca_pem) if channel is None else channel
    try:
        raw = await shared.get().unary_unary(METHOD)(request, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as e:
        error = BootstrapError.of(e)
        if error.retryable:  # a connection problem: the next call opens a fresh channel
            await shared.reset()
        raise error from None
    finally:
        if own:
            await shared.close()
    answer = json.loads(raw)
    if not isinstance(answer, dict):
        raise ValueError("the control plane's metrics config is not a JSON object")
    return answer


PROVIDED_TLS = "ProvidedTLS"


@dataclass
class MeshMetricServer:
    """The listeners of the current MeshMetric's Prometheus backends, replaced when it changes."""

    render: Render
    cert_path: str | None = None  # for backends with tls mode ProvidedTLS
    key_path: str | None = None
    policy: MetricsPolicy | None = None
    # OpenTelemetry backends: (endpoint, interval) -> the task pushing to it (agent/metrics_otel.py)
    pushers: dict[tuple[str, float], asyncio.Task[None]] = field(default_factory=dict)
    # (address, port) -> ((path, TLS?), server)
    listeners: dict[tuple[str, int], tuple[tuple[str, bool], asyncio.Server]] = field(default_factory=dict)

    def _tls(self, backend: dict[str, Any]) -> bool:
        return (backend.get("tls") or {}).get("mode") == PROVIDED_TLS

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not (self.cert_path and self.key_path):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)  # read at each (re)open: a renewed pair is used
        return context

    async def apply(self, answer: dict[str, Any]) -> None:
        self.policy = MetricsPolicy.from_answer(answer) if answer.get("conf") is not None else None
        await self._apply_pushers(answer)
        address = str(answer.get("address") or "127.0.0.1")
        wanted = {(address, int(b["port"])): (str(b["path"]), self._tls(b)) for b in answer.get("backends") or ()}
        for key in [k for k in self.listeners if k not in wanted or self.listeners[k][0] != wanted[k]]:
            _path, server = self.listeners.pop(key)
            server.close()
            await server.wait_closed()
            log.info("MeshMetric listener closed", extra={"address": f"{key[0]}:{key[1]}"})
        for key, (path, tls) in wanted.items():
            if key in self.listeners:
                continue
            context = None
            if tls:
                try:
                    context = self._ssl_context()
                except (OSError, ssl.SSLError) as e:
                    log.error("cannot load the metrics certificate: serving MeshMetric's backend in plain HTTP",
                              extra={"cert": self.cert_path, "key": self.key_path, "error": str(e)})
                if context is None and not (self.cert_path and self.key_path):
                    log.error("MeshMetric asks for ProvidedTLS but kuma-dp has no certificate: serving plain HTTP; "
                              "set KUMA_DATAPLANE_RUNTIME_METRICS_CERT_PATH and _KEY_PATH",
                              extra={"address": f"{key[0]}:{key[1]}"})
            try:
                sock = listen(*key)
            except OSError as e:
                log.error("cannot serve MeshMetric's Prometheus backend: choose another port in the MeshMetric",
                          extra={"address": f"{key[0]}:{key[1]}", "error": str(e)})
                continue
            self.listeners[key] = ((path, tls), await serve(sock, {path: self._metrics}, ssl=context))
            log.info("MeshMetric listener serving", extra={"address": f"{key[0]}:{key[1]}", "path": path,
                                                          "tls": context is not None})

    async def _apply_pushers(self, answer: dict[str, Any]) -> None:
        wanted = {(str(b["endpoint"]), float(b["interval"])) for b in answer.get("openTelemetry") or ()}
        for key in [k for k in self.pushers if k not in wanted]:
            task = self.pushers.pop(key)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.info("MeshMetric OpenTelemetry push stopped", extra={"endpoint": key[0]})
        if not wanted - set(self.pushers):
            return
        from agent.metrics_otel import OtelPusher  # loaded only when a MeshMetric pushes (kuma-dp stays small)

        resource = {"service.name": str(answer.get("service", "")), "mesh": str(answer.get("mesh", "")),
                    "kuma.io/zone": str(answer.get("zone", ""))}
        for endpoint, interval in sorted(wanted - set(self.pushers)):
            pusher = OtelPusher(endpoint, interval, lambda: self.render(self.policy),
                                {k: v for k, v in resource.items() if v})
            self.pushers[(endpoint, interval)] = asyncio.create_task(pusher.run(), name=f"otel-push {endpoint}")
            log.info("MeshMetric OpenTelemetry push started", extra={"endpoint": endpoint, "interval_s": interval})

    async def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, await self.render(self.policy)

    async def close(self) -> None:
        await self._apply_pushers({})
        for _path, server in self.listeners.values():
            server.close()
        for _path, server in self.listeners.values():
            await server.wait_closed()
        self.listeners.clear()


async def follow(server: MeshMetricServer, cp: str, ca_pem: bytes, mesh: str, name: str, token: str, *,
                 channel: CpChannel | None = None, ready: asyncio.Event | None = None) -> None:
    """Apply every new version of the dataplane's MeshMetric, forever (cancel to stop); on `channel` (kuma-dp's
    shared one, agent/cp_channel.py) when given. With `ready`, the first call waits for it: kuma-dp sets it
    when it reports Envoy ready (READY=1). By then the Dataplane is registered (Envoy's listeners came from its
    xDS stream, which registers it; asked before, the control plane answers NOT_FOUND), and the first call,
    which loads grpcio (~50 ms of the event loop), no longer delays kuma-dp's noticing that Envoy is ready, nor
    takes the cores Envoy's start needs."""
    from agent.bootstrap_client import BootstrapError

    if ready is not None:
        await ready.wait()
    version, delay, failing = "", BACKOFF, False
    unregistered = 0  # NOT_FOUND answers before the first config: Envoy's stream registers it any moment
    while True:
        try:
            answer = await get_config(cp, ca_pem, mesh, name, token, version, channel)
        except asyncio.CancelledError:
            raise
        except (BootstrapError, ValueError, OSError) as e:
            # Before Envoy's first connection the Dataplane may not be registered yet (NOT_FOUND): retry.
            code = e.code if isinstance(e, BootstrapError) else ""
            problem = f"{code} {getattr(e, 'message', e)}".strip()
            # NOT_FOUND before Envoy's first connection registers the Dataplane is expected: not a warning.
            quiet = failing or (code == "NOT_FOUND" and not version)
            (log.debug if quiet else log.warning)(
                "MeshMetric config unavailable; serving the last one", extra={"cp": cp, "error": problem})
            failing = True
            if code == "NOT_FOUND" and not version and unregistered < REGISTRATION_RETRIES:
                unregistered += 1
                await asyncio.sleep(REGISTRATION_RETRY * unregistered)
                continue
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_CAP)
            continue
        failing, delay = False, BACKOFF
        new = str(answer.get("version", ""))
        if new != version:
            version = new
            await server.apply(answer)

