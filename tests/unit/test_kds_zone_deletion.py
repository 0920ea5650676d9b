"""Deleting a Zone on global deletes its ZoneInsight, and nothing this instance still holds writes it back."""

from __future__ import annotations

import pytest

from controlplane.kds.zone_insights import ZoneInsights
from controlplane.resources.zone import ZONE_INSIGHT
from controlplane.store.base import NotFound
from controlplane.store.memory import MemoryStore


async def insights() -> tuple[MemoryStore, ZoneInsights]:
    store = MemoryStore()
    await store.start()
    return store, ZoneInsights(store, "global-a", dict)


async def test_a_deleted_zones_closing_connection_does_not_write_its_insight_back() -> None:
    store, zi = await insights()
    zi.opened("zone-1", version="1.0", environment="universal")
    await zi.flush()
    assert (await store.get(ZONE_INSIGHT, "zone-1")).spec.subscriptions
    zi.forget("zone-1")  # the Zone's deletion is seen
    zi.closed("zone-1")  # then its streams close, as the deletion kicked them
    assert await zi.remove("zone-1") is True
    await zi.flush()
    with pytest.raises(NotFound):
        await store.get(ZONE_INSIGHT, "zone-1")
    assert await zi.remove("zone-1") is False  # nothing left: not an error


async def test_a_zone_that_registered_again_gets_a_fresh_insight_without_the_old_history() -> None:
    store, zi = await insights()
    zi.opened("zone-1", version="1.0", environment="universal")
    await zi.flush()
    [old] = (await store.get(ZONE_INSIGHT, "zone-1")).spec.subscriptions
    zi.forget("zone-1")
    zi.opened("zone-1", version="1.0", environment="universal")  # reconnected before the insight was deleted
    await zi.flush()
    assert await zi.remove("zone-1") is True
    await zi.flush()  # remove() marked the new connection to be written again
    subs = (await store.get(ZONE_INSIGHT, "zone-1")).spec.subscriptions
    assert [s.id for s in subs] != [old.id] and old.id not in {s.id for s in subs} and len(subs) == 1
