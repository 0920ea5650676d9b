"""DNS names of services: `<service>.<domain>` and Kuma's variant with `_` replaced by `.`.

`backend_kuma-demo_svc_8080` answers as `backend_kuma-demo_svc_8080.mesh` and as
`backend.kuma-demo.svc.8080.mesh`. Names are case-insensitive (kept lowercase here). When two services
would own one name, the exact name wins over a `_` variant, then the first in sorted order; a service name
that cannot be a DNS name (a label over 63 bytes, characters other than letters, digits, `-` and `_`) gets
a VIP but no name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
MAX_NAME = 253  # text form, without the trailing dot

K = TypeVar("K")


def valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME and all(_LABEL.match(label) for label in name.split("."))


def exact_name(service: str, domain: str) -> str | None:
    name = f"{service}.{domain}".lower()
    return name if valid_name(name) else None


def dotted_name(service: str, domain: str) -> str | None:
    """Kuma's RFC 1035 friendly variant: every `_` becomes a label separator."""
    if "_" not in service:
        return None
    name = f"{service.replace('_', '.')}.{domain}".lower()
    return name if valid_name(name) else None


def assign_names(owners: Iterable[tuple[K, str]], domain: str) -> dict[str, K]:
    """DNS name -> owner for (owner, service) pairs given in precedence order: every exact name first,
    then the `_` variants; a name already taken stays with its first owner."""
    items = list(owners)
    out: dict[str, K] = {}
    for owner, service in items:
        name = exact_name(service, domain)
        if name is not None:
            out.setdefault(name, owner)
    for owner, service in items:
        name = dotted_name(service, domain)
        if name is not None:
            out.setdefault(name, owner)
    return out


def mesh_names(services: Iterable[str], domain: str) -> dict[str, str]:
    """DNS name -> service for the services of one mesh."""
    return assign_names(((s, s) for s in sorted(services)), domain)


def unnamed(services: Iterable[str], domain: str) -> list[str]:
    """Services with no DNS name of their own (invalid as a name)."""
    return sorted(s for s in services if exact_name(s, domain) is None and dotted_name(s, domain) is None)


def zone_names(meshes: Mapping[str, Mapping[str, str]], domain: str) -> dict[str, str]:
    """DNS name -> VIP over every mesh, for the control plane's own server: a service name present in
    several meshes resolves to its VIP in the first mesh by name (exact names of any mesh still win over
    `_` variants)."""
    owners = [(vips[svc], svc) for mesh, vips in sorted(meshes.items()) for svc in sorted(vips)]
    return assign_names(owners, domain)
