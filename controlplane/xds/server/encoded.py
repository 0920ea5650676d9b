"""Responses serialised once and shared by every stream that sends the same content.

A push after a mesh change sends the same response (the same ClusterLoadAssignment, the same clusters) to
hundreds of streams; only the nonce differs, and a nonce is per stream. So a response is serialised once
without its nonce, keyed by what it contains, and each stream writes those bytes followed by its own nonce
field: protobuf parsers accept fields in any order, so that is the same message as one built per stream.
The gRPC methods' serializer passes such bytes through untouched (`serialize`).

The cache is bounded by total bytes (oldest first out): a response lives while pushes of its content are in
progress, not longer than it is useful.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from google.protobuf.message import Message

# `nonce` is field 5 of both DiscoveryResponse and DeltaDiscoveryResponse, a length-delimited string.
_NONCE_TAG = bytes([(5 << 3) | 2])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def with_nonce(shared: bytes, nonce: str) -> bytes:
    """A serialised response without a nonce plus this stream's nonce: the whole response's wire bytes."""
    raw = nonce.encode()
    return b"".join((shared, _NONCE_TAG, _varint(len(raw)), raw))


def serialize(response: Message | bytes) -> bytes:
    """The ADS methods' response serializer: bytes are an encoded response already."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


class EncodedResponses:
    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self.built = 0  # serialised here (for tests and metrics)
        self.shared = 0  # served from an earlier serialisation

    def get(self, key: Hashable, build: Callable[[], Any]) -> bytes:
        """The nonce-less bytes of the response `key` stands for; `build()` makes the message (without a
        nonce) when no stream has sent this content lately."""
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.shared += 1
            return found
        body: bytes = build().SerializeToString()
        self.built += 1
        if len(body) <= self.max_bytes:
            self._entries[key] = body
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= len(old)
        return body

    def __len__(self) -> int:
        return len(self._entries)
