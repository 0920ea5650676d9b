"""Helpers for the ADS tests (no tests here): a real grpc.aio server with `AdsServicer` on 127.0.0.1, a real
generated-stub client, recording callbacks, and small Envoy resource builders."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from controlplane.xds.cache import SnapshotCache
from controlplane.xds.callbacks import XdsAuthError
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, Ref, XdsResource
from controlplane.xds.server import AdsServicer
from controlplane.xds.snapshot import Snapshot

__all__ = ["AdsClient", "Recorder", "TokenAuthenticator", "ads_server", "cla", "eds_cluster", "listener",
           "listener_moved_to_new_cluster_b",
           "listener_on_warm_cluster_a", "nack_status", "snapshot", "static_cluster"]


# -- resources -------------------------------------------------------------------------------------------------

def _address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def cla(name: str, *ports: int, host: str = "127.0.0.1") -> XdsResource:
    msg = endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[
        endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
            endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=_address(host, p)))
            for p in ports])])
    return XdsResource.of(ENDPOINT, name, msg)


def eds_cluster(name: str, connect_timeout_s: int = 1) -> XdsResource:
    msg = cluster_pb2.Cluster(
        name=name, type=cluster_pb2.Cluster.EDS, connect_timeout=duration_pb2.Duration(seconds=connect_timeout_s),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                                      resource_api_version=config_source_pb2.V3)))
    return XdsResource.of(CLUSTER, name, msg, refs=[Ref(ENDPOINT, name)])


def static_cluster(name: str, port: int, *, connect_timeout: duration_pb2.Duration | None = None) -> XdsResource:
    assignment = endpoint_pb2.ClusterLoadAssignment.FromString(cla(name, port).body)
    msg = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC,
                              connect_timeout=connect_timeout or duration_pb2.Duration(seconds=1),
                              load_assignment=assignment)
    return XdsResource.of(CLUSTER, name, msg)


def listener(name: str, port: int, cluster: str, *, ref: bool = False) -> XdsResource:
    """A TCP proxy listener; `ref`: it names its cluster as a Ref, as kuma-cp's generated listeners do (the
    server then holds it until the client has warmed that cluster)."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=cluster)
    network_filter = listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy")
    network_filter.typed_config.Pack(proxy)
    msg = listener_pb2.Listener(name=name, address=_address("127.0.0.1", port),
                                filter_chains=[listener_components_pb2.FilterChain(filters=[network_filter])])
    return XdsResource.of(LISTENER, name, msg, refs=[Ref(CLUSTER, cluster)] if ref else [])


def snapshot(*items: XdsResource) -> Snapshot:
    return Snapshot.build(items)


def nack_status(message: str) -> status_pb2.Status:
    return status_pb2.Status(code=3, message=message)


# -- callbacks and authentication ------------------------------------------------------------------------------

@dataclass
class Recorder:
    """StreamCallbacks that record every call (with the loop time) and let a test wait for one."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _record(self, *event: Any) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())
        self._changed.set()

    def on_stream_open(self, stream_id: int, node_id: str, node: base_pb2.Node) -> None:
        self._record("open", stream_id, node_id, node.id)

    def on_stream_closed(self, stream_id: int, node_id: str) -> None:
        self._record("closed", stream_id, node_id)

    def on_response_sent(self, node_id: str, type_url: str, version: str, nonce: str, resource_count: int,
                         byte_count: int) -> None:
        self._record("sent", node_id, type_url, version, nonce, resource_count, byte_count)

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        self._record("ack", node_id, type_url, version)

    def on_nack(self, node_id: str, type_url: str, version: str, error_detail: str) -> None:
        self._record("nack", node_id, type_url, version, error_detail)

    def of(self, kind: str, type_url: str | None = None) -> list[tuple[Any, ...]]:
        out = [e for e in self.events if e[0] == kind]
        if type_url is not None:
            out = [e for e in out if e[2] == type_url]
        return out

    def time_of(self, event: tuple[Any, ...]) -> float:
        return self.times[self.events.index(event)]

    async def wait(self, predicate: Callable[[Recorder], Any], timeout: float = 5.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while not (result := predicate(self)):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting; events so far: {self.events}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return result


class TokenAuthenticator:
    """Node id = `default.<node.id>`, when the `authorization` metadata is `Bearer <node.id>` (or always, with
    `require_token=False`); records what it saw."""

    def __init__(self, require_token: bool = True) -> None:
        self.require_token = require_token
        self.seen: list[tuple[str, dict[str, str], str]] = []

    async def authenticate(self, node: base_pb2.Node, metadata: Mapping[str, str], peer: str) -> str:
        self.seen.append((node.id, dict(metadata), peer))
        await asyncio.sleep(0)
        token = metadata.get("authorization", "")
        if self.require_token and token != f"Bearer {node.id}":
            raise XdsAuthError(grpc.StatusCode.UNAUTHENTICATED, f"invalid dataplane token for {node.id!r}")
        return f"default.{node.id}"


def auth(node_id: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {node_id}"),)


# -- server and client -----------------------------------------------------------------------------------------

@dataclass
class AdsServer:
    address: str
    cache: SnapshotCache
    servicer: AdsServicer
    recorder: Recorder
    authenticator: TokenAuthenticator
    server: grpc.aio.Server
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    clients: list[AdsClient] = field(default_factory=list)

    async def client(self, *, delta: bool = False, metadata: tuple[tuple[str, str], ...] | None = None,
                     node: str | None = "dp-1") -> AdsClient:
        channel = grpc.aio.insecure_channel(self.address)
        self.channels.append(channel)
        if metadata is None and node is not None:
            metadata = auth(node)
        c = AdsClient(channel, delta=delta, metadata=metadata, node=node)
        self.clients.append(c)
        return c


@contextlib.asynccontextmanager
async def ads_server(nack_backoff: float = 0.3, *, require_token: bool = True,
                     break_delay: float = 0.0, warm_timeout: float = 5.0) -> AsyncIterator[AdsServer]:
    cache = SnapshotCache()
    recorder = Recorder()
    authenticator = TokenAuthenticator(require_token)
    servicer = AdsServicer(cache, authenticator, recorder, nack_backoff=nack_backoff, break_delay=break_delay,
                            warm_timeout=warm_timeout)
    server = grpc.aio.server()
    servicer.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ctx = AdsServer(f"127.0.0.1:{port}", cache, servicer, recorder, authenticator, server)
    try:
        yield ctx
    finally:
        for c in ctx.clients:
            await c.close()
        for _ in range(100):  # let the server see the cancellations before it stops
            if servicer.stream_count == 0:
                break
            await asyncio.sleep(0.01)
        for ch in ctx.channels:
            await ch.close()
        await server.stop(0)


class AdsClient:
    """One ADS stream from the generated stub; responses are pumped into a queue so a test can wait for one
    (or for none) without cancelling a gRPC read."""

    def __init__(self, channel: grpc.aio.Channel, *, delta: bool, metadata: Any, node: str | None) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.delta = delta
        self.node = node
        self.call = method(metadata=metadata)
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.error: grpc.aio.AioRpcError | None = None
        self._pump_task = asyncio.create_task(self._pump())
        self._sent_node = False

    async def _pump(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    return
                await self.responses.put(msg)
        except grpc.aio.AioRpcError as e:
            self.error = e
        except asyncio.CancelledError:
            pass

    async def send(self, type_url: str, *, nonce: str = "", version: str = "", names: tuple[str, ...] = (),
                   error: str | None = None, node: str | None = None, subscribe: tuple[str, ...] = (),
                   unsubscribe: tuple[str, ...] = (), initial_versions: Mapping[str, str] | None = None,
                   with_node: bool | None = None) -> None:
        """Send one request; the node goes on the first one (or when `with_node`/`node` says so)."""
        include_node = (not self._sent_node) if with_node is None else with_node
        node_id = node if node is not None else self.node
        req: Any
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, response_nonce=nonce, resource_names_subscribe=subscribe,
                resource_names_unsubscribe=unsubscribe, initial_resource_versions=dict(initial_versions or {}))
        else:
            req = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version,
                                                 resource_names=names)
        if (include_node or node is not None) and node_id is not None:
            req.node.id = node_id
            req.node.cluster = "test"
            self._sent_node = True
        if error is not None:
            req.error_detail.CopyFrom(nack_status(error))
        await self.call.write(req)

    async def ack(self, response: Any, **kw: Any) -> None:
        """ACK `response` (SotW: with its version and, by default, no names unless given)."""
        if self.delta:
            await self.send(response.type_url, nonce=response.nonce, **kw)
        else:
            await self.send(response.type_url, nonce=response.nonce, version=response.version_info, **kw)

    async def recv(self, timeout: float = 5.0) -> Any:
        try:
            return await asyncio.wait_for(self.responses.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no response within {timeout}s (stream error: {self.error})") from None

    async def expect_nothing(self, wait: float = 0.4) -> None:
        try:
            msg = await asyncio.wait_for(self.responses.get(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {msg}")

    async def status(self, timeout: float = 5.0) -> tuple[grpc.StatusCode, str]:
        code = await asyncio.wait_for(self.call.code(), timeout)
        details = await self.call.details()
        return code, details

    async def close(self) -> None:
        self.call.cancel()
        self._pump_task.cancel()
        with contextlib.suppress(BaseException):
            await self._pump_task


def names_of(response: Any) -> list[str]:
    """Resource names in a SotW or Delta response."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return sorted(r.name for r in response.resources)
    out = []
    for any_msg in response.resources:
        if any_msg.type_url == CLUSTER:
            out.append(cluster_pb2.Cluster.FromString(any_msg.value).name)
        elif any_msg.type_url == ENDPOINT:
            out.append(endpoint_pb2.ClusterLoadAssignment.FromString(any_msg.value).cluster_name)
        elif any_msg.type_url == LISTENER:
            out.append(listener_pb2.Listener.FromString(any_msg.value).name)
    return sorted(out)


async def listener_moved_from_b_to_a(srv: AdsServer, node_key: str, *, delta: bool) -> AdsClient:
    """The make-before-break scene: a client that runs clusters a and b with listener l1 routing to b (both
    ACKed), then a snapshot where l1 routes to a and b is gone. Returns the client; the new LDS is on its way."""
    srv.cache.set_snapshot(node_key, snapshot(static_cluster("a", 9000), static_cluster("b", 9001),
                                              listener("l1", 15001, "b")))
    c = await srv.client(delta=delta)
    await c.send(CLUSTER)
    await c.ack(await c.recv(), with_node=False)
    await c.send(LISTENER)
    await c.ack(await c.recv())
    await srv.recorder.wait(lambda rec: len(rec.of("ack")) == 2)
    srv.cache.set_snapshot(node_key, snapshot(static_cluster("a", 9000), listener("l1", 15001, "a")))
    return c


async def listener_on_warm_cluster_a(srv: AdsServer, node_key: str, *, delta: bool) -> tuple[AdsClient, Any]:
    """A client that runs EDS cluster a, its endpoints and listener l1 routing to a (all ACKed). Returns the
    client and the EDS response of a."""
    srv.cache.set_snapshot(node_key, snapshot(eds_cluster("a"), cla("a", 9000), listener("l1", 15001, "a", ref=True)))
    c = await srv.client(delta=delta)
    await c.send(CLUSTER)
    cds = await c.recv()
    if delta:
        await c.send(ENDPOINT, subscribe=("a",))
    else:
        await c.send(ENDPOINT, names=("a",))
    await c.ack(cds, with_node=False)
    eds = await c.recv()
    assert eds.type_url == ENDPOINT
    if delta:
        await c.ack(eds)
    else:
        await c.ack(eds, names=("a",))
    await c.send(LISTENER)
    lds = await c.recv()
    assert lds.type_url == LISTENER
    await c.ack(lds)
    await srv.recorder.wait(lambda rec: len(rec.of("ack")) == 3)
    return c, eds


async def listener_moved_to_new_cluster_b(srv: AdsServer, node_key: str, *,
                                          delta: bool) -> tuple[AdsClient, Any, Any]:
    """The make-before-use scene: `listener_on_warm_cluster_a`, then a snapshot where l1 routes to b, a new EDS
    cluster. Returns the client, the CDS response that adds b (not ACKed yet) and the (ACKed) EDS response of a."""
    c, eds = await listener_on_warm_cluster_a(srv, node_key, delta=delta)
    srv.cache.set_snapshot(node_key, snapshot(eds_cluster("a"), cla("a", 9000), eds_cluster("b"), cla("b", 9001),
                                              listener("l1", 15001, "b", ref=True)))
    cds = await c.recv()
    assert cds.type_url == CLUSTER and "b" in names_of(cds)
    return c, cds, eds
