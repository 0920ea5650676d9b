"""The zone's KDS client: dials global's KDSSyncService and keeps both streams up.

GlobalToZoneSync makes this zone the receiver (meshes, policies, other zones' ZoneIngresses into the zone's
store); ZoneToGlobalSync makes it the sender (its Dataplanes, insights and ZoneIngresses). Both streams run
at once and each reads and writes concurrently. When either ends, both are closed and dialled again after a
jittered back-off (so a fleet of zones does not reconnect in step after a global restart); a refusal (bad
token, disabled zone) is logged once per back-off, not on every retry. Only the zone's leader runs this.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from controlplane import __version__
from controlplane.resources.codec import wire_time
from controlplane.store.base import ResourceStore
from controlplane.supervise import RetrySchedule, Supervisor, cancel_and_wait
from kuma_shared.logs import ErrorLog

from . import metrics
from .codec import DEFAULT_MAX_MESSAGE_BYTES
from .server import GLOBAL_TO_ZONE, SERVICE, ZONE_TO_GLOBAL, grpc_options
from .sync import FromGlobal, Receiver, Sender, first_of, run_receiver, run_sender
from .types import global_to_zone_types, zone_sends

log = logging.getLogger("kuma.kds")
_RETRY_KEY = "global"
_T = TypeVar("_T")


class KdsConfigError(Exception):
    """A zone setting that keeps the client from dialling; the message names the setting and the fix."""


@dataclass(frozen=True, slots=True)
class GlobalAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, address: str) -> GlobalAddress:
        """`grpcs://HOST:PORT` (KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS); TLS only."""
        scheme, sep, rest = address.partition("://")
        if not sep or scheme != "grpcs":
            raise KdsConfigError(f"KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS {address!r} must be 'grpcs://HOST:PORT' "
                                 "(global's KDS port is TLS only)")
        host, colon, port = rest.rstrip("/").rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise KdsConfigError(f"KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS {address!r} must name a host and a port "
                                 "from 1 to 65535, e.g. 'grpcs://global.example:5685'")
        return cls(host, int(port))

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class KdsClient:
    name = "kds-zone-client"

    def __init__(self, store: ResourceStore, *, zone: str, global_address: str, ca_file: Path | str,
                 token_file: Path | str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 backoff_first: float = 1.0, backoff_max: float = 30.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.store, self.zone = store, zone
        self.address = GlobalAddress.parse(global_address)
        self.ca_file, self.token_file, self.max_bytes = Path(ca_file), Path(token_file), max_bytes
        self.retry = RetrySchedule(backoff_first, backoff_max)
        self.refusals = ErrorLog(log, interval=backoff_max)
        self._sleep = sleep
        self.receiver = Receiver(store, global_to_zone_types(), FromGlobal(zone), node_id=zone)
        self.sender: Sender | None = None
        # for GET / and inspect: connected | connecting | refused (global said no: last_error says why) |
        # disconnected
        self.state = "disconnected"
        self.last_error = ""
        self.connected_since: float | None = None

    async def run(self) -> None:
        """Until cancelled: connect, sync, and on any end back off (jittered) and connect again."""
        while True:
            refused = False
            try:
                await self.connect_once()
                self.last_error = "global closed the streams"
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                self.last_error = f"{e.code().name}: {e.details()}"
                refused = e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
                self._report(e)
            except KdsConfigError as e:
                self.last_error = str(e)
                self.refusals.report(("config", str(e)), "KDS cannot connect to global", error=e,
                                     traceback=False, extra={"zone": self.zone})
            except Exception as e:  # a bug or a store failure: logged, and the zone keeps trying
                self.last_error = str(e) or type(e).__name__
                self.refusals.report(("error", type(e).__name__), "KDS sync with global failed", error=e,
                                     extra={"zone": self.zone})
            # A refusal stays visible through the back-off: retrying will not help until the operator acts.
            self.state, self.connected_since = ("refused" if refused else "disconnected"), None
            delay = self.retry.failed(_RETRY_KEY, time.monotonic())
            await self._sleep(delay * random.uniform(0.5, 1.0))

    def _report(self, e: grpc.aio.AioRpcError) -> None:
        code = e.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            message = "global refused this zone's KDS connection"
        elif code is grpc.StatusCode.ABORTED:
            message = "global closed this zone's KDS stream"
        else:
            message = "KDS connection to global lost or not possible"
        self.refusals.report((code.name, e.details()), message, traceback=False, level=logging.WARNING,
                             extra={"zone": self.zone, "global": self.address.target, "code": code.name,
                                    "reason": e.details()})

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        try:
            token = self.token_file.read_text().strip()
        except OSError as e:
            raise KdsConfigError(f"cannot read the zone token {str(self.token_file)!r} "
                                 f"(KUMA_MULTIZONE_ZONE_KDS_AUTH_CP_TOKEN_PATH): {e.strerror}; generate one on "
                                 f"global with 'kumactl generate zone-token --zone {self.zone} --scope cp'") from None
        if not token:
            raise KdsConfigError(f"the zone token file {str(self.token_file)!r} is empty")
        return (("authorization", f"Bearer {token}"), ("client-id", self.zone), ("kds-version", "v2"),
                ("version", __version__), ("environment", "universal"))

    def _credentials(self) -> grpc.ChannelCredentials:
        try:
            ca = self.ca_file.read_bytes()
        except OSError as e:
            raise KdsConfigError(f"cannot read global's CA {str(self.ca_file)!r} "
                                 f"(KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE): {e.strerror}") from None
        return grpc.ssl_channel_credentials(root_certificates=ca)

    async def connect_once(self) -> None:
        """One connection: both streams, until either ends (its error is raised)."""
        metadata, creds = self._metadata(), self._credentials()
        self.state = "connecting"
        req, resp = discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
        async with grpc.aio.secure_channel(self.address.target, creds, options=grpc_options(self.max_bytes)) as ch:
            g2z = ch.stream_stream(f"/{SERVICE}/{GLOBAL_TO_ZONE}", request_serializer=req.SerializeToString,
                                   response_deserializer=resp.FromString)(metadata=metadata)
            z2g = ch.stream_stream(f"/{SERVICE}/{ZONE_TO_GLOBAL}", request_serializer=resp.SerializeToString,
                                   response_deserializer=req.FromString)(metadata=metadata)
            peer = PeerStatus(g2z, z2g)
            # Global answers each stream with headers once it has authenticated the zone, or ends it with the
            # refusal; writing before that would race the refusal and hide its reason behind a local error.
            for call in (g2z, z2g):
                await call.initial_metadata()
                if call.done():
                    raise peer.reason() or grpc.aio.AioRpcError(
                        grpc.StatusCode.UNAVAILABLE, None, None, details="global ended the stream at once")
            self.sender = Sender(self.store, zone_sends(self.zone), peer="global", max_bytes=self.max_bytes)

            async def responses() -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
                async for r in g2z:
                    if self.state != "connected":  # global answered: authenticated and syncing
                        self.state, self.connected_since = "connected", time.time()
                        self.retry.succeeded(_RETRY_KEY)
                        log.info("KDS connected to global", extra={"zone": self.zone,
                                                                   "global": self.address.target})
                    yield r

            for kind in (GLOBAL_TO_ZONE, ZONE_TO_GLOBAL):
                metrics.STREAMS_OPEN.labels("zone", kind).inc()
            try:
                await first_of(run_receiver(self.receiver, responses(), g2z.write),
                                run_sender(self.sender, aiter(z2g), z2g.write), name=f"kds-zone-{self.zone}")
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.RpcError) as e:
                # A write to a call global already ended fails with a local error ("Internal error from
                # Core"); the call's own status says why global ended it (a refusal, a newer stream).
                raise peer.reason(seen=e) or e from None
            finally:
                g2z.cancel()
                z2g.cancel()
                for kind in (GLOBAL_TO_ZONE, ZONE_TO_GLOBAL):
                    metrics.STREAMS_OPEN.labels("zone", kind).dec()


_LOCAL_WRITE_FAILURE = "Internal error from Core"  # what grpcio reports for a write to a call already ended


class PeerStatus:
    """Global's own reason for ending a connection's calls, kept as each call ends.

    grpcio loses it in a race: a write in flight when global's status arrives fails locally and then
    overwrites the call's status with "Internal error from Core", and cancelling the task that waited on the
    other call cancels that call locally too. The status a call ends with first is global's word, so it is
    recorded from the call's done callback, before anything can overwrite it."""

    def __init__(self, *calls: grpc.aio.StreamStreamCall) -> None:
        self.calls, self.first = calls, list[grpc.aio.AioRpcError]()
        for call in calls:
            call.add_done_callback(self._ended)

    def _ended(self, call: grpc.aio.Call) -> None:
        # The status is set when done callbacks run, so these coroutines complete without suspending.
        code, details = _completed(call.code()), _completed(call.details())
        self.first.append(grpc.aio.AioRpcError(code, None, None, details=details))

    def reason(self, seen: BaseException | None = None) -> grpc.aio.AioRpcError | None:
        """The first status that is global's own word (not OK or CANCELLED, and not a local write failure).
        A write that failed before global's status arrived leaves the local error first; global's status then
        replaces it on the call, so the calls' current statuses are looked at too."""
        now = [grpc.aio.AioRpcError(_completed(c.code()), None, None, details=_completed(c.details()))
               for c in self.calls if c.done()]
        found = self.first + now + ([seen] if isinstance(seen, grpc.aio.AioRpcError) else [])
        for e in found:
            if e.code() not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) and e.details() != _LOCAL_WRITE_FAILURE:
                return e
        return None


def _completed(coro: Coroutine[Any, Any, _T]) -> _T:
    """The value of a coroutine that finishes without suspending (grpcio's status getters of a finished call)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(_T, done.value)
    coro.close()
    raise RuntimeError("the call's status is not set yet")


class KdsZoneComponent:
    """The zone's KDS client as a leader-only runtime component: started when this instance becomes the
    leader, stopped when it stops being one (so only one instance of a zone syncs with global)."""

    name = "kds-zone-client"

    def __init__(self, client: KdsClient, supervisor: Supervisor) -> None:
        self.client, self.supervisor = client, supervisor
        self._task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        """This zone's link to global, for GET /: connected, connecting, disconnected (with the last error), or
        standby on an instance that is not the zone's leader (the leader syncs)."""
        c = self.client
        doc: dict[str, Any] = {"address": f"grpcs://{c.address.target}"}
        if self._task is None:
            doc["state"] = "standby"
            doc["reason"] = "another instance of this zone is the leader and syncs with global"
            return doc
        doc["state"] = c.state
        if c.connected_since is not None:
            doc["connectedSince"] = wire_time(datetime.fromtimestamp(c.connected_since, UTC))
        if c.state != "connected" and c.last_error:
            doc["lastError"] = c.last_error
        return doc

    async def start(self) -> None:
        self._task = self.supervisor.spawn(self.name, self.client.run)
        log.info("KDS zone client started", extra={"zone": self.client.zone, "global": self.client.address.target})

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.client.state = "disconnected"
