"""Fixtures for integration tests.

pytest refuses `pytest_plugins` in a conftest below the root (`pytest tests` fails to collect), so plugin
modules' fixtures are imported here instead; add one import line per plugin.
"""

from tests.integration.cp_process import cp_factory, cp_process, started  # noqa: F401
from tests.integration.envoy_harness import app_factory, envoy_factory  # noqa: F401
