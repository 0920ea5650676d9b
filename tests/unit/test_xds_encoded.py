"""Shared encoded ADS responses: the bytes a stream writes (shared body + its own nonce) parse to exactly the
message built per stream, nonces of every length included; the cache serialises each content once and stays
within its byte bound."""

from __future__ import annotations

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse

from controlplane.xds.resources import ENDPOINT
from controlplane.xds.server.encoded import EncodedResponses, serialize, with_nonce


def delta_message(nonce: str = "") -> DeltaDiscoveryResponse:
    r = DeltaDiscoveryResponse(system_version_info="v1", type_url=ENDPOINT, nonce=nonce, removed_resources=["gone"])
    item = r.resources.add(name="backend", version="h1")
    item.resource.type_url = ENDPOINT
    item.resource.value = b"\x0a\x07backend" * 3
    return r


def test_shared_bytes_plus_nonce_are_the_per_stream_message() -> None:
    shared = delta_message().SerializeToString()
    for nonce in ("1", "42", "9" * 127, "8" * 128, "7" * 20000):  # 1- and 2- and 3-byte length varints
        assert DeltaDiscoveryResponse.FromString(with_nonce(shared, nonce)) == delta_message(nonce)
    sotw = DiscoveryResponse(version_info="v", type_url=ENDPOINT)
    sotw.resources.add(type_url=ENDPOINT, value=b"abc")
    got = DiscoveryResponse.FromString(with_nonce(sotw.SerializeToString(), "17"))
    sotw.nonce = "17"
    assert got == sotw


def test_each_content_is_serialised_once_and_the_cache_is_bounded() -> None:
    cache = EncodedResponses(max_bytes=1000)
    calls = []

    def build() -> DeltaDiscoveryResponse:
        calls.append(1)
        return delta_message()

    first = cache.get(("k", 1), build)
    assert all(cache.get(("k", 1), build) is first for _ in range(100))
    assert len(calls) == 1 and cache.built == 1 and cache.shared == 100
    for i in range(200):
        cache.get(("other", i), build)
    assert sum(len(b) for b in cache._entries.values()) <= 1000
    assert len(cache) < 200


def test_the_serializer_passes_encoded_bytes_through_and_serialises_messages() -> None:
    assert serialize(b"\x01\x02") == b"\x01\x02"
    assert serialize(delta_message("3")) == delta_message("3").SerializeToString()
