"""The per-process key and tenant cache: one reload at a time per key, stale values while it runs.

The loaders here are plain coroutines standing in for the store's lookups: what is under test is the
cache's own scheduling, which a real PostgreSQL would only make slower and less deterministic.
"""

from __future__ import annotations

import asyncio

import pytest

from flagmeter.api.cache import ShortCache
from flagmeter.store import StoreUnavailable


class Loader:
    """Answers `value` after `delay`, counting its calls; raises StoreUnavailable while `down`."""

    def __init__(self, value: str, delay: float = 0.05) -> None:
        self.value, self.delay, self.calls, self.down = value, delay, 0, False

    async def __call__(self, key: str) -> str | None:
        self.calls += 1
        value = self.value  # what the database held when the query ran
        await asyncio.sleep(self.delay)  # read now: a later call may be quicker
        if self.down:
            raise StoreUnavailable("postgres is down")
        return value


async def test_concurrent_requests_for_a_cold_key_share_one_load() -> None:
    cache: ShortCache[str, str] = ShortCache(ttl=10)
    load = Loader("tenant-a")
    assert await asyncio.gather(*(cache.get("k", load) for _ in range(50))) == ["tenant-a"] * 50
    assert load.calls == 1
    assert await cache.get("k", load) == "tenant-a" and load.calls == 1  # cached


async def test_while_an_expired_entry_reloads_the_others_get_the_expiring_value() -> None:
    cache: ShortCache[str, str] = ShortCache(ttl=0.05)
    load = Loader("old", delay=0.01)
    await cache.get("k", load)
    await asyncio.sleep(0.06)  # expired
    load.value, load.delay = "new", 0.2
    refresh = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0.01)
    others = await asyncio.wait_for(asyncio.gather(*(cache.get("k", load) for _ in range(20))), 0.1)
    assert others == ["old"] * 20  # at once, not after the 0.2 s reload
    assert await refresh == "new" and load.calls == 2
    assert await cache.get("k", load) == "new" and load.calls == 2


async def test_with_postgres_down_the_stale_value_is_served_and_a_cold_key_fails_for_every_waiter() -> None:
    cache: ShortCache[str, str] = ShortCache(ttl=0.01)
    load = Loader("tenant-a", delay=0.01)
    await cache.get("k", load)
    await asyncio.sleep(0.02)
    load.down = True
    assert await cache.get("k", load) == "tenant-a"
    results = await asyncio.gather(*(cache.get("cold", load) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    load.down = False
    assert await cache.get("cold", load) == "tenant-a"  # a failed load is not remembered


async def test_a_caller_that_goes_away_does_not_cancel_the_load_the_others_wait_for() -> None:
    cache: ShortCache[str, str] = ShortCache(ttl=10)
    load = Loader("tenant-a", delay=0.1)
    first = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == "tenant-a" and load.calls == 1


async def test_a_load_begun_before_forget_is_neither_kept_nor_handed_to_later_requests() -> None:
    cache: ShortCache[str, str] = ShortCache(ttl=10)
    load = Loader("before-revocation", delay=0.1)
    early = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0.01)
    cache.forget()  # e.g. a key revoked in this process while its lookup was in flight
    load.value, load.delay = "after-revocation", 0.01
    assert await cache.get("k", load) == "after-revocation"
    assert await early == "before-revocation"  # it asked first and ends last; it is not cached
    assert await cache.get("k", load) == "after-revocation" and load.calls == 2
