"""KDS metrics, on global and on zones (the diagnostics port's /metrics). `side` is where they are measured:
`global` (sending to zones, receiving from them) or `zone`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STREAMS_OPEN = Gauge("kuma_cp_kds_streams_open", "KDS streams open now", ["side", "stream"])
RESPONSES_SENT = Counter("kuma_cp_kds_responses_sent", "KDS responses sent to the peer", ["side", "type"])
RESOURCES_SENT = Counter("kuma_cp_kds_resources_sent", "Resources (upserts) sent to the peer", ["side", "type"])
RESPONSES_RECEIVED = Counter("kuma_cp_kds_responses_received", "KDS responses received from the peer",
                             ["side", "type"])
NACKS_RECEIVED = Counter("kuma_cp_kds_nacks_received", "Responses the peer rejected (in part)", ["side", "type"])
NACKS_SENT = Counter("kuma_cp_kds_nacks_sent", "Responses from the peer this side rejected (in part)",
                     ["side", "type"])
SYNC_LAG = Histogram("kuma_cp_kds_sync_lag_seconds",
                     "From a store change to the peer's ACK of the response that carried it", ["side", "type"],
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


def side_of(peer: str) -> str:
    """A sender or receiver whose peer is a zone runs on global, and the other way round."""
    return "global" if peer.startswith("zone") else "zone"
