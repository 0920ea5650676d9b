"""The resource model: a type descriptor, immutable metadata and a validated spec.

A `ResourceType` says everything the API, the store and kumactl need to know about a kind of resource, so
adding a type (a policy, say) is one module that calls `register()`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from .errors import Violations, pydantic_violations


class Spec(BaseModel):
    """Base of every spec: camelCase on the wire, unknown fields rejected, no silent type coercion."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        strict=True,
        frozen=True,
    )

    # Fields Kuma has in this message that kuma-vm does not implement yet (wire names): refused with a
    # message that says so, rather than as a typo.
    kuma_unsupported: ClassVar[frozenset[str]] = frozenset()

    def check(self, v: Violations, path: str) -> None:
        """Checks beyond types and shapes (ranges, cross-field rules); `path` prefixes every field name."""

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


SpecT = TypeVar("SpecT", bound=Spec)


def parse_spec_model(cls: type[SpecT], data: Any, path: str, v: Violations) -> SpecT | None:
    """Validate a nested piece against `cls`, recording problems under `path` instead of raising."""
    try:
        model = cls.model_validate(data)
    except ValidationError as e:
        v.extend(pydantic_violations(e, path, cls))
        return None
    model.check(v, path)
    return model


class Scope(Enum):
    MESH = "mesh"      # lives inside a mesh: /meshes/{mesh}/{plural}
    GLOBAL = "global"  # top level: /{plural}


@dataclass(frozen=True, slots=True)
class ResourceType:
    name: str                   # "Dataplane": the `type` field of the YAML
    plural: str                 # "dataplanes": the API path segment and `kumactl get <plural>`
    singular: str               # "dataplane": `kumactl get <singular> NAME`
    scope: Scope
    spec_cls: type[Spec]
    # Kuma's older types (Mesh, Dataplane, ...) put spec fields next to type/name/mesh; targetRef policies
    # nest them under `spec:`.
    flat: bool = False
    is_policy: bool = False
    is_secret: bool = False
    # Names that also travel in SNI and SPIFFE IDs (meshes, zones) are held to a DNS label.
    name_is_label: bool = False
    # Checks that need more than the spec alone (the resource's own name or mesh, for instance).
    check_resource: Callable[[Resource, Violations], None] | None = None
    # Types kept by the control plane itself (insights, VIPs); the API serves them read-only.
    readonly: bool = False
    description: str = ""

    @property
    def mesh_scoped(self) -> bool:
        return self.scope is Scope.MESH


@dataclass(frozen=True, slots=True)
class Meta:
    name: str
    mesh: str = ""  # "" for global-scoped resources
    version: int = 0  # 0: not stored yet; every stored write increments it
    labels: Mapping[str, str] = field(default_factory=dict)
    creation_time: datetime | None = None
    modification_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Resource:
    type: ResourceType
    meta: Meta
    spec: Spec

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.type.name, self.meta.mesh, self.meta.name)

    def with_meta(self, **changes: Any) -> Resource:
        return replace(self, meta=replace(self.meta, **changes))


class Registry:
    """Every resource type, by its YAML name, its API plural and kumactl's singular."""

    _default: ClassVar[Registry | None] = None

    def __init__(self) -> None:
        self._by_name: dict[str, ResourceType] = {}
        self._by_plural: dict[str, ResourceType] = {}
        self._by_singular: dict[str, ResourceType] = {}
        # Modules that register types when imported, imported on first need (see `declare`): type name ->
        # module still to import, and each declared type's rank in `all()` (its module's place in the order
        # the modules would have been imported eagerly).
        self._lazy: dict[str, str] = {}
        self._modules: list[str] = []
        self._rank: dict[str, int] = {}

    def declare(self, module: str, *names: str) -> None:
        """`module` registers the types `names` when imported; import it on the first lookup that needs it.
        kuma-dp's bootstrap worker validates a Dataplane only: it must not pay for building every other
        type's pydantic model (issue 14). Any lookup that misses, and `all()`, import every declared module
        first, so callers see exactly what eager imports registered, in the same order."""
        if module not in self._modules:
            self._modules.append(module)
        for name in names:
            self._lazy[name] = module
            self._rank[name] = self._modules.index(module)

    def _load(self, name: str | None = None) -> bool:
        """Import the declared module of `name` (every declared module if None); False if nothing was pending."""
        import importlib

        modules = [self._lazy[name]] if name in self._lazy else [] if name is not None else self._modules
        pending = [m for m in modules if m in self._lazy.values()]
        for module in pending:
            importlib.import_module(module)  # registers its types (the import lock serialises threads)
            self._lazy = {k: m for k, m in self._lazy.items() if m != module}
        return bool(pending)

    def register(self, rtype: ResourceType) -> ResourceType:
        for index, key in ((self._by_name, rtype.name), (self._by_plural, rtype.plural),
                           (self._by_singular, rtype.singular)):
            if key in index and index[key] is not rtype:
                raise ValueError(f"resource type key {key!r} is registered twice")
            index[key] = rtype
        return rtype

    def by_name(self, name: str) -> ResourceType | None:
        if name in self._lazy:
            self._load(name)
        found = self._by_name.get(name)
        return found if found is not None or not self._load() else self._by_name.get(name)

    def by_plural(self, plural: str) -> ResourceType | None:
        found = self._by_plural.get(plural)
        return found if found is not None or not self._load() else self._by_plural.get(plural)

    def lookup(self, word: str) -> ResourceType | None:
        """A type by any of its spellings, as kumactl accepts them (dataplane, dataplanes, Dataplane)."""
        self._load()
        return self._by_singular.get(word) or self._by_plural.get(word) or self._by_name.get(word) \
            or self._by_name.get(_case_insensitive(self._by_name, word) or "") \
            or self._by_plural.get(_without_dashes(self._by_plural, word) or "")

    def all(self) -> list[ResourceType]:
        """Every registered type: the declared modules' first (in their declared order), then the others in
        the order they registered (sort is stable)."""
        self._load()
        last = len(self._modules)
        return sorted(self._by_name.values(), key=lambda t: self._rank.get(t.name, last))


def _without_dashes(index: Mapping[str, ResourceType], word: str) -> str | None:
    """Kuma's kumactl spells some plurals both ways: `zone-ingresses` and `zoneingresses`."""
    return next((k for k in index if k.replace("-", "") == word.lower()), None)


def _case_insensitive(index: Mapping[str, ResourceType], word: str) -> str | None:
    lowered = word.lower()
    return next((k for k in index if k.lower() == lowered), None)


REGISTRY = Registry()


def register(rtype: ResourceType) -> ResourceType:
    return REGISTRY.register(rtype)
