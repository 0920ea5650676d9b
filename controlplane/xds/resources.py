"""One Envoy resource, serialised once and shared by every proxy that uses it.

Building protobuf messages costs 15-25x more than serialising them (DESIGN.md), so a generator builds each
distinct resource once per mesh generation; snapshots hold references to these immutable objects, and the
ADS server puts `body` on the wire as the Any's value without serialising again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.message import Message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# The order Envoy wants them in (make-before-break): clusters before their endpoints, listeners before
# routes, secrets whenever asked.
TYPE_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}


@dataclass(frozen=True, slots=True)
class Ref:
    """A resource that another one needs in the same snapshot (a cluster's EDS name, a listener's RDS or
    SDS names)."""

    type_url: str
    name: str


@dataclass(frozen=True, slots=True)
class XdsResource:
    type_url: str
    name: str
    body: bytes  # the serialised message: an Any's `value`
    hash: str  # content hash of body: equal hashes mean equal resources
    refs: frozenset[Ref] = field(default_factory=frozenset)

    @classmethod
    def of(cls, type_url: str, name: str, message: Message, refs: Iterable[Ref] = ()) -> XdsResource:
        body = message.SerializeToString(deterministic=True)
        return cls(type_url, name, body, content_hash(body), frozenset(refs))


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()
