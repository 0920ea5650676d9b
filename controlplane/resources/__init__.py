"""The resource model shared by the control plane and the agent.

Importing this package declares the core types to REGISTRY; each core module (and its pydantic models) is
imported on the first lookup that needs it, every one of them on `REGISTRY.all()` or a lookup that misses
(kuma-dp's bootstrap worker validates a Dataplane and builds only that model: issue 14). `load_all()` also
registers every policy module under `controlplane.policies` (each policy is one module there).
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import REGISTRY, Meta, Registry, Resource, ResourceType, Scope, Spec, register
from .codec import from_wire, to_wire
from .errors import InvalidParameter, ResourceValidationError, Violations

__all__ = [
    "REGISTRY", "InvalidParameter", "Meta", "Registry", "Resource", "ResourceType", "ResourceValidationError",
    "Scope", "Spec", "Violations", "dataplane", "from_wire", "insights", "instance", "load_all", "mesh", "register",
    "secret", "to_wire", "vip", "zone",
]

# The core modules, in the order they used to be imported eagerly (REGISTRY.all() keeps it), and the
# types each registers (tests/unit/test_resource_registry_lazy.py checks this table against the modules).
CORE_TYPES = {
    "dataplane": ("Dataplane",),
    "insights": ("DataplaneInsight", "ZoneIngressInsight"),
    "mesh": ("Mesh",),
    "secret": ("Secret", "GlobalSecret"),
    "vip": ("VipAllocation",),
    "zone": ("Zone", "ZoneIngress", "ZoneInsight"),
    "instance": ("ControlPlaneInstance",),
}
for _module, _names in CORE_TYPES.items():
    REGISTRY.declare(f"{__name__}.{_module}", *_names)


def __getattr__(name: str) -> Any:
    """`controlplane.resources.mesh` and the other core modules, imported on first use."""
    if name in CORE_TYPES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_loaded = False


def load_all() -> Registry:
    """Register the policy types too (the agent, which needs only Dataplane, does not call this)."""
    global _loaded
    if not _loaded:
        import pkgutil

        import controlplane.policies as policies

        for info in pkgutil.iter_modules(policies.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{policies.__name__}.{info.name}")
        _loaded = True
    return REGISTRY
