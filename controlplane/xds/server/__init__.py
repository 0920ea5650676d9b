"""The ADS server: `AdsServicer` serves `SnapshotCache` snapshots to Envoy over SotW and Delta xDS (grpc.aio).

    server = grpc.aio.server()
    AdsServicer(cache, authenticator, callbacks).add_to_server(server)
"""

from .servicer import DEFAULT_NACK_BACKOFF, AdsServicer

__all__ = ["DEFAULT_NACK_BACKOFF", "AdsServicer"]
