"""Build each distinct Envoy resource once: a map from what a resource depends on to the built resource.

Keys are tuples of the inputs that shape a resource (never the proxy asking for it, unless the resource is
the proxy's own), so every proxy that needs the same cluster gets the same `XdsResource` object.

The memo holds what the proxies' current configs use and no more: a proxy's build runs inside
`for_proxy(node_id)`, which records the keys it used; an entry lives while at least one proxy's latest build
used it, and is dropped when the last such proxy is rebuilt without it or is `forget()`-ten. So endpoint
churn that only rebuilds some proxies (a partial rebuild) cannot make it grow. Outside `for_proxy()` (a
throw-away memo for one inspection) entries are simply kept.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Iterator
from contextlib import contextmanager

from controlplane.xds.resources import XdsResource


class ResourceMemo:
    def __init__(self) -> None:
        self._entries: dict[Hashable, XdsResource] = {}
        self._refs: dict[Hashable, int] = {}  # key -> proxies whose latest build used it
        self._by_proxy: dict[str, frozenset[Hashable]] = {}
        self._building: set[Hashable] | None = None
        self.built = 0
        self.reused = 0

    def get(self, key: Hashable, build: Callable[[], XdsResource]) -> XdsResource:
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = build()
            self.built += 1
        else:
            self.reused += 1
        if self._building is not None:
            self._building.add(key)
        return found

    @contextmanager
    def for_proxy(self, node_id: str) -> Iterator[None]:
        """Record what one proxy's build uses; on success that replaces what its previous build used. A build
        that raises leaves the proxy's previous references as they were (it keeps its previous config)."""
        with self._recording(node_id, set()):
            yield

    @contextmanager
    def patching(self, node_id: str, released: Collection[Hashable]) -> Iterator[None]:
        """Record a patch of one proxy's latest build (eds_patch.py): it keeps every key that build used but
        `released`, plus what is asked for inside. As with `for_proxy`, a patch that raises changes nothing."""
        previous = self._by_proxy.get(node_id)
        if previous is None:
            raise RuntimeError(f"ResourceMemo.patching(): proxy {node_id!r} has no recorded build to patch")
        with self._recording(node_id, set(previous.difference(released))):
            yield

    def repoint(self, node_id: str, released: frozenset[Hashable],
                added: Iterable[tuple[Hashable, XdsResource]]) -> None:
        """What `patching` records when the replacements are already built (another proxy's patch made them):
        the proxy's latest build without the `released` keys, plus the `added` ones. An added entry the memo
        no longer holds (the proxy that made it went away meanwhile) is put back."""
        previous = self._by_proxy.get(node_id)
        if previous is None:
            raise RuntimeError(f"ResourceMemo.repoint(): proxy {node_id!r} has no recorded build to patch")
        if self._building is not None:
            raise RuntimeError("ResourceMemo.repoint() inside a recorded build")
        keys = []
        for key, resource in added:
            if key in self._entries:
                self.reused += 1
            else:
                self._entries[key] = resource
            keys.append(key)
        self._replace(node_id, previous.difference(released).union(keys))

    @contextmanager
    def _recording(self, node_id: str, start: set[Hashable]) -> Iterator[None]:
        if self._building is not None:
            raise RuntimeError("ResourceMemo.for_proxy() does not nest")
        self._building = start
        try:
            yield
        except BaseException:
            used, self._building = self._building, None
            self._drop_unreferenced(used)
            raise
        used, self._building = self._building, None
        self._replace(node_id, frozenset(used))

    def forget(self, node_id: str) -> None:
        """The proxy is gone: release what its config used."""
        self._replace(node_id, frozenset())

    def reset_counters(self) -> None:
        self.built = self.reused = 0

    def _replace(self, node_id: str, used: frozenset[Hashable]) -> None:
        before = self._by_proxy.get(node_id, frozenset())
        if used:
            self._by_proxy[node_id] = used
        else:
            self._by_proxy.pop(node_id, None)
        for key in used - before:
            self._refs[key] = self._refs.get(key, 0) + 1
        released = []
        for key in before - used:
            left = self._refs[key] - 1
            if left:
                self._refs[key] = left
            else:
                del self._refs[key]
                released.append(key)
        self._drop_unreferenced(released)

    def _drop_unreferenced(self, keys: Iterator[Hashable] | set[Hashable] | list[Hashable]) -> None:
        for key in keys:
            if key not in self._refs:
                self._entries.pop(key, None)

    def keys(self) -> frozenset[Hashable]:
        """The keys of the entries held (tests compare them with what fresh builds use)."""
        return frozenset(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def referenced(self) -> int:
        """Distinct entries some proxy's latest build uses (equals len() when the memo is used per proxy)."""
        return len(self._refs)
