"""What one proxy's generation reads: its mesh's topology, its Dataplane, its identity, the shared memo."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from controlplane.resources.base import Resource
from controlplane.resources.dataplane import DataplaneSpec

from ..topology import MeshTopology
from .memo import ResourceMemo

if TYPE_CHECKING:
    from .rules import PolicyRules


@dataclass(frozen=True)
class Identity:
    """The proxy's certificate and key (PEM), issued by the mesh CA for its services."""

    cert_pem: bytes
    key_pem: bytes
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Assignment:
    """One ClusterLoadAssignment of a proxy's config and what it was built from: its name, the destination
    (a service, or the subset of it with these tags: a `plugins.Backend`), whether every zone is at one
    priority, and its memo key. Enough to build it again for new endpoints of the service without running
    the generators (generate/eds_patch.py)."""

    name: str
    service: str
    tags: tuple[tuple[str, str], ...]
    one_priority: bool
    key: tuple[object, ...]


@dataclass(frozen=True)
class ProxyContext:
    topology: MeshTopology
    dataplane: Resource
    identity: Identity | None
    memo: ResourceMemo
    # service -> VIP, for the proxy that owns its host's `.mesh` names (kuma-dp --dns-enabled): it gets an
    # outbound listener on VIP:80 and VIP:<service port> for every service of the mesh. None for the others.
    vips: Mapping[str, str] | None = None
    # Filled in while generating: the destination services whose endpoints this proxy's config holds. The
    # reconciler uses it to regenerate only the proxies an endpoint change affects.
    used_services: set[str] = field(default_factory=set, compare=False)
    # Filled in while generating: every ClusterLoadAssignment of the config, as outbound.generate built it.
    assignments: list[Assignment] = field(default_factory=list, compare=False)

    @property
    def mesh(self) -> str:
        return self.topology.name

    @property
    def spec(self) -> DataplaneSpec:
        spec = self.dataplane.spec
        assert isinstance(spec, DataplaneSpec)
        return spec

    @cached_property
    def mtls(self) -> bool:
        return self.topology.mtls_enabled and self.identity is not None

    @cached_property
    def rules(self) -> PolicyRules:
        """The policy rules of this proxy's mesh (cached per topology)."""
        from .rules import rules_for

        return rules_for(self.topology)
