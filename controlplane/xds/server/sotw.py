"""State-of-the-world ADS (`StreamAggregatedResources`).

Per type the stream remembers what the client asked for (names, or the wildcard) and what it was last sent
(nonce, version, and a key of the content: the snapshot version for a wildcard subscription, the names and
hashes for a named one). A response goes out when:

- the type's first request arrives (once the node has a snapshot: until then the request is held), or
- what the client should have differs from what it was last sent: a new snapshot version of a wildcard type;
  for named types (EDS, RDS, SDS), a change in the requested names or in one of the requested resources;
- (EDS only) a CDS response updated an EDS cluster: Envoy re-warms it and waits for a fresh EDS response even
  when the endpoints did not change, so EDS is sent again right after CDS.

A request whose `response_nonce` is not the latest nonce sent for its type is stale and ignored (the client
will send the current one). A non-stale request with `error_detail` is a NACK: it is recorded, the rejected
version is not sent again, and nothing new of that type goes out before `nack_backoff` seconds have passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from ..resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, XdsResource
from ..snapshot import WILDCARD_TYPES, Snapshot
from .encoded import with_nonce
from .stream import Stream, in_type_order, is_known, log

WILDCARD = "*"


@dataclass(slots=True)
class _TypeState:
    names: frozenset[str] = frozenset()
    wildcard: bool = False
    explicit: bool = False  # named something once: from then on an empty list means "nothing", not wildcard
    initial: bool = True  # the initial request is answered even when there is nothing new
    nonce: str = ""  # the latest nonce sent for this type ("" before the first response)
    settled: str = ""  # the latest nonce the client ACKed or NACKed
    sent_version: str = ""
    sent_key: Any = None  # what the last response contained
    seen_version: str | None = None  # the snapshot version the last decision looked at
    nack_until: float = 0.0
    resend: bool = False  # answer again even if unchanged (EDS after an update of its clusters)
    rejected: bool = False  # the latest settled response was NACKed: the client runs something older
    sent_clusters: dict[str, XdsResource] | None = None  # CDS only: what the last response had (None: unknown)
    holding: bool = False  # CDS only: the last response kept removed clusters until routing settles
    sent_names: frozenset[str] = frozenset()  # EDS only: the resources the last response had
    sent_hashes: dict[str, str] | None = None  # LDS/RDS only: name -> hash of what the last response had


class SotwStream(Stream[DiscoveryRequest]):
    protocol = "sotw"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.types: dict[str, _TypeState] = {}

    def on_request(self, request: DiscoveryRequest) -> None:
        type_url = request.type_url
        st = self.types.get(type_url)
        snapshot = self.cache.get_snapshot(self.node_id)
        known = is_known(type_url, snapshot)
        if not known:
            self.log_unknown_type(type_url)
        if st is None:
            st = self.types[type_url] = _TypeState()
        elif request.response_nonce != st.nonce:
            log.debug("xds stale request ignored", extra={**self._extra(type_url, request.version_info,
                                                                         request.response_nonce),
                                                           "latest_nonce": st.nonce})
            return
        elif request.response_nonce and known and request.response_nonce != st.settled:
            # One ACK/NACK per response: later requests with the same nonce only change the subscription.
            st.settled = request.response_nonce
            if request.HasField("error_detail"):
                st.nack_until = self.nacked(type_url, st.sent_version, st.nonce, request.error_detail.message)
                st.rejected = True
            else:
                self.acked(type_url, st.sent_version, st.nonce)
                st.rejected = False

        names = set(request.resource_names)
        if WILDCARD in names:
            names.discard(WILDCARD)
            wildcard, st.explicit = True, True
        elif names:
            wildcard, st.explicit = False, True
        else:
            wildcard = not st.explicit and type_url in WILDCARD_TYPES
        if wildcard != st.wildcard or names != st.names:
            st.wildcard, st.names = wildcard, frozenset(names)
            st.seen_version = None  # look again

        if st.initial and not st.nonce and request.version_info and st.wildcard and known:
            # A reconnecting client that already has this version of a wildcard type: nothing to resend
            # (versions are content hashes, so they mean the same on every control plane instance).
            # It is reported as an ACK of that version: the client says it runs it.
            st.initial = False
            st.sent_version = request.version_info
            st.sent_key = (WILDCARD, request.version_info)
            st.seen_version = request.version_info
            self.acked(type_url, request.version_info, "")

    async def flush(self) -> None:
        snapshot = self.cache.get_snapshot(self.node_id)
        now = self.now()
        for type_url in in_type_order(self.types):
            st = self.types[type_url]
            if not is_known(type_url, snapshot):
                if st.initial:  # answer once, with nothing
                    st.initial = False
                    await self._respond(type_url, st, "", [], None)
                continue
            if snapshot is None:
                continue  # hold the request until the node has a snapshot
            version = snapshot.version(type_url)
            due = st.initial or st.resend
            if not due and version == st.seen_version and not st.holding:
                continue
            resources, key = self._select(snapshot, type_url, st, version)
            if type_url == CLUSTER:
                resources, key = self._hold_removed_clusters(snapshot, st, resources, key)
            if not due and key == st.sent_key:
                st.seen_version = version
                continue
            if now < st.nack_until:
                self.defer_until(st.nack_until)
                continue
            if type_url in (LISTENER, ROUTE):
                sent = st.sent_hashes or {}
                if not self.clusters_warm(snapshot, type_url, (r for r in resources if sent.get(r.name) != r.hash)):
                    continue  # look again when the client ACKs those clusters' endpoints
            st.seen_version = version
            st.initial = st.resend = False
            if type_url == CLUSTER:
                self._updated_eds_clusters(st, resources)
            await self._respond(type_url, st, version, resources, key)

    def _hold_removed_clusters(self, snapshot: Snapshot, st: _TypeState, resources: list[XdsResource],
                               key: Any) -> tuple[list[XdsResource], Any]:
        """Make before break: a CDS response omits a cluster to remove it, so until the client has ACKed the
        listeners and routes that stop using a cluster, the response keeps the cluster it last got."""
        st.holding = False
        if not st.sent_clusters or not st.wildcard:
            return resources, key
        present = {r.name for r in resources}
        gone = sorted(n for n in st.sent_clusters if n not in present)
        if not gone or self.routing_settled(snapshot):
            return resources, key
        st.holding = True
        resources = resources + [st.sent_clusters[n] for n in gone]
        sent = st.sent_clusters
        if len(resources) == len(sent) and all(sent.get(r.name) is r or (r.name in sent and sent[r.name].hash == r.hash)
                                               for r in resources):
            return resources, st.sent_key  # what the client already has: nothing to send yet
        return resources, (key, tuple(gone))

    def has_warmed(self, type_url: str, name: str) -> bool | None:
        st = self.types.get(type_url)
        if st is None:  # no endpoints asked for yet: Envoy asks for them once it has processed the clusters
            return False if type_url == ENDPOINT else None
        # No CDS response yet on this stream: a reconnecting client that already had this version of them.
        sent = (st.sent_clusters is None or name in st.sent_clusters) if type_url == CLUSTER else (
            name in st.sent_names and not st.resend)
        if not sent or st.nonce != st.settled:
            return False  # not sent yet, or in flight
        return None if st.rejected else True  # None: the client rejected it, waiting would not help

    def type_settled(self, type_url: str, version: str) -> bool:
        st = self.types.get(type_url)
        if st is None:
            return True
        # seen_version: the last decision looked at this version (sent it, or found the client already has it)
        return st.nonce == st.settled and not st.rejected and st.seen_version == version

    def _updated_eds_clusters(self, st: _TypeState, clusters: list[XdsResource]) -> None:
        """Envoy re-warms an updated EDS cluster and waits for a new EDS response even when its endpoints did
        not change (Envoy's xDS docs, "Resource warming"); its EDS request then names the same resources, so
        without this the cluster would stay warming until Envoy's initial_fetch_timeout."""
        before, st.sent_clusters = st.sent_clusters, {r.name: r for r in clusters}
        eds = self.types.get(ENDPOINT)
        if eds is None or eds.initial:
            return
        for r in clusters:
            if any(ref.type_url == ENDPOINT for ref in r.refs) and (before is None or (
                    before[r.name].hash if r.name in before else r.hash) != r.hash):
                eds.resend = True
                return

    @staticmethod
    def _select(snapshot: Snapshot, type_url: str, st: _TypeState,
                version: str) -> tuple[list[XdsResource], Any]:
        of_type = snapshot.of_type(type_url)
        if st.wildcard:
            return list(of_type.values()), (WILDCARD, version)
        resources = [r for n in sorted(st.names) if (r := of_type.get(n)) is not None]
        return resources, tuple((r.name, r.hash) for r in resources)

    async def _respond(self, type_url: str, st: _TypeState, version: str, resources: list[XdsResource],
                       key: Any) -> None:
        nonce = self.next_nonce()

        def build() -> DiscoveryResponse:
            response = DiscoveryResponse(version_info=version, type_url=type_url)
            add = response.resources.add
            for r in resources:
                add(type_url=type_url, value=r.body)
            return response

        # Every stream that gets this content shares its bytes; only the nonce is its own.
        shared = self.settings.responses.get(("sotw", type_url, version, tuple(r.hash for r in resources)), build)
        st.nonce, st.sent_version, st.sent_key = nonce, version, key
        if type_url == ENDPOINT:
            st.sent_names = frozenset(r.name for r in resources)
        elif type_url == CLUSTER:
            self.warm_clusters.intersection_update(r.name for r in resources)  # left out: removed at the client
        elif type_url in (LISTENER, ROUTE):
            st.sent_hashes = {r.name: r.hash for r in resources}
        await self.send(with_nonce(shared, nonce), type_url, version, nonce, len(resources))
