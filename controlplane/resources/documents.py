"""Bounded parsing of resource documents: the code lives in kuma_shared/documents.py, where kuma-dp can load it
without importing the resource model (pydantic) that this package's __init__ pulls in."""

from kuma_shared.documents import (
    MAX_DEPTH,
    MAX_EXPANDED_VALUES,
    DocumentError,
    check_depth,
    load_json,
    load_yaml,
    load_yaml_all,
)

__all__ = ["MAX_DEPTH", "MAX_EXPANDED_VALUES", "DocumentError", "check_depth", "load_json", "load_yaml",
           "load_yaml_all"]
