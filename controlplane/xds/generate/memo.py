"""Build each distinct Envoy resource once: a map from what a resource depends on to the built resource.

Keys are tuples of the inputs that shape a resource (never the proxy asking for it, unless the resource is
the proxy's own), so every proxy that needs the same cluster gets the same `XdsResource` object. Entries not
used during a rebuild are dropped at its end, so the memo holds what the current config uses and no more.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from controlplane.xds.resources import XdsResource


class ResourceMemo:
    def __init__(self) -> None:
        self._live: dict[Hashable, XdsResource] = {}
        self._used: dict[Hashable, XdsResource] = {}
        self.built = 0
        self.reused = 0

    def get(self, key: Hashable, build: Callable[[], XdsResource]) -> XdsResource:
        found = self._used.get(key)
        if found is None:
            found = self._live.get(key)
            if found is None:
                found = build()
                self.built += 1
            else:
                self.reused += 1
            self._used[key] = found
        else:
            self.reused += 1
        return found

    def begin(self) -> None:
        """Start a full rebuild: entries must be used again to survive it."""
        self._live.update(self._used)
        self._used = {}
        self.built = self.reused = 0

    def end(self) -> None:
        """Forget what the rebuild did not use."""
        self._live = self._used
        self._used = dict(self._live)

    def __len__(self) -> int:
        return len(self._live)
