"""The targetRef model every policy shares, and how policies select proxies and merge (Kuma's rules).

The policy framework's core, here beside the generators that use it: the `targetRef` (its kinds, checks and
matching primitives: `tags_match`, `TargetRef.selects_dataplane`, `selects_inbound`, `covers`), the generic
`from[]`/`to[]` item, and the precedence and merging rules (`precedence_key`, `in_precedence_order`,
`merge_confs`). Policy modules (controlplane/policies) import from here; nothing here imports a policy.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final, Generic, Literal, TypeVar

from controlplane.resources.base import Resource, Spec
from controlplane.resources.dataplane import SERVICE_TAG, DataplaneSpec, identity_tags
from controlplane.resources.errors import Violations
from controlplane.resources.fields import TAG_KEY_RE, TAG_VALUE_RE, PolicyTags, check_labels, check_name

# --- targetRef ------------------------------------------------------------------------------------

MESH: Final = "Mesh"
MESH_SUBSET: Final = "MeshSubset"
MESH_SERVICE: Final = "MeshService"
MESH_SERVICE_SUBSET: Final = "MeshServiceSubset"
MESH_GATEWAY: Final = "MeshGateway"
MESH_HTTP_ROUTE: Final = "MeshHTTPRoute"
DATAPLANE: Final = "Dataplane"
MESH_EXTERNAL_SERVICE: Final = "MeshExternalService"
MESH_MULTI_ZONE_SERVICE: Final = "MeshMultiZoneService"
# Kinds Kuma accepts in `to` that kuma-vm has no resource for yet: accepted (YAML written for Kuma applies),
# and they select nothing; the README lists them.
SELECTS_NOTHING_YET: Final = (MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE)

TargetRefKind = Literal["Mesh", "MeshSubset", "MeshService", "MeshServiceSubset", "MeshGateway",
                        "MeshHTTPRoute", "Dataplane", "MeshExternalService", "MeshMultiZoneService"]
ProxyType = Literal["Sidecar", "Gateway"]

# Kuma's precedence of kinds (api/common/v1alpha1/targetref.go): a policy whose top-level targetRef is more
# specific (higher rank) is merged later and so wins over a less specific one.
KIND_ORDER: dict[str, int] = {
    MESH: 1, DATAPLANE: 2, MESH_SUBSET: 3, MESH_GATEWAY: 4, MESH_SERVICE: 5, MESH_EXTERNAL_SERVICE: 6,
    MESH_MULTI_ZONE_SERVICE: 7, MESH_SERVICE_SUBSET: 8, MESH_HTTP_ROUTE: 9,
}

# Top-level kinds every policy accepts on a sidecar (MeshService/MeshServiceSubset are deprecated at the top
# level since Kuma 2.9 in favour of MeshSubset/Dataplane, but still accepted there).
TOP_LEVEL_KINDS = (MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET, DATAPLANE)

# Kuma's character sets (pkg/core/resources/apis/mesh validators).
_REF_NAME = re.compile(r"^[0-9a-z.\-_]+$")
_TAG_KEY, _TAG_VALUE = TAG_KEY_RE, TAG_VALUE_RE  # one definition: a Dataplane's tags follow the same rules
_SELECTOR_VALUE = re.compile(r"^([a-zA-Z0-9.\-_:/]+|\*)$")
_SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class TargetRef(Spec):
    """A reference to what a policy (or one of its from/to entries) applies to."""

    kind: TargetRefKind
    # MeshService/MeshServiceSubset: the kuma.io/service value; MeshGateway/MeshHTTPRoute/Dataplane: the
    # resource's name.
    name: str | None = None
    # MeshSubset/MeshServiceSubset (and MeshGateway listener tags where the policy allows them).
    tags: PolicyTags | None = None
    # Reserved by Kuma for cross-mesh references: never accepted.
    mesh: str | None = None
    namespace: str | None = None
    labels: PolicyTags | None = None
    section_name: str | None = None
    proxy_types: list[ProxyType] | None = None

    # -- matching (used by the xDS layer) --

    def rank(self) -> int:
        return kind_rank(self.kind)

    def selects_service(self, service: str, tags: Mapping[str, str] | None = None) -> bool:
        """Does this from/to/backend reference cover a service (kuma.io/service value) with these tags?

        MeshGateway, MeshHTTPRoute and Dataplane never name a service here: callers resolve those kinds.
        """
        all_tags = dict(tags or {})
        all_tags.setdefault(SERVICE_TAG, service)
        if self.kind == MESH:
            return True
        if self.kind == MESH_SUBSET:
            return tags_match(self.tags or {}, all_tags)
        if self.kind == MESH_SERVICE:
            return self.name == service
        if self.kind == MESH_SERVICE_SUBSET:
            return self.name == service and tags_match(self.tags or {}, all_tags)
        return False

    def selects_dataplane(self, dataplane: Resource, *, gateway_name: str | None = None) -> bool:
        """Does this top-level reference select the proxy of `dataplane`?

        `gateway_name` is the MeshGateway serving this (builtin gateway) dataplane, when the caller has
        resolved it. MeshHTTPRoute references select the proxies the route itself selects: resolve the
        route and ask its own targetRef. sectionName narrows a Dataplane reference to one inbound; that
        narrowing is the caller's (see `inbound_selected`).
        """
        spec = dataplane.spec
        if not isinstance(spec, DataplaneSpec):
            return False
        gateway = spec.networking.gateway
        proxy_type = "Gateway" if gateway is not None and gateway.type == "BUILTIN" else "Sidecar"
        if self.proxy_types and proxy_type not in self.proxy_types:
            return False
        tag_sets = selector_tag_sets(dataplane)
        if self.kind == MESH:
            return True
        if self.kind == MESH_SUBSET:
            return any(tags_match(self.tags or {}, t) for t in tag_sets)
        if self.kind == MESH_SERVICE:
            return any(t.get(SERVICE_TAG) == self.name for t in tag_sets)
        if self.kind == MESH_SERVICE_SUBSET:
            return any(t.get(SERVICE_TAG) == self.name and tags_match(self.tags or {}, t) for t in tag_sets)
        if self.kind == MESH_GATEWAY:
            return proxy_type == "Gateway" and gateway_name is not None and gateway_name == self.name
        if self.kind == DATAPLANE:
            if self.labels is not None:
                return tags_match(self.labels, dataplane.meta.labels, wildcard=False)
            return self.name is None or self.name == dataplane.meta.name
        return False

    def inbound_selected(self, port: int, name: str | None = None) -> bool:
        """For a Dataplane reference with sectionName: is the inbound (by name or port) the one named?"""
        if self.section_name is None:
            return True
        return self.section_name == name or self.section_name == str(port)


def selector_tag_sets(dataplane: Resource) -> list[Mapping[str, str]]:
    """The tag sets a tag-based top-level targetRef (Mesh, MeshSubset, MeshService, MeshServiceSubset) is
    matched against: each inbound's tags, or the gateway's.

    An outbound-only proxy has neither: it is matched by what its identity carries (its `kuma.io/workload`
    label as `kuma.io/service`, or nothing), so `Mesh` and a MeshSubset without tags select it, and
    `MeshService <workload>` names it. Kuma 2.14's matcher selects proxies only through their inbounds, so
    there no targetRef selects such a proxy; kuma-vm follows Kuma's documentation ("Mesh: every proxy")."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    gateway = spec.networking.gateway
    if gateway is not None:
        return [gateway.tags]
    if spec.networking.inbound:
        return [i.tags for i in spec.networking.inbound]
    return [{k: min(values) for k, values in identity_tags(dataplane).items()}]


def kind_rank(kind: str) -> int:
    return KIND_ORDER.get(kind, 0)


def effective_target_ref(ref: TargetRef | None) -> TargetRef:
    """An omitted top-level targetRef means the whole mesh (Kuma 2.9)."""
    return ref if ref is not None else TargetRef(kind=MESH)


def tags_match(selector: Mapping[str, str], tags: Mapping[str, str], *, wildcard: bool = True) -> bool:
    """Every selector tag is present with the same value ('*' matches any value, as in Kuma selectors)."""
    for key, want in selector.items():
        have = tags.get(key)
        if have is None or (want != have and not (wildcard and want == "*")):
            return False
    return True


def check_target_ref(v: Violations, path: str, ref: TargetRef, *, allowed: Collection[str], where: str,
                     inbound: bool = False, listener_tags: bool = False, top_level: bool = False) -> None:
    """Kuma's targetRef rules, plus which kinds this position allows.

    `where` names the position for the reason ("spec.to[].targetRef of MeshRetry"); `inbound` says the
    policy configures inbound traffic (Dataplane sectionName allowed); `listener_tags` allows tags on
    MeshGateway (select listeners); `top_level` allows proxyTypes.
    """
    kind = ref.kind
    if kind not in allowed:
        v.add(f"{path}.kind", f"kind {kind} is not allowed in {where}: use one of {', '.join(allowed)}")
        return

    def forbid(field: str, value: object, why: str = "") -> None:
        if value is not None:
            alias = camel(field)
            v.add(f"{path}.{alias}", why or f"cannot be set with kind {kind}: remove it")

    forbid("mesh", ref.mesh, "cross-mesh references are not supported: remove 'mesh'")
    if ref.proxy_types is not None:
        if not top_level:
            v.add(f"{path}.proxyTypes", "can only be set on the top-level targetRef: remove it here")
        elif kind not in (MESH, MESH_SUBSET):
            v.add(f"{path}.proxyTypes", f"cannot be set with kind {kind}: proxyTypes only narrows Mesh and "
                                        "MeshSubset")
        elif not ref.proxy_types:
            v.add(f"{path}.proxyTypes", "cannot be empty: list Sidecar and/or Gateway, or remove the field")
        elif len(set(ref.proxy_types)) != len(ref.proxy_types):
            v.add(f"{path}.proxyTypes", "lists a proxy type twice: remove the duplicate")

    if kind == MESH:
        forbid("name", ref.name, "using name with kind Mesh is not supported: remove it (Mesh is this mesh)")
        for f in ("tags", "labels", "namespace", "section_name"):
            forbid(f, getattr(ref, f))
    elif kind == MESH_SUBSET:
        for f in ("name", "labels", "namespace", "section_name"):
            forbid(f, getattr(ref, f))
        _check_ref_tags(v, f"{path}.tags", ref.tags or {}, selector=False)
    elif kind in (MESH_SERVICE, MESH_HTTP_ROUTE, *SELECTS_NOTHING_YET):
        forbid("tags", ref.tags, f"cannot be set with kind {kind}: use MeshServiceSubset to select by tags"
               if kind == MESH_SERVICE else "")
        if ref.labels:
            if ref.name is not None or ref.namespace is not None:
                v.add(f"{path}.labels", "either labels or name (and namespace) must be given, not both")
            if ref.section_name is not None:
                v.add(f"{path}.sectionName", "cannot be combined with labels: select by name instead")
            check_labels(v, f"{path}.labels", ref.labels)
        elif ref.name is None:
            named = {MESH_SERVICE: "service (its kuma.io/service tag)", MESH_HTTP_ROUTE: "route"}.get(kind, kind)
            v.add(f"{path}.name", f"must be set with kind {kind}: name the {named}")
        elif ref.labels is not None:
            v.add(f"{path}.labels", "cannot be empty: remove it or give at least one label")
        _check_ref_name(v, f"{path}.name", ref.name)
        _check_namespace(v, f"{path}.namespace", ref.namespace)
        if kind in (MESH_HTTP_ROUTE, MESH_EXTERNAL_SERVICE):  # Kuma: a route or external service has no ports
            forbid("section_name", ref.section_name)
        else:
            _check_section_name(v, f"{path}.sectionName", ref.section_name)
    elif kind in (MESH_SERVICE_SUBSET, MESH_GATEWAY):
        for f in ("labels", "namespace", "section_name"):
            forbid(f, getattr(ref, f))
        if ref.name is None:
            v.add(f"{path}.name", f"must be set with kind {kind}")
        _check_ref_name(v, f"{path}.name", ref.name)
        if kind == MESH_GATEWAY and ref.tags is not None and not listener_tags:
            v.add(f"{path}.tags", f"cannot be set with kind MeshGateway in {where}: remove it")
        else:
            _check_ref_tags(v, f"{path}.tags", ref.tags or {}, selector=True)
    elif kind == DATAPLANE:
        forbid("tags", ref.tags, "cannot be set with kind Dataplane: use labels to select dataplanes")
        if ref.labels is not None:
            if ref.name is not None or ref.namespace is not None:
                v.add(f"{path}.labels", "either labels or name (and namespace) must be given, not both")
            check_labels(v, f"{path}.labels", ref.labels)
        if ref.name is not None:
            check_name(v, f"{path}.name", ref.name)
        _check_namespace(v, f"{path}.namespace", ref.namespace)
        if ref.section_name is not None and not inbound:
            v.add(f"{path}.sectionName", "can only be used with policies that configure inbound traffic "
                                         "(from/rules): remove it")
        _check_section_name(v, f"{path}.sectionName", ref.section_name)


def camel(field: str) -> str:
    """snake_case field name -> its camelCase wire name."""
    head, *rest = field.split("_")
    return head + "".join(p.title() for p in rest)


def _check_ref_name(v: Violations, path: str, name: str | None) -> None:
    if name is None:
        return
    if not name:
        v.add(path, "cannot be empty")
    elif len(name) > 253 or not _REF_NAME.match(name):
        v.add(path, f"{name!r} has invalid characters: use lowercase letters, digits, '-', '.' and '_' "
                    "(at most 253)")


def _check_namespace(v: Violations, path: str, namespace: str | None) -> None:
    if namespace is not None:
        check_name(v, path, namespace, label=True)


def _check_section_name(v: Violations, path: str, section: str | None) -> None:
    if section is not None and (len(section) > 63 or not _SECTION_NAME.match(section)):
        v.add(path, f"{section!r} must name a port (its name, or its number) with lowercase letters, digits "
                    "and '-'")


def _check_ref_tags(v: Violations, path: str, tags: Mapping[str, str], *, selector: bool) -> None:
    """Kuma's tag rules: keys [a-zA-Z0-9.-_:/]; values [a-zA-Z0-9.-_:] (selectors also '/' and '*')."""
    value_re = _SELECTOR_VALUE if selector else _TAG_VALUE
    for key in sorted(tags):
        value = tags[key]
        if not key or not _TAG_KEY.match(key):
            v.add(f'{path}["{key}"]', "tag name must be non-empty and consist of letters, digits, '.', '-', "
                                      "'_', ':' and '/'")
        if not value:
            v.add(f'{path}["{key}"]', "tag value must be non-empty")
        elif not value_re.match(value):
            allowed = "letters, digits, '.', '-', '_', ':' and '/', or be '*'" if selector else \
                "letters, digits, '.', '-', '_' and ':'"
            v.add(f'{path}["{key}"]', f"tag value {value!r} must consist of {allowed}")


def check_tag_key(v: Violations, path: str, key: str) -> None:
    if not key or not _TAG_KEY.match(key):
        v.add(path, f"{key!r} is not a tag name: use letters, digits, '.', '-', '_', ':' and '/'")


# --- from/to items ----------------------------------------------------------------------------------

C = TypeVar("C", bound=Spec)


class Item(Spec, Generic[C]):
    """One `from[]` or `to[]` entry: which clients or destinations, and the configuration for them."""

    target_ref: TargetRef
    default: C


def check_items(v: Violations, path: str, items: Sequence[Item[Any]] | None, *, allowed: Collection[str],
                where: str, inbound: bool = False) -> None:
    """Check each entry's targetRef against the position's allowed kinds, then its default."""
    for i, item in enumerate(items or ()):
        p = f"{path}[{i}]"
        check_target_ref(v, f"{p}.targetRef", item.target_ref, allowed=allowed, where=where, inbound=inbound)
        item.default.check(v, f"{p}.default")


def check_top_level(v: Violations, path: str, ref: TargetRef | None, *, allowed: Collection[str], policy: str,
                    inbound: bool = False, listener_tags: bool = False) -> None:
    if ref is not None:
        check_target_ref(v, path, ref, allowed=allowed, where=f"the top-level targetRef of {policy}",
                         inbound=inbound, listener_tags=listener_tags, top_level=True)


def require_some(v: Violations, path: str, model: Spec, fields: Iterable[str], what: str = "") -> bool:
    """At least one of `fields` (python names) is set; records a violation otherwise."""
    names = list(fields)
    if any(getattr(model, f) is not None for f in names):
        return True
    v.add(path, what or f"set at least one of: {', '.join(camel(f) for f in names)}")
    return False


# --- precedence and merging (Kuma's rules, used by every plugin and by the inspect API) ---------------
#
# Which policies apply to a proxy, in which order, and what their `default` blocks merge into:
#
# 1. A policy applies when its top-level targetRef selects the proxy (`TargetRef.selects_dataplane`; for
#    `from[]`, the inbound: `selects_inbound`). A top-level MeshHTTPRoute reference selects what that route
#    selects.
# 2. Entries (`to[]`/`from[]` items of every applying policy) are ordered by: the top-level targetRef kind
#    (Mesh < Dataplane < MeshSubset < MeshGateway < MeshService < MeshServiceSubset < MeshHTTPRoute), then its
#    detail (Dataplane: plain < labels < labels+sectionName < name < name+sectionName; MeshGateway: more
#    listener tags), then the entry's own targetRef kind, then the policy name in INVERTED lexicographic
#    order ('zzz' first, 'aaa' last), then the entry's position. Later entries win (Kuma's
#    SortByTargetRefV2 and its "How policies are combined" table).
# 3. For one destination (a service, optionally a route of it), every entry whose targetRef covers it is
#    merged in that order with JSON merge patch (RFC 7386): objects merge key by key, scalars and arrays
#    are replaced. MeshHTTPRoute `rules` merge by their `matches` instead (see mesh_http_route).

RULE_MATCHES_HASH_TAG = "__rule-matches-hash__"  # Kuma's tag for "this route of that service"


def top_level_detail(ref: TargetRef) -> int:
    """Precedence among top-level references of the same kind (Kuma's CompareDataplaneKind and MeshGateway
    listener tags)."""
    if ref.kind == DATAPLANE:
        if ref.name is not None:
            return 3 + (ref.section_name is not None)
        if ref.labels is not None:
            return 1 + (ref.section_name is not None)
        return 0
    if ref.kind == MESH_GATEWAY:
        return len(ref.tags or {})
    return 0


def precedence_key(top: TargetRef, entry: TargetRef | None = None) -> tuple[int, int, int]:
    """Ascending: a larger key is merged later and wins (the name order is applied separately, inverted)."""
    return (top.rank(), top_level_detail(top), entry.rank() if entry is not None else 0)


T = TypeVar("T")


def in_precedence_order(items: Iterable[T], key: Any, name: Any) -> list[T]:
    """Sort `items` lowest precedence first: by `key(item)` ascending, then `name(item)` DESCENDING (so that
    for equal specificity the lexicographically smaller name comes last and wins), keeping the given order
    otherwise (entries of one policy stay in their written order)."""
    by_name = sorted(items, key=name, reverse=True)  # reverse keeps equal names in their order (stable)
    return sorted(by_name, key=key)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: `patch` applied to `target` (neither is modified)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def merge_confs(confs: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Merge `default` blocks lowest precedence first; None when there is nothing to merge."""
    merged: dict[str, Any] | None = None
    for conf in confs:
        merged = merge_patch(merged, dict(conf))
    return merged


def covers(ref: TargetRef, element: Mapping[str, str]) -> bool:
    """Does a `to[]`/`from[]` targetRef cover a destination (or client) described by its tags?

    `element` always has kuma.io/service; a route of the service adds RULE_MATCHES_HASH_TAG. As in Kuma's
    subset rules, an entry covers an element when every tag the entry names is in the element: so
    'MeshService backend' covers every route of backend, 'MeshServiceSubset backend version=v1' does not
    cover plain 'backend'."""
    if ref.kind == MESH:
        return True
    if ref.kind == MESH_SUBSET:
        return tags_match(ref.tags or {}, element)
    if ref.kind == MESH_SERVICE:
        return element.get(SERVICE_TAG) == ref.name
    if ref.kind == MESH_SERVICE_SUBSET:
        return element.get(SERVICE_TAG) == ref.name and tags_match(ref.tags or {}, element)
    return False


def selects_inbound(top: TargetRef, dataplane: Resource, inbound_tags: Mapping[str, str], port: int,
                    name: str | None = None) -> bool:
    """Does a top-level targetRef select one inbound of a dataplane (for `from[]` entries)? Mesh selects
    every inbound; tag-based kinds the inbounds whose tags match; Dataplane the proxy's inbounds (one, with
    sectionName)."""
    kind = top.kind
    if top.proxy_types and "Sidecar" not in top.proxy_types:
        spec = dataplane.spec
        gateway = spec.networking.gateway if isinstance(spec, DataplaneSpec) else None
        if gateway is None or gateway.type != "BUILTIN":
            return False
    if kind == MESH:
        return True
    if kind == MESH_SUBSET:
        return tags_match(top.tags or {}, inbound_tags)
    if kind == MESH_SERVICE:
        return inbound_tags.get(SERVICE_TAG) == top.name
    if kind == MESH_SERVICE_SUBSET:
        return inbound_tags.get(SERVICE_TAG) == top.name and tags_match(top.tags or {}, inbound_tags)
    if kind == DATAPLANE:
        return top.selects_dataplane(dataplane) and top.inbound_selected(port, name)
    return False


def matches_hash(matches: Any) -> str:
    """A stable name for one MeshHTTPRoute rule: the hash of its `matches` (wire JSON). Envoy routes built
    from the rule carry it as their name, so per-route policies (MeshTimeout, MeshRetry on a route) find
    them, as Kuma does with its rule-matches hash."""
    import hashlib
    import json

    text = json.dumps(matches, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
