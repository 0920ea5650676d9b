"""One proxy's snapshot: the generators in a fixed order (secrets, inbound, outbound, then
the plugins' own resources such as a collector's cluster); policy plugins run
inside them, before anything is serialised."""

from __future__ import annotations

from collections.abc import Callable

from ..resources import XdsResource
from ..snapshot import Snapshot
from . import inbound, outbound, secrets
from .context import ProxyContext
from .plugins import generate_proxy_resources

GENERATORS: tuple[Callable[[ProxyContext], list[XdsResource]], ...] = (
    secrets.generate,
    inbound.generate,
    outbound.generate,
    generate_proxy_resources,
)


def generate_snapshot(ctx: ProxyContext) -> Snapshot:
    items: list[XdsResource] = []
    for generator in GENERATORS:
        items.extend(generator(ctx))
    return Snapshot.build(items)
