import os

# Before anything imports grpc: tests start children with a preexec_fn (resource limits, PR_SET_PDEATHSIG) while
# gRPC's threads may be busy in this process, and gRPC's fork handlers then crash some children between fork and
# exec (what kuma-dp itself avoids the same way, agent/__init__.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import pytest

from tests.requirements import RequireError, required_capabilities

pytest_plugins = ["tests.postgres_server"]


def pytest_configure(config: pytest.Config) -> None:
    try:
        required_capabilities()  # a typo in KUMA_TEST_REQUIRE must not silently require nothing
    except RequireError as e:
        raise pytest.UsageError(str(e)) from None
