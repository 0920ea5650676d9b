"""Secrets: mesh-scoped (`Secret`) and global (`GlobalSecret`); data is base64, as in Kuma."""

from __future__ import annotations

import base64
import binascii

from .base import ResourceType, Scope, Spec, register
from .errors import Violations


class SecretSpec(Spec):
    data: str

    def check(self, v: Violations, path: str) -> None:
        try:
            base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            v.add("data", "must be base64-encoded (e.g. the output of `base64 -w0 FILE`)")

    def value(self) -> bytes:
        return base64.b64decode(self.data)

    @classmethod
    def of(cls, value: bytes) -> SecretSpec:
        return cls(data=base64.b64encode(value).decode())


SECRET = register(ResourceType(
    name="Secret", plural="secrets", singular="secret", scope=Scope.MESH, spec_cls=SecretSpec, flat=True,
    is_secret=True, description="Opaque bytes for one mesh (CA keys, provided certificates).",
))

GLOBAL_SECRET = register(ResourceType(
    name="GlobalSecret", plural="global-secrets", singular="global-secret", scope=Scope.GLOBAL,
    spec_cls=SecretSpec, flat=True, is_secret=True,
    description="Opaque bytes for the control plane itself (token signing keys).",
))
