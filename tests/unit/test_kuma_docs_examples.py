"""Kuma's docs examples for MeshTrace, MeshMetric, MeshAccessLog, MeshFaultInjection and MeshRateLimit
(tests/unit/kuma_docs/): each one kuma-vm accepts validates and round-trips; each one it refuses is refused
at the field and with the message refused.yaml records (the real-Envoy side: tests/integration/
test_kuma_docs_examples.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.resources import ResourceValidationError, from_wire, load_all, to_wire

load_all()
DOCS = Path(__file__).parent / "kuma_docs"
POLICIES = ("meshtrace", "meshmetric", "meshaccesslog", "meshfaultinjection", "meshratelimit")


def accepted() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p}/{d['name']}", d) for p in POLICIES
            for d in yaml.safe_load_all((DOCS / f"{p}.yaml").read_text()) if d]


def refused() -> list[dict[str, Any]]:
    items = yaml.safe_load((DOCS / "refused.yaml").read_text())
    assert isinstance(items, list)
    return items


@pytest.mark.parametrize(("name", "doc"), accepted(), ids=[n for n, _ in accepted()])
def test_docs_example_is_accepted(name: str, doc: dict[str, Any]) -> None:
    resource = from_wire(doc)
    assert to_wire(resource)["spec"] == doc["spec"]


@pytest.mark.parametrize("item", refused(), ids=[i["policy"]["name"] for i in refused()])
def test_docs_example_refused_at_the_field(item: dict[str, Any]) -> None:
    with pytest.raises(ResourceValidationError) as e:
        from_wire(item["policy"])
    got = [(p.field, p.reason) for p in e.value.invalid]
    assert any(f == item["field"] and item["reason"] in r for f, r in got), got


def test_every_policy_has_docs_examples() -> None:
    for p in POLICIES:
        assert sum(1 for n, _ in accepted() if n.startswith(f"{p}/")) >= 2, p
