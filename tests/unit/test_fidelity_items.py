"""The shared `from[]`/`to[]` checks (policies/_checks.py: check_from, check_to, refuse_to): every policy that
uses them gives the verdicts and messages it gave before they were shared.

golden/fidelity/from_to_verdicts.json was recorded from the per-policy code these helpers replaced: each case
is a document and the exact (field, reason) pairs, in order, of its answer (null: accepted). Entries changed
since then only where kuma-vm was aligned with Kuma 2.14 (rules forms, hash policies, to[] kinds under a
MeshGateway), each in the commit that made the change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.resources import ResourceValidationError, from_wire, load_all

REGISTRY = load_all()
GOLDEN = Path(__file__).parent / "golden" / "fidelity" / "from_to_verdicts.json"
CASES: dict[str, dict[str, Any]] = json.loads(GOLDEN.read_text())
POLICIES = Path(__file__).resolve().parents[2] / "controlplane" / "policies"


@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_item_checks_keep_each_policys_verdict_and_messages(case: str) -> None:
    doc, want = CASES[case]["doc"], CASES[case]["problems"]
    try:
        from_wire(doc, REGISTRY)
    except ResourceValidationError as e:
        got: list[list[str]] | None = [[p.field, p.reason] for p in e.invalid]
    else:
        got = None
    assert got == (None if want is None else [list(kv) for kv in want.items()])


def test_every_policy_kind_of_the_table_is_covered() -> None:
    kinds = {c["doc"]["type"] for c in CASES.values()}
    assert kinds >= {"MeshTrafficPermission", "MeshHealthCheck", "MeshFaultInjection", "MeshRateLimit",
                     "MeshAccessLog", "MeshCircuitBreaker", "MeshLoadBalancingStrategy", "MeshRetry",
                     "MeshTimeout"}


# (module, whether its to[] list is checked by check_to only: MeshTimeout checks route-only fields per to[] entry,
# MeshLoadBalancingStrategy's kinds under a MeshGateway depend on each entry)
SHARED = [("mesh_traffic_permission", True), ("mesh_health_check", True), ("mesh_fault_injection", True),
          ("mesh_rate_limit", True), ("mesh_access_log", True), ("mesh_circuit_breaker", True),
          ("mesh_load_balancing_strategy", False), ("mesh_retry", True), ("mesh_timeout", False)]


@pytest.mark.parametrize("module, shared_to", SHARED)
def test_policies_use_the_shared_checks_instead_of_their_own_copies(module: str, shared_to: bool) -> None:
    source = (POLICIES / f"{module}.py").read_text()
    assert "spec.from[].targetRef of" not in source
    assert not shared_to or "spec.to[].targetRef of" not in source
    assert "on the destination's inbounds only" not in source
