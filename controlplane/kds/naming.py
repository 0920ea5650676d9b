"""KDS resource names: the Delta key `<name>.<mesh>` and the zone-qualified names global stores zone resources under.

Zone-originated resources live on global under `<name>-<hash>` so two zones can each have a `backend-1` in the
same mesh. The hash is Kuma's: FNV-1a-64 over mesh, name, zone and namespace written one after another (no
separators), its 8 bytes in hex, each hex digit mapped to the alphabet below by code point modulo 27 (the same
alphabet Kubernetes uses for generated names: no vowels, so it never spells a word). Matching Kuma's suffix means
names and the labels beside them look the same to someone who knows Kuma.
"""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.resources.base import ResourceType

ORIGIN_LABEL = "kuma.io/origin"
ZONE_LABEL = "kuma.io/zone"
DISPLAY_NAME_LABEL = "kuma.io/display-name"
# Set by Kuma on resources that come from a Kubernetes zone; part of the hash so `a` in two namespaces differ.
NAMESPACE_LABEL = "k8s.kuma.io/namespace"
ORIGIN_GLOBAL = "global"
ORIGIN_ZONE = "zone"

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_NAME_LIMIT = 253  # DNS-1123 subdomain, and Kubernetes' limit for object names
_SUFFIX_LEN = 1 + 16  # "-" and 16 encoded hex digits


def fnv1a64(data: bytes) -> int:
    h = _FNV64_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV64_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def hash_suffix(*parts: str) -> str:
    digest = fnv1a64("".join(parts).encode()).to_bytes(8, "big").hex()
    return "".join(_ALPHABET[ord(c) % len(_ALPHABET)] for c in digest)


def zone_qualified_name(name: str, mesh: str, zone: str, namespace: str = "") -> str:
    """The name global stores a zone's resource under (the name is cut, as Kuma does, to keep 253 chars)."""
    return f"{name[:_NAME_LIMIT - _SUFFIX_LEN]}-{hash_suffix(mesh, name, zone, namespace)}"


def zone_labels(labels: Mapping[str, str], name: str, zone: str) -> dict[str, str]:
    """A zone resource's labels on global: its origin and zone, and the name the zone knows it by. All three
    are set here, whatever the zone sent: a zone cannot pass its resources off as global's or another zone's,
    and the display name is how global maps the zone's removals back to what it stored."""
    out = dict(labels)
    out[ORIGIN_LABEL] = ORIGIN_ZONE
    out[ZONE_LABEL] = zone
    out[DISPLAY_NAME_LABEL] = name
    return out


def wire_key(rtype: ResourceType, name: str, mesh: str) -> str:
    """The Delta `Resource.name` and `removed_resources` key: `<name>.<mesh>`, `<name>.` for global-scoped types."""
    return f"{name}.{mesh}" if rtype.mesh_scoped else f"{name}."


class BadWireKey(ValueError):
    pass


def parse_wire_key(rtype: ResourceType, key: str) -> tuple[str, str]:
    """(name, mesh) from a Delta key. Names may hold dots (`name.namespace` from Kubernetes); mesh names cannot,
    so the mesh is what follows the last dot."""
    name, dot, mesh = key.rpartition(".")
    if not dot or not name:
        raise BadWireKey(f"{rtype.name} key {key!r} is not '<name>.<mesh>' (or '<name>.' for a global-scoped type)")
    if rtype.mesh_scoped and not mesh:
        raise BadWireKey(f"{rtype.name} key {key!r} names no mesh: {rtype.name} lives in a mesh, "
                         "the key must be '<name>.<mesh>'")
    if not rtype.mesh_scoped and mesh:
        raise BadWireKey(f"{rtype.name} key {key!r} names mesh {mesh!r}: {rtype.name} is not part of a mesh, "
                         "the key must be '<name>.'")
    return name, mesh
