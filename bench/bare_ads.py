"""A bare ADS server: the floor bench_xds.py measures kuma-cp against, in the same run, with the same proxies.

grpc.aio + xds-protos and nothing else: no store, no generation, no authentication, no insights. Each
resource is built from a small JSON description and serialised once (cached by its description, so a change
flipped back reuses the bytes); each response is built and serialised once per distinct content and those
bytes are written to every stream that needs them (the gRPC methods' response serializer is the identity).
Both protocol variants (Delta and SotW), with what Envoy needs to finish warming: the ClusterLoadAssignment
of an updated EDS cluster is sent again. ACKs are read and otherwise ignored (a floor does not track them).

    python bench/bare_ads.py --spec SPEC.json --cert server.crt --key server.key

SPEC.json: {"resources": [R, ...], "nodes": {node_id: {"clusters": [name, ...], "listeners": [name, ...]}},
            "default": {"clusters": [...], "listeners": [...]}, "prebuild": [R, ...]}
(default: for nodes not listed; prebuild: descriptions the changes will set, built and serialised at start)
R: {"type": "cluster", "name": N, "http2": bool}          an EDS cluster over ADS (its CLA is named N)
   {"type": "endpoints", "name": N, "ports": [p, ...]}    a ClusterLoadAssignment, 127.0.0.1:p each
   {"type": "listener", "name": N, "port": p, "cluster": C, "http2": bool}   HTTP connection manager -> C

It prints {"port": P} on stdout once it serves (on 127.0.0.1, TLS with the given certificate), then takes
JSON lines on stdin: {"op": "update", "resources": [R, ...]} replaces those resources and pushes them to
every stream that has or wants them (answer: {"streams": n, "responses": n} once every write is handed to
gRPC); {"op": "quit"}. It exits on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.config_source_pb2 import AggregatedConfigSource, ApiVersion, ConfigSource
from envoy.config.core.v3.protocol_pb2 import Http2ProtocolOptions
from envoy.config.endpoint.v3.endpoint_components_pb2 import Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import Route, RouteAction, RouteMatch, VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
    HttpFilter,
)
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.duration_pb2 import Duration
from google.protobuf.wrappers_pb2 import BoolValue

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
ORDER = (CDS, EDS, LDS)  # make before break: clusters, their endpoints, then the listeners that use them
TYPE_OF = {"cluster": CDS, "endpoints": EDS, "listener": LDS}
SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def build(spec: dict[str, Any]) -> bytes:
    """The serialised resource a description stands for."""
    kind, name = spec["type"], spec["name"]
    if kind == "cluster":
        c = Cluster(name=name, type=Cluster.EDS, connect_timeout=Duration(seconds=1),
                    eds_cluster_config=Cluster.EdsClusterConfig(service_name=name, eds_config=ConfigSource(
                        ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)))
        if spec.get("http2"):
            opts = HttpProtocolOptions()
            opts.explicit_http_config.http2_protocol_options.CopyFrom(Http2ProtocolOptions())
            c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(opts)
        return c.SerializeToString(deterministic=True)
    if kind == "endpoints":
        return ClusterLoadAssignment(cluster_name=name, endpoints=[LocalityLbEndpoints(lb_endpoints=[
            LbEndpoint(endpoint=Endpoint(address=Address(socket_address=SocketAddress(
                address="127.0.0.1", port_value=p)))) for p in spec["ports"]])]).SerializeToString(deterministic=True)
    if kind == "listener":
        router = AnyPb()
        router.Pack(Router())
        hcm = HttpConnectionManager(
            stat_prefix=name,
            codec_type=HttpConnectionManager.HTTP2 if spec.get("http2") else HttpConnectionManager.AUTO,
            # not validated: an inbound listener routes to its local application, which has no cluster here
            route_config=RouteConfiguration(
                name=name, validate_clusters=BoolValue(value=False),
                virtual_hosts=[VirtualHost(name=name, domains=["*"], routes=[
                    Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=spec["cluster"]))])]),
            http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=router)])
        typed = AnyPb()
        typed.Pack(hcm)
        return Listener(name=name, address=Address(socket_address=SocketAddress(
            address="127.0.0.1", port_value=spec["port"])), filter_chains=[FilterChain(filters=[
                Filter(name="envoy.filters.network.http_connection_manager", typed_config=typed)])],
        ).SerializeToString(deterministic=True)
    raise ValueError(f"resource type {kind!r}: use cluster, endpoints or listener")


@dataclass(frozen=True, slots=True)
class Res:
    name: str
    body: bytes
    version: str


class State:
    """Every resource (by type and name), which clusters and listeners each node gets, and the open streams."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._built: dict[str, Res] = {}  # description (JSON) -> built resource: a flip back costs nothing
        self.resources: dict[str, dict[str, Res]] = {t: {} for t in ORDER}
        self.nodes: dict[str, dict[str, list[str]]] = spec.get("nodes", {})
        self.default: dict[str, list[str]] = spec.get("default", {})
        self.streams: set[BaseStream] = set()
        self._nonce = itertools.count(1)
        self.responses: dict[Any, bytes] = {}  # content key -> serialised response, for the current nonce
        self.nonce = ""
        self.new_nonce()
        self.set(spec.get("resources", []))
        for other in spec.get("prebuild", []):  # what the changes will set: built now, not while measured
            self.built(other)

    def new_nonce(self) -> None:
        """One nonce per push: a nonce only needs to be unique on its stream, so every stream that gets the
        same content in one push gets the same bytes."""
        self.nonce = str(next(self._nonce))
        self.responses.clear()

    def built(self, spec: dict[str, Any]) -> Res:
        key = json.dumps(spec, sort_keys=True)
        res = self._built.get(key)
        if res is None:
            body = build(spec)
            res = self._built[key] = Res(spec["name"], body, hashlib.blake2b(body, digest_size=8).hexdigest())
        return res

    def set(self, specs: list[dict[str, Any]]) -> None:
        for spec in specs:
            self.resources[TYPE_OF[spec["type"]]][spec["name"]] = self.built(spec)

    def wildcard_names(self, node_id: str, type_url: str) -> list[str]:
        sets = self.nodes.get(node_id, self.default)
        return sets.get("clusters" if type_url == CDS else "listeners", [])

    def response(self, key: Any, make: Any) -> bytes:
        body = self.responses.get(key)
        if body is None:
            body = self.responses[key] = make().SerializeToString()
        return body


@dataclass(slots=True)
class TypeState:
    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    client: dict[str, str] = field(default_factory=dict)  # Delta: name -> version the client has
    nonce: str = ""  # SotW: the latest nonce sent
    sent: Any = None  # SotW: the content key last sent


class BaseStream:
    def __init__(self, state: State, context: grpc.aio.ServicerContext) -> None:
        self.state, self.context = state, context
        self.node_id = ""
        self.types: dict[str, TypeState] = {}
        self.lock = asyncio.Lock()  # one write at a time on a stream

    def wanted(self, type_url: str, st: TypeState) -> list[Res]:
        of_type = self.state.resources[type_url]
        names = self.state.wildcard_names(self.node_id, type_url) if st.wildcard else sorted(st.names)
        return [r for n in names if (r := of_type.get(n)) is not None]

    async def serve(self) -> None:
        self.state.streams.add(self)
        try:
            while True:
                request = await self.context.read()
                if request is grpc.aio.EOF:
                    return
                if request.node.id:
                    self.node_id = request.node.id
                async with self.lock:
                    await self.on_request(request)
        finally:
            self.state.streams.discard(self)

    async def push(self) -> int:
        async with self.lock:
            sent = 0
            for type_url in ORDER:
                if type_url in self.types:
                    sent += await self.sync(type_url, force=False)
            return sent

    async def on_request(self, request: Any) -> None:
        raise NotImplementedError

    async def sync(self, type_url: str, force: bool) -> int:
        raise NotImplementedError


class DeltaStream(BaseStream):
    async def on_request(self, request: DeltaDiscoveryRequest) -> None:
        type_url = request.type_url
        st = self.types.get(type_url)
        first = st is None
        if st is None:
            st = self.types[type_url] = TypeState(client=dict(request.initial_resource_versions))
            st.wildcard = type_url in (CDS, LDS) and not request.resource_names_subscribe
        st.names.update(n for n in request.resource_names_subscribe if n != "*")
        for n in request.resource_names_unsubscribe:
            st.names.discard(n)
            st.client.pop(n, None)
        if first or request.resource_names_subscribe or request.resource_names_unsubscribe:
            await self.sync(type_url, force=first and st.wildcard)

    async def sync(self, type_url: str, force: bool) -> int:
        st = self.types[type_url]
        wanted = self.wanted(type_url, st)
        changed = [r for r in wanted if st.client.get(r.name) != r.version]
        present = {r.name for r in wanted}
        removed = [n for n in st.client if n not in present]
        if not changed and not removed and not force:
            return 0
        nonce = self.state.nonce
        key = (type_url, tuple((r.name, r.version) for r in changed), tuple(removed))

        def make() -> DeltaDiscoveryResponse:
            resp = DeltaDiscoveryResponse(type_url=type_url, nonce=nonce, removed_resources=removed)
            for r in changed:
                item = resp.resources.add(name=r.name, version=r.version)
                item.resource.type_url = type_url
                item.resource.value = r.body
            return resp

        body = self.state.response(key, make)
        eds = self.types.get(EDS)
        for r in changed:
            if type_url == CDS and r.name in st.client and eds is not None:
                eds.client.pop(r.name, None)  # Envoy re-warms an updated cluster: send its endpoints again
            st.client[r.name] = r.version
        for n in removed:
            del st.client[n]
        await self.context.write(body)
        if type_url == CDS and eds is not None and any(eds.client.get(n) is None for n in eds.names):
            return 1 + await self.sync(EDS, force=False)
        return 1


class SotwStream(BaseStream):
    async def on_request(self, request: DiscoveryRequest) -> None:
        type_url = request.type_url
        st = self.types.get(type_url)
        if st is not None and request.response_nonce != st.nonce:
            return  # stale: the client will send the current nonce
        first = st is None
        if st is None:
            st = self.types[type_url] = TypeState(wildcard=type_url in (CDS, LDS) and not request.resource_names)
        names = set(request.resource_names) - {"*"}
        if first or names != st.names:
            st.names = names
            await self.sync(type_url, force=True)

    async def sync(self, type_url: str, force: bool) -> int:
        st = self.types[type_url]
        wanted = self.wanted(type_url, st)
        key = (type_url, tuple((r.name, r.version) for r in wanted))
        if key == st.sent and not force:
            return 0
        before, st.sent = st.sent, key
        nonce = self.state.nonce
        version = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()

        def make() -> DiscoveryResponse:
            resp = DiscoveryResponse(type_url=type_url, nonce=nonce, version_info=version)
            for r in wanted:
                resp.resources.add(type_url=type_url, value=r.body)
            return resp

        body = self.state.response(key, make)
        st.nonce = nonce
        await self.context.write(body)
        eds = self.types.get(EDS)
        if type_url == CDS and before is not None and eds is not None and eds.nonce:
            # Envoy re-warms updated EDS clusters and waits for their endpoints: send them again.
            return 1 + await self.sync(EDS, force=True)
        return 1


def identity(body: bytes) -> bytes:
    return body


async def serve(args: argparse.Namespace) -> None:
    state = State(json.loads(Path(args.spec).read_text()))

    async def sotw(_: Any, context: grpc.aio.ServicerContext) -> None:
        await SotwStream(state, context).serve()

    async def delta(_: Any, context: grpc.aio.ServicerContext) -> None:
        await DeltaStream(state, context).serve()

    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20),
                                      ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                                      ("grpc.keepalive_permit_without_calls", 1)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            sotw, request_deserializer=DiscoveryRequest.FromString, response_serializer=identity),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            delta, request_deserializer=DeltaDiscoveryRequest.FromString, response_serializer=identity),
    }),))
    creds = grpc.ssl_server_credentials([(Path(args.key).read_bytes(), Path(args.cert).read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    print(json.dumps({"port": port}), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                return
            if cmd["op"] == "update":
                state.set(cmd["resources"])
                state.new_nonce()
                streams = list(state.streams)
                sent = await asyncio.gather(*(s.push() for s in streams))
                answer: dict[str, Any] = {"streams": len(streams), "responses": sum(sent)}
            else:
                answer = {"error": f"unknown op {cmd['op']!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()

    done = asyncio.create_task(commands())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({done, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for t in (done, stopped):
        t.cancel()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="JSON: resources and which node gets which")
    parser.add_argument("--cert", required=True, help="PEM certificate the server presents")
    parser.add_argument("--key", required=True, help="its PEM private key")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
