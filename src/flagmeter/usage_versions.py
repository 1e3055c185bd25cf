"""Per-tenant usage versions in Redis: what a cached usage answer is checked against (api/usage.py).

The worker raises a tenant's version after the batch that bumped `tenants.usage_version` commits; an
API process raises it to an answer newer than Redis knows before showing that answer. It only ever rises.
"""

from __future__ import annotations

from typing import Any

from .stream import Stream, on_redis

# Per-tenant usage versions only ever rise: KEYS[i] becomes ARGV[i] unless it is already at or above it.
RAISE_VERSIONS_LUA = """
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[i])
  if (tonumber(redis.call('GET', key)) or -1) < version then redis.call('SET', key, version) end
end
return 0
"""


class UsageVersions:
    """The versions beside a stream (`<stream>:usage-version:<tenant>`), on the stream's Redis client."""

    def __init__(self, stream: Stream) -> None:
        self.client: Any = stream.client  # redis-py's asyncio stubs type replies too loosely to help
        self.stream_name = stream.name
        self._raise_versions = self.client.register_script(RAISE_VERSIONS_LUA)

    def _key(self, tenant: str) -> str:
        return f"{self.stream_name}:usage-version:{tenant}"

    async def raise_to(self, versions: dict[str, int]) -> None:
        """Raise each tenant's announced usage version to the given one (never lowers one).

        Redis's errors pass through, as `Stream.ack`'s do: the worker calls this before it acks.
        """
        if versions:
            keys = [self._key(tenant) for tenant in versions]
            await self._raise_versions(keys=keys, args=list(versions.values()))

    async def announced(self, tenant: str) -> int:
        """The tenant's announced usage version (0 before any); RedisUnavailable when unknowable."""
        return int(await on_redis(self.client.get(self._key(tenant))) or 0)

    async def announce(self, tenant: str, version: int) -> None:
        """`raise_to` for the API: RedisUnavailable when Redis cannot be reached."""
        await on_redis(self.raise_to({tenant: version}))
