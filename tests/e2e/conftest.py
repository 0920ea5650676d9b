"""e2e tests boot real hosts in the lab (tests/lab): they need root, and are skipped, with the reason, without it.

The lab's fixtures (`lab`, see tests/lab/fixtures.py) are imported here rather than named in `pytest_plugins`:
pytest refuses `pytest_plugins` in a conftest below the rootdir when it collects the whole tests/ tree.
A top-level tests/conftest.py may say `pytest_plugins = ["tests.lab.fixtures"]` instead.
"""

import pytest

from tests.lab.fixtures import lab  # noqa: F401  (the session's lab fixture)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: boots lab hosts (root, debootstrap)")
