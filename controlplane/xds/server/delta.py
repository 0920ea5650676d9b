"""Incremental ADS (`DeltaAggregatedResources`).

Per type the stream keeps the client's subscription (names, and the wildcard: CDS/LDS whose first request
subscribes to nothing, or any type subscribed to "*") and the version (content hash) of every resource the
client has: seeded from `initial_resource_versions` on a reconnect, updated with every response. A response
carries only resources whose hash differs from the client's, and `removed_resources` for those the client
has that are gone from the snapshot or no longer subscribed; `system_version_info` is the snapshot's type
version. A type with nothing to add or remove gets no response, except the first wildcard request of a
client that has nothing yet (so it can finish initialising even when there are no resources). When a response
updates an EDS cluster the client had, its ClusterLoadAssignment is sent again even if unchanged: Envoy
re-warms the cluster and waits for it.

Subscription changes are applied from every request. A request's `response_nonce` ACKs (or, with
`error_detail`, NACKs) the response with that nonce and settles older ones; an unknown nonce is ignored for
ACK/NACK purposes. After a NACK nothing new of that type goes out before `nack_backoff` seconds have passed,
and the rejected resources are not sent again unless they change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse

from ..resources import CLUSTER, ENDPOINT, XdsResource
from ..snapshot import WILDCARD_TYPES
from .encoded import with_nonce
from .stream import Stream, in_type_order, is_known, log

WILDCARD = "*"
_MAX_OUTSTANDING = 64  # un-ACKed nonces remembered per type (a client that never ACKs costs no more)


@dataclass(slots=True)
class _TypeState:
    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    client: dict[str, str] = field(default_factory=dict)  # name -> hash the client has (as far as we know)
    dropped: set[str] = field(default_factory=set)  # unsubscribed names the client had: confirm their removal
    force: bool = False  # answer even with nothing to add or remove
    dirty: bool = True
    seen_version: str | None = None
    outstanding: dict[str, str] = field(default_factory=dict)  # nonce -> system version, oldest first
    nack_until: float = 0.0
    rejected: bool = False  # the latest settled response was NACKed: the client runs something older
    sent_in: dict[str, str] = field(default_factory=dict)  # name -> nonce of the latest response carrying it

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


class DeltaStream(Stream[DeltaDiscoveryRequest]):
    protocol = "delta"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.types: dict[str, _TypeState] = {}
        self._rewarm_later: set[str] = set()  # CLAs of updated clusters, for an EDS subscription yet to come

    def on_request(self, request: DeltaDiscoveryRequest) -> None:
        type_url = request.type_url
        snapshot = self.cache.get_snapshot(self.node_id)
        known = is_known(type_url, snapshot)
        if not known:
            self.log_unknown_type(type_url)
        st = self.types.get(type_url)
        first = st is None
        if st is None:
            st = self.types[type_url] = _TypeState(client=dict(request.initial_resource_versions))
            st.wildcard = type_url in WILDCARD_TYPES and not request.resource_names_subscribe
            if type_url == ENDPOINT and self._rewarm_later:
                for name in self._rewarm_later:
                    st.client.pop(name, None)
                self._rewarm_later.clear()

        nonce = request.response_nonce
        if nonce:
            version = st.outstanding.get(nonce)
            if version is None:
                log.debug("xds ACK/NACK for an unknown nonce ignored", extra=self._extra(type_url, "", nonce))
            else:
                # The client handles responses in order: this one settles every older one too.
                for n in list(st.outstanding):
                    del st.outstanding[n]
                    if n == nonce:
                        break
                if known and request.HasField("error_detail"):
                    st.nack_until = self.nacked(type_url, version, nonce, request.error_detail.message)
                    st.rejected = True
                elif known:
                    self.acked(type_url, version, nonce)
                    st.rejected = False

        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                st.wildcard = True
            else:
                st.names.add(name)
                st.dropped.discard(name)
            st.dirty = True
        unsubscribed = request.resource_names_unsubscribe
        for name in unsubscribed:
            if name == WILDCARD:
                st.wildcard = False
            else:
                st.names.discard(name)
            st.dirty = True
        for name in unsubscribed:
            # The client forgets what it unsubscribes from; if it is still wanted (wildcard), it is sent again.
            if name != WILDCARD and name in st.client:
                del st.client[name]
                st.dropped.add(name)
        if first:
            # A wildcard client with nothing yet gets an answer even if there is nothing: Envoy waits for one.
            st.force = st.wildcard and not request.initial_resource_versions

    async def flush(self) -> None:
        snapshot = self.cache.get_snapshot(self.node_id)
        if snapshot is None:
            return  # hold every request until the node has a snapshot
        now = self.now()
        for type_url in in_type_order(self.types):
            if not is_known(type_url, snapshot):
                continue
            st = self.types[type_url]
            version = snapshot.version(type_url)
            if not st.dirty and version == st.seen_version:
                continue
            if now < st.nack_until:
                self.defer_until(st.nack_until)
                continue
            of_type = snapshot.of_type(type_url)
            if st.wildcard:
                candidates: Any = of_type.values()
            else:
                candidates = (r for n in st.names if (r := of_type.get(n)) is not None)
            changed: list[XdsResource] = [r for r in candidates if st.client.get(r.name) != r.hash]
            if changed and not self.clusters_warm(snapshot, type_url, changed):
                st.dirty = True  # look again when the client ACKs those clusters' endpoints
                continue
            removed = [n for n in st.client if n not in of_type or not st.wants(n)]
            st.dirty = False
            if removed and type_url in (CLUSTER, ENDPOINT) and not self.routing_settled(snapshot):
                # Make before break: keep them (the client still has them) and look again after the ACK of
                # the listeners and routes that stop using them.
                held = {n for n in removed if n not in of_type and st.wants(n)}
                removed = [n for n in removed if n not in held]
                st.dirty = bool(held)
            removed.extend(n for n in st.dropped if n not in of_type or not st.wants(n))
            st.dropped.clear()
            st.seen_version = version
            if not changed and not removed and not st.force:
                continue
            st.force = False
            await self._respond(type_url, st, version, changed, removed)

    def has_warmed(self, type_url: str, name: str) -> bool | None:
        st = self.types.get(type_url)
        if st is None:  # no endpoints subscribed yet: Envoy asks for them once it has processed the clusters
            return False if type_url == ENDPOINT else None
        if name not in st.client:
            return False  # not sent yet (not subscribed yet, or re-warming after a cluster update)
        if st.sent_in.get(name) in st.outstanding:
            return False  # in flight: the response that carried it is not ACKed yet
        return None if st.rejected else True  # None: the client rejected it, waiting would not help

    def type_settled(self, type_url: str, version: str) -> bool:
        st = self.types.get(type_url)
        if st is None:
            return True
        return not st.outstanding and not st.rejected and not st.dirty and st.seen_version == version

    async def _respond(self, type_url: str, st: _TypeState, version: str, changed: list[XdsResource],
                       removed: list[str]) -> None:
        nonce = self.next_nonce()

        def build() -> DeltaDiscoveryResponse:
            response = DeltaDiscoveryResponse(system_version_info=version, type_url=type_url,
                                              removed_resources=removed)
            add = response.resources.add
            for r in changed:
                item = add(name=r.name, version=r.hash)
                item.resource.type_url = type_url
                item.resource.value = r.body
            return response

        # Every stream that gets this content shares its bytes; only the nonce is its own.
        key = ("delta", type_url, version, tuple((r.name, r.hash) for r in changed), tuple(removed))
        body = with_nonce(self.settings.responses.get(key, build), nonce)
        for r in changed:
            if type_url == CLUSTER and r.name in st.client:
                self._rewarm(r)
            st.client[r.name] = r.hash
            st.sent_in[r.name] = nonce
        for name in removed:
            st.client.pop(name, None)
            st.sent_in.pop(name, None)
        if type_url == CLUSTER:
            self.warm_clusters.difference_update(removed)  # added again later, it warms again
        st.outstanding[nonce] = version
        if len(st.outstanding) > _MAX_OUTSTANDING:
            del st.outstanding[next(iter(st.outstanding))]
        await self.send(body, type_url, version, nonce, len(changed))

    def _rewarm(self, cluster: XdsResource) -> None:
        """Envoy re-warms an updated EDS cluster and waits for its ClusterLoadAssignment to be sent again even
        when it did not change (Envoy's xDS docs, "Resource warming"): forget that the client has it."""
        eds = self.types.get(ENDPOINT)
        for ref in cluster.refs:
            if ref.type_url != ENDPOINT:
                continue
            if eds is None:  # a reconnect: EDS is not subscribed yet on this stream
                if len(self._rewarm_later) < 100_000:
                    self._rewarm_later.add(ref.name)
            elif eds.client.pop(ref.name, None) is not None:
                eds.dirty = True
