"""The memory store against the conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controlplane.store.memory import MemoryStore
from tests.unit.store_conformance import StoreConformance


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        s = MemoryStore()
        await s.start()
        yield s
        await s.close()
