"""Kuma fidelity of validation: accept/refuse verdicts with the field paths, per resource type, written from
Kuma's documented rules (kumahq/kuma validators, kuma.io docs); structural and range problems in one
answer; unknown fields told apart from Kuma fields kuma-vm lacks."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.resources import ResourceValidationError, from_wire, load_all

REGISTRY = load_all()


def problems(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc, REGISTRY)
    return {p.field: p.reason for p in e.value.invalid}


def dataplane(networking: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": "dp-1", "networking": networking, **extra}


# --- structural and range problems in one answer (issue item 6) ---------------------------------------------


def test_dataplane_reports_type_and_range_errors_together() -> None:
    found = problems(dataplane({"address": "10.0.0.1", "inbound": [
        {"port": "80", "tags": {"kuma.io/service": "a"}},                       # type: cut, not checked
        {"port": 70000, "tags": {"kuma.io/service": "b"}},                      # range
        {"port": 81},                                                           # missing tags
        {"port": 80000, "tags": {"kuma.io/service": "c", "v": ""}, "colour": 1},  # unknown field + range
    ], "admin": {"port": "x"}}))
    assert set(found) == {
        "networking.inbound[0].port", "networking.inbound[1].port", "networking.inbound[2].tags",
        "networking.inbound[3].colour", "networking.inbound[3].port", 'networking.inbound[3].tags["v"]',
        "networking.admin.port",
    }
    assert "valid integer" in found["networking.inbound[0].port"]
    assert "[1, 65535]" in found["networking.inbound[1].port"] and "[1, 65535]" in found["networking.inbound[3].port"]


def test_findings_about_what_was_cut_are_not_reported() -> None:
    # The only inbound is refused structurally; "a dataplane needs at least one inbound" would describe the
    # trimmed copy, not the user's document.
    found = problems(dataplane({"address": "10.0.0.1", "inbound": [{"port": "80", "tags": {"kuma.io/service": "a"}}],
                                "outbound": [{"port": 0, "tags": {"kuma.io/service": "b"}}]}))
    assert set(found) == {"networking.inbound[0].port", "networking.outbound[0].port"}


def test_policy_reports_type_range_and_unknown_field_together() -> None:
    found = problems({"type": "MeshTimeout", "mesh": "default", "name": "t", "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": 5}},
               {"targetRef": {"kind": "MeshService", "name": "b"},
                "default": {"connectionTimeout": "-1s", "idleTimout": "1s"}}]}})
    assert set(found) == {"spec.to[0].default.idleTimeout", "spec.to[1].default.idleTimout",
                          "spec.to[1].default.connectionTimeout"}
    assert "did you mean 'idleTimeout'" in found["spec.to[1].default.idleTimout"]
    assert "negative" in found["spec.to[1].default.connectionTimeout"]


def test_positions_after_a_cut_element_keep_their_original_index() -> None:
    found = problems({"type": "MeshRetry", "mesh": "default", "name": "r", "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}},                                  # missing default: cut
               {"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": -1}}}]}})
    assert "spec.to[1].default.http.numRetries" in found and "spec.to[0].default" in found


def test_a_missing_required_top_field_reports_what_it_can() -> None:
    found = problems({"type": "Dataplane", "mesh": "default", "name": "dp-1", "networks": {}})
    assert found["networking"] == "field is required"
    assert "did you mean 'networking'" in found["networks"]
