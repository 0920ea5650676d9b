import pytest

from tests.requirements import RequireError, required_capabilities

pytest_plugins = ["tests.postgres_server"]


def pytest_configure(config: pytest.Config) -> None:
    try:
        required_capabilities()  # a typo in KUMA_TEST_REQUIRE must not silently require nothing
    except RequireError as e:
        raise pytest.UsageError(str(e)) from None
