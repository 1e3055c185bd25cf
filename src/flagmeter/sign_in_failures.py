"""Failed dashboard sign-ins per client address, counted in Redis so every API process shares one count.

The throttle that acts on the count, and its in-memory fallback for a Redis outage, are in
api/dashboard/signin.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .stream import Stream, on_redis

# One failed dashboard sign-in of an address: its count in a fixed window of ARGV[1] ms, shared by every
# API process. The expiry is set when the window opens (or if a key somehow has none). Reply: count, ms left.
COUNT_FAILURE_LUA = """
local count = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""
SIGN_IN_TIMEOUT_S = 1.0  # a sign-in does not wait longer than this for Redis


class SignInFailures:
    """The counts beside a stream (`<stream>:sign-in-failures:<address>`), on the stream's Redis client."""

    def __init__(self, stream: Stream) -> None:
        self.client: Any = stream.client  # redis-py's asyncio stubs type replies too loosely to help
        self.stream_name = stream.name  # the keys are beside the stream: previews sharing a Redis apart
        self._count_failure = self.client.register_script(COUNT_FAILURE_LUA)

    def _key(self, address: str) -> str:
        return f"{self.stream_name}:sign-in-failures:{address}"

    async def count(self, address: str, window_ms: int) -> tuple[int, int]:
        """Count one failure of `address`; (failures in its window, ms until the window ends)."""
        call = self._count_failure(keys=[self._key(address)], args=[window_ms])
        reply = await on_redis(asyncio.wait_for(call, SIGN_IN_TIMEOUT_S))
        return int(reply[0]), int(reply[1])

    async def current(self, address: str) -> tuple[int, int]:
        """(failures of `address` in its current window, ms until it ends); (0, 0) with none."""
        count, left = await on_redis(self._current(self._key(address)))
        return (int(count), int(left)) if count is not None and int(left) > 0 else (0, 0)

    async def _current(self, key: str) -> list[Any]:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            return list(await asyncio.wait_for(pipe.execute(), SIGN_IN_TIMEOUT_S))
