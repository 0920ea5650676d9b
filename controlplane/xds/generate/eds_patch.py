"""Endpoint-only changes: a proxy's next snapshot from its previous one, with only the ClusterLoadAssignments of
the changed services built again (shared through the memo: every proxy calling a service gets the same new
object), instead of running every generator and policy plugin for it.

When the patch is the same as a full generation (the rule the reconciler applies, `patchable`): between the
mesh topology the proxy's latest build saw and the new one,

1. nothing mesh-wide changed (the Mesh, any policy, the CA bundle: `reconciler._mesh_wide`), and no pass-wide
   reason to regenerate everything (VIPs, a resync) nor one of the proxy's own (a (re)connect, a certificate
   renewal, a retry after a failed build);
2. the proxy's own Dataplane is the same, its identity certificate is the one its build used (and not due),
   and for the proxy owning its host's VIPs, the VIP map is the one its build used;
3. every changed service the proxy's config uses changed ONLY its endpoints (`ServiceChanges.endpoints_only`):
   it exists before and after (so no cluster appears or disappears), with the same agreed protocol and the
   same "has other zones' endpoints" (cross-zone) answer; and for the proxy owning its host's VIPs, the same
   real ports (`ServiceChanges.ports_changed`: its listeners are VIP:<each real port>; no other config reads
   them, so a new instance listening on another application port is still an endpoint-only change elsewhere).

Why that is enough, from what each generator reads (the full list; a new generator or plugin input that
depends on endpoints must be added to rule 3 or to `endpoints_only`):

- secrets: the identity and the CA bundle (rules 1, 2);
- inbound listeners and local clusters: the proxy's Dataplane, mTLS and PERMISSIVE (mesh), and the plugins'
  inbound summaries, which read the policies and the proxy's own Dataplane (rules 1, 2);
- outbound listeners: the targets (the Dataplane's outbounds; for the VIP owner, VIPs and each service's
  real ports), the
  service's protocol, and the plugins' listener plans (the proxy's `to[]` rules, i.e. policies and own
  Dataplane, and the protocol: MeshHTTPRoute, MeshRetry). So the destinations (`Backend`s, subsets by tags
  and by `kuma.io/zone` included), hence the set of cluster and ClusterLoadAssignment names, are the same;
- clusters: the destination, the protocol, mTLS, the plugins' cluster summaries (rules + protocol:
  MeshHealthCheck, MeshTimeout, MeshCircuitBreaker...) and whether the service is cross-zone (outlier
  detection) (rules 1-3);
- ClusterLoadAssignments: the service's endpoints (and their key), the subset's tags and `one_priority`
  (MeshLoadBalancingStrategy, read only when cross-zone: rules 1-3 keep it): rebuilt here by the very function
  the generator uses (`outbound.endpoints_resource`), from the `Assignment`s the full build recorded;
- the plugins' own resources (collectors' clusters): the policies, the proxy's own Dataplane, the zone.

No policy plugin reads `topology.endpoints` (only `protocol()`, `zone` and `policies`), and the zone
ingress's config is always built in full (it is not a dataplane's). Everything else takes the full path:
a service appearing or disappearing (a cluster would appear or go: a CDS change), a protocol or port change,
a service becoming or ceasing to be cross-zone, a proxy whose own Dataplane changed.
tests/unit/test_eds_patch.py checks it: after a series of changes on a rich mesh, every patched snapshot
equals, resource by resource (bytes) and version by version, the one a full generation gives.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..resources import ENDPOINT, XdsResource
from ..snapshot import Snapshot
from ..topology import MeshTopology
from .context import Assignment
from .memo import ResourceMemo
from .outbound import endpoints_resource, is_cross_zone
from .plugins import Backend


@dataclass(frozen=True, slots=True)
class ProxyBuild:
    """What the reconciler keeps of a proxy's latest successful build, to patch it on an endpoint change: the
    snapshot it produced, its ClusterLoadAssignments as built, and the inputs rule 2 compares."""

    snapshot: Snapshot
    assignments: tuple[Assignment, ...]
    identity: str | None  # the identity certificate's fingerprint (None: mTLS off)
    vips: Mapping[str, str] | None  # the VIP map its outbound listeners were made from (None: not the owner)


@dataclass(frozen=True, slots=True)
class ServiceChanges:
    """How the services of a mesh differ between two topologies."""

    changed: frozenset[str]  # endpoints, protocol or ports differ (or the service came or went)
    endpoints_only: frozenset[str]  # of those, the ones where only the endpoints (and maybe ports) differ
    ports_changed: frozenset[str] = frozenset()  # of those, the ones whose real ports differ (VIP listeners)


def service_changes(old: MeshTopology, new: MeshTopology) -> ServiceChanges:
    changed, endpoints_only, ports_changed = set(), set(), set()
    for service in old.protocols.keys() | new.protocols.keys():
        same_ports = old.service_ports.get(service) == new.service_ports.get(service)
        if (old.endpoint_keys.get(service) == new.endpoint_keys.get(service)
                and old.protocols.get(service) == new.protocols.get(service) and same_ports):
            continue
        changed.add(service)
        if not same_ports:
            ports_changed.add(service)
        if (service in old.protocols and service in new.protocols
                and old.protocols[service] == new.protocols[service]
                and is_cross_zone(old, service) == is_cross_zone(new, service)):
            endpoints_only.add(service)
    return ServiceChanges(frozenset(changed), frozenset(endpoints_only), frozenset(ports_changed))


@dataclass(frozen=True, slots=True)
class _Group:
    """The patch of every proxy whose build held the same assignments, for the same changed services."""

    assignments: tuple[Assignment, ...]  # the new ones
    released: frozenset[Hashable]  # memo keys of the assignments replaced
    # memo keys of their replacements, with the resources (put back if the memo dropped them meanwhile: the
    # first proxy of the group disconnected while the pass yielded)
    added: tuple[tuple[Hashable, XdsResource], ...]
    endpoints: Mapping[str, XdsResource]  # the proxies' new ClusterLoadAssignments, by name
    version: str  # of those


class EndpointPatch:
    """The endpoint-only patches of one mesh rebuild (one new topology). Proxies whose builds hold the same
    assignments (callers of the same services under the same policies) form a group: its new assignments,
    its map of ClusterLoadAssignments and that map's version are made once, for the first of them; each
    proxy then only moves its memo references (it releases the old assignments' keys, uses the new ones,
    keeps everything else its build used) and gets its snapshot with the group's map."""

    def __init__(self, topo: MeshTopology, memo: ResourceMemo) -> None:
        self.topo, self.memo = topo, memo
        self._groups: dict[tuple[tuple[Assignment, ...], frozenset[str]], _Group] = {}
        # The same, by the identity of the assignments tuple (the members of a group patched before share
        # theirs: no hashing of assignments), with the tuple itself so that its id stays its own.
        self._by_id: dict[tuple[int, frozenset[str]], tuple[tuple[Assignment, ...], _Group]] = {}

    def apply(self, build: ProxyBuild, node_id: str, services: frozenset[str]) -> ProxyBuild:
        """`build` with the ClusterLoadAssignments of `services` (whose change is endpoint-only, see above)
        made for this pass's topology."""
        group = self._group_of(build.assignments, services)
        if group is None:
            group = self._first(build, node_id, services)
            if group is None:
                return build  # none of its assignments is of these services
            self._groups[(build.assignments, services)] = group
            self._by_id[(id(build.assignments), services)] = (build.assignments, group)
        else:
            self.memo.repoint(node_id, group.released, group.added)
        snapshot = build.snapshot.replacing(ENDPOINT, group.endpoints, group.version)
        return ProxyBuild(snapshot, group.assignments, build.identity, build.vips)

    def _group_of(self, assignments: tuple[Assignment, ...], services: frozenset[str]) -> _Group | None:
        """The group already patched in this pass for these assignments: by identity first, else by value."""
        seen = self._by_id.get((id(assignments), services))
        if seen is not None and seen[0] is assignments:
            return seen[1]
        group = self._groups.get((assignments, services))
        if group is not None:
            self._by_id[(id(assignments), services)] = (assignments, group)
        return group

    def _first(self, build: ProxyBuild, node_id: str, services: frozenset[str]) -> _Group | None:
        replaced = [a for a in build.assignments if a.service in services]
        if not replaced:
            return None
        released = frozenset(a.key for a in replaced)
        fresh: dict[str, Assignment] = {}
        endpoints = dict(build.snapshot.of_type(ENDPOINT))
        with self.memo.patching(node_id, released):
            for a in replaced:
                backend = Backend(a.service, a.tags)
                key, endpoints[a.name] = endpoints_resource(self.memo, self.topo, a.name, backend, a.one_priority)
                fresh[a.name] = Assignment(a.name, a.service, a.tags, a.one_priority, key)
        shared = MappingProxyType(endpoints)
        version = build.snapshot.replacing(ENDPOINT, shared).version(ENDPOINT)
        return _Group(tuple(fresh.get(a.name, a) for a in build.assignments), released,
                      tuple((a.key, endpoints[a.name]) for a in fresh.values()), shared, version)
