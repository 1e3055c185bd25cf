"""A small per-process cache with single-flight reloads, for the key and tenant lookups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Generic, TypeVar

from ..store import StoreUnavailable

K = TypeVar("K")
V = TypeVar("V")


class ShortCache(Generic[K, V]):
    """Entries live `ttl` seconds, each reloaded by one request at a time (single flight).

    While a reload is in flight, other requests for the key get the expiring value instead of querying
    PostgreSQL too; with nothing cached they wait for that one reload. When reloading fails because
    PostgreSQL is down, the stale value is served.
    """

    def __init__(self, ttl: float, limit: int = 100_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._entries: dict[K, tuple[V | None, float]] = {}
        # The reload in flight per key; forget() drops it, so it is neither shared nor kept after that.
        self._loading: dict[K, asyncio.Future[V | None]] = {}

    async def get(self, key: K, load: Callable[[K], Awaitable[V | None]]) -> V | None:
        cached = self._entries.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key, load))
            self._loading[key] = loading
            loading.add_done_callback(partial(self._loaded, key))
        elif cached is not None:
            return cached[0]
        try:
            return await asyncio.shield(loading)  # a caller that goes away does not cancel the others'
        except StoreUnavailable:
            if cached is not None and cached[0] is not None:
                return cached[0]
            raise

    async def _load(self, key: K, load: Callable[[K], Awaitable[V | None]]) -> V | None:
        value = await load(key)
        if self._loading.get(key) is asyncio.current_task():  # not forgotten meanwhile
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[key] = (value, time.monotonic() + self.ttl)
        return value

    def _loaded(self, key: K, loading: asyncio.Future[V | None]) -> None:
        if self._loading.get(key) is loading:
            del self._loading[key]
        if not loading.cancelled():
            loading.exception()  # retrieved here, so a failure nobody awaited any more is not logged

    def forget(self, key: K | None = None) -> None:
        if key is None:
            self._entries.clear()
            self._loading.clear()
        else:
            self._entries.pop(key, None)
            self._loading.pop(key, None)
