"""KUMA_TEST_REQUIRE: a skip for a missing capability becomes a failure when the run requires it."""

from __future__ import annotations

import pytest

from tests import requirements
from tests.requirements import RequireError, required_capabilities, skip_mark, unavailable


def test_names_are_parsed_and_all_means_every_capability() -> None:
    assert required_capabilities("") == frozenset()
    assert required_capabilities(" lab , postgres,") == {"lab", "postgres"}
    assert required_capabilities("all") == frozenset(requirements.CAPABILITIES)


def test_an_unknown_name_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(RequireError) as err:
        required_capabilities("lab,postgress")
    assert "postgress" in str(err.value) and "postgres" in str(err.value) and "KUMA_TEST_REQUIRE" in str(err.value)


def test_unavailable_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUMA_TEST_REQUIRE", "postgres")
    with pytest.raises(pytest.skip.Exception, match="no lab here"):
        unavailable("lab", "no lab here")
    with pytest.raises(pytest.fail.Exception) as failed:
        unavailable("postgres", "no PostgreSQL binaries")
    assert "no PostgreSQL binaries" in str(failed.value) and "requires 'postgres'" in str(failed.value)


def test_skip_mark_does_not_skip_a_required_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUMA_TEST_REQUIRE", "envoy")
    assert skip_mark("envoy", True, "no envoy").args == (False,)
    monkeypatch.delenv("KUMA_TEST_REQUIRE")
    assert skip_mark("envoy", True, "no envoy").args == (True,)
    assert skip_mark("envoy", False, "no envoy").args == (False,)
