"""Which clients a `from[]` entry selects, as an inbound HTTP filter can tell them apart.

Kuma tells clients apart by the `x-kuma-tags` header the caller's sidecar adds. kuma-vm uses the caller's
certificate instead (mTLS): the inbound connection manager writes the client's SPIFFE ID
(`spiffe://<mesh>/<service>`) into `x-forwarded-client-cert` (SANITIZE_SET, so a client cannot forge it),
and filters match that header. So a `from[]` entry selects either every client (Mesh, or a subset without
tags) or the clients of one `kuma.io/service`; selecting clients by other tags is refused at validation
(`check_client_ref`), since no Envoy filter could honour it.

`client_rules` turns a proxy's `from[]` entries (lowest precedence first) into per-client rules with
Kuma's merging: each named service gets the merge of every entry that covers it; every other client
gets the merge of the entries that select everyone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from controlplane.resources.dataplane import SERVICE_TAG
from controlplane.resources.errors import Violations
from controlplane.xds.generate.rules import Entry
from controlplane.xds.generate.targeting import MESH_SERVICE, MESH_SERVICE_SUBSET, TargetRef, merge_confs

XFCC = "x-forwarded-client-cert"

# ((service, merged conf JSON), ...) sorted by service, and the conf JSON for every other client (or None).
ClientRules = tuple[tuple[tuple[str, str], ...], str | None]

# Policy types whose `from[]` entries merge per client (the inspect API shows their rules per client).
PER_CLIENT_TYPES: set[str] = set()


def register_per_client(policy_type: str) -> None:
    PER_CLIENT_TYPES.add(policy_type)


def check_client_ref(v: Violations, path: str, ref: TargetRef, policy: str) -> None:
    """Only tags an inbound can verify: the client's kuma.io/service (from its certificate)."""
    other = sorted(k for k in (ref.tags or {}) if k != SERVICE_TAG)
    if other:
        v.add(f"{path}.tags", f"{policy} in kuma-vm tells clients apart by the kuma.io/service in their mTLS "
                              f"certificate; selecting clients by {', '.join(other)} is not supported yet: "
                              "select them by kuma.io/service (or kind Mesh for every client)")
    service = (ref.tags or {}).get(SERVICE_TAG)
    if service == "*":
        v.add(f"{path}.tags.{SERVICE_TAG}", "a wildcard selects every client: use kind Mesh instead")


def client_service(ref: TargetRef) -> str | None:
    """The kuma.io/service a (validated) from[] reference selects; None for every client."""
    if ref.kind in (MESH_SERVICE, MESH_SERVICE_SUBSET) and ref.name:
        return ref.name
    return (ref.tags or {}).get(SERVICE_TAG)


def _canonical(data: dict[str, Any] | None) -> str | None:
    return None if data is None else json.dumps(data, sort_keys=True, separators=(",", ":"))


def client_rules(entries: Sequence[Entry]) -> ClientRules | None:
    if not entries:
        return None
    services = sorted({s for e in entries if (s := client_service(e.ref)) is not None})
    per_service = []
    for service in services:
        merged = merge_confs(e.conf for e in entries if client_service(e.ref) in (None, service))
        per_service.append((service, _canonical(merged) or "{}"))
    everyone = [e.conf for e in entries if client_service(e.ref) is None]
    return tuple(per_service), _canonical(merge_confs(everyone)) if everyone else None


def describe(rules: ClientRules | None) -> list[dict[str, Any]]:
    """The rules as the inspect API shows them: one item per client service, then every other client."""
    if rules is None:
        return []
    per_service, everyone = rules
    out: list[dict[str, Any]] = [{"clients": {SERVICE_TAG: s}, "conf": json.loads(conf)} for s, conf in per_service]
    if everyone is not None:
        out.append({"clients": "every other client" if per_service else "every client", "conf": json.loads(everyone)})
    return out


def client_matchers(mesh: str, service: str | None, others: Sequence[str]) -> list[route_components_pb2.HeaderMatcher]:
    """Header matchers (all must hold) for the clients of `service`, or for every client but `others`."""
    if service is not None:
        return [_xfcc_matcher(mesh, service, invert=False)]
    return [_xfcc_matcher(mesh, s, invert=True) for s in others]


def _xfcc_matcher(mesh: str, service: str, *, invert: bool) -> route_components_pb2.HeaderMatcher:
    # SANITIZE_SET writes `By=<ours>;Hash=<hash>;URI=<client's first URI SAN>`: match the URI element
    # exactly (up to the next element or the end), never our own `By=`.
    uri = re.escape(f"spiffe://{mesh}/{service}")
    regex = f"(.*;)?URI={uri}([;,].*)?"
    return route_components_pb2.HeaderMatcher(
        name=XFCC, invert_match=invert, treat_missing_header_as_empty=True,
        string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex)))
