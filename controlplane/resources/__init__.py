"""The resource model shared by the control plane and the agent.

Importing this package registers the core types; `load_all()` also registers every policy module under
`controlplane.policies` (each policy is one module there).
"""

from __future__ import annotations

import importlib
import pkgutil

from . import dataplane, insights, mesh, secret, vip, zone
from .base import REGISTRY, Meta, Registry, Resource, ResourceType, Scope, Spec, register
from .codec import from_wire, to_wire
from .errors import InvalidParameter, ResourceValidationError, Violations

__all__ = [
    "REGISTRY", "InvalidParameter", "Meta", "Registry", "Resource", "ResourceType", "ResourceValidationError",
    "Scope", "Spec", "Violations", "dataplane", "from_wire", "insights", "load_all", "mesh", "register", "secret",
    "to_wire", "vip", "zone",
]

_loaded = False


def load_all() -> Registry:
    """Register the policy types too (the agent, which needs only Dataplane, does not call this)."""
    global _loaded
    if not _loaded:
        import controlplane.policies as policies

        for info in pkgutil.iter_modules(policies.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{policies.__name__}.{info.name}")
        _loaded = True
    return REGISTRY
