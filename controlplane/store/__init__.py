"""Resource stores: the contract (base) and its backends (memory, sqlite, postgres)."""

from .base import (
    AlreadyExists,
    ChangeEvent,
    Conflict,
    ListQuery,
    MeshNotFound,
    NotFound,
    RawResource,
    RawResourceList,
    ResourceList,
    ResourceStore,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "AlreadyExists", "ChangeEvent", "Conflict", "ListQuery", "MeshNotFound", "NotFound", "RawResource",
    "RawResourceList", "ResourceList", "ResourceStore", "StoreError", "StoreUnavailable",
]
