"""Kuma's DataSource: where bytes come from (a secret, a file on the CP host, inline)."""

from __future__ import annotations

import base64
import binascii

from .base import Spec
from .errors import Violations


class DataSource(Spec):
    secret: str | None = None
    file: str | None = None
    inline: str | None = None          # base64
    inline_string: str | None = None

    def check(self, v: Violations, path: str) -> None:
        given = [k for k in ("secret", "file", "inline", "inline_string") if getattr(self, k) is not None]
        if len(given) != 1:
            v.add(path, "exactly one of 'secret', 'file', 'inline' or 'inlineString' must be set")
        if self.inline is not None:
            try:
                base64.b64decode(self.inline, validate=True)
            except (binascii.Error, ValueError):
                v.add(f"{path}.inline", "must be base64-encoded")
