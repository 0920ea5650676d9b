"""What the inspect API (`/meshes/{mesh}/dataplanes/{name}/policies`) shows for an inbound of a policy type whose
inbound entries do not merge into one conf as Kuma merges most policies: in Kuma 2.14 MeshAccessLog's inbound
backends add up, and MeshFaultInjection's rules run one after another. Such a type registers a view here: from
the inbound's entries (in precedence order) and the policies matching the proxy, the keys to show."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from controlplane.resources.base import Resource
from controlplane.xds.generate.rules import Entry

InboundView = Callable[[Sequence[Entry], Sequence[Resource]], dict[str, Any]]

INBOUND_VIEWS: dict[str, InboundView] = {}


def register_inbound_view(policy_type: str, view: InboundView) -> None:
    INBOUND_VIEWS[policy_type] = view


def origins(entries: Sequence[Entry]) -> list[str]:
    """The policies the entries come from, each once, in precedence order."""
    return list(dict.fromkeys(e.policy for e in entries))
