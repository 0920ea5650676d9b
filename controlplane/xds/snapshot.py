"""An immutable, consistency-checked set of resources for one proxy (go-control-plane's Snapshot).

A snapshot is references to shared `XdsResource`s. Its per-type version is derived from the resources'
content hashes, so two snapshots with the same content have the same versions and produce no push.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_ORDER, XdsResource, content_hash

# Types whose every resource the proxy gets (wildcard); the others are sent by name on request.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


class InconsistentSnapshot(ValueError):
    """A snapshot that would leave Envoy waiting for a resource it will never get."""


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[str, Mapping[str, XdsResource]]
    _versions: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, items: Iterable[XdsResource]) -> Snapshot:
        by_type: dict[str, dict[str, XdsResource]] = {t: {} for t in TYPE_ORDER}
        for r in items:
            existing = by_type.setdefault(r.type_url, {}).get(r.name)
            if existing is not None and existing.hash != r.hash:
                raise InconsistentSnapshot(f"two different {r.type_url.rsplit('.', 1)[-1]} resources are "
                                           f"named {r.name!r}")
            by_type[r.type_url][r.name] = r
        snap = cls({t: MappingProxyType(v) for t, v in by_type.items()})
        problems = snap.consistency_errors()
        if problems:
            raise InconsistentSnapshot("; ".join(problems))
        return snap

    def replacing(self, type_url: str, resources: Mapping[str, XdsResource], version: str | None = None
                  ) -> Snapshot:
        """This snapshot with the resources of one type swapped for `resources`, of the very same names (an
        endpoint-only change: new ClusterLoadAssignments, generate/eds_patch.py). `version`: that of
        `resources`, when the caller knows it (proxies sharing them compute it once).

        The result is consistent without checking again: `consistency_errors` reads only the names of the
        resources and their `refs`; the names stay the same, and the replaced resources and their
        replacements must all reference nothing (a ClusterLoadAssignment never does), so every check gives
        the answer it gave for this snapshot, which was checked when it was built. The other types' resources,
        and their versions, are this snapshot's own (shared, immutable). `resources` must not change later."""
        current = self.of_type(type_url)
        if resources.keys() != current.keys():
            raise InconsistentSnapshot(f"cannot replace the {type_url.rsplit('.', 1)[-1]} resources of a snapshot "
                                       "with others of other names: "
                                       f"{sorted(resources.keys() ^ current.keys())}")
        for name, new in resources.items():
            if new.refs or current[name].refs or new.type_url != type_url or new.name != name:
                raise InconsistentSnapshot(f"cannot replace {type_url.rsplit('.', 1)[-1]} {name!r}: only resources "
                                           "that reference nothing can be swapped for others of their names")
        swapped = dict(self.resources)
        swapped[type_url] = resources if isinstance(resources, MappingProxyType) else MappingProxyType(dict(resources))
        versions = {t: v for t, v in self._versions.items() if t != type_url}
        if version is not None:
            versions[type_url] = version
        return Snapshot(swapped, versions)

    def of_type(self, type_url: str) -> Mapping[str, XdsResource]:
        return self.resources.get(type_url, MappingProxyType({}))

    def version(self, type_url: str) -> str:
        """Content-derived: same resources, same version (so a rebuild that changes nothing pushes nothing)."""
        v = self._versions.get(type_url)
        if v is None:
            parts = sorted(f"{n}={r.hash}" for n, r in self.of_type(type_url).items())
            v = content_hash("\n".join(parts).encode()) if parts else ""
            self._versions[type_url] = v
        return v

    def consistency_errors(self) -> list[str]:
        """Every referenced resource must be in the snapshot: an EDS name needs its CDS owner's reference to
        point at an existing ClusterLoadAssignment, a listener's RDS and SDS names must exist."""
        problems = []
        for type_url in (CLUSTER, LISTENER, ROUTE):
            for owner in self.of_type(type_url).values():
                for ref in owner.refs:
                    if ref.name not in self.of_type(ref.type_url):
                        problems.append(f"{owner.name!r} needs {ref.type_url.rsplit('.', 1)[-1]} {ref.name!r}, "
                                        "which the snapshot does not have")
        owned = {ref.name for c in self.of_type(CLUSTER).values() for ref in c.refs if ref.type_url == ENDPOINT}
        for name in self.of_type(ENDPOINT):
            if name not in owned:
                problems.append(f"endpoints {name!r} have no cluster that uses them")
        return problems
