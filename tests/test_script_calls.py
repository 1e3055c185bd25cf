"""Script calls pipelined on a connection of their own (script_calls.py), against a real Redis server:
each call gets its own reply or its own error, and a lost script cache or connection is recovered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from redis.exceptions import ResponseError

from flagmeter.script_calls import ScriptCalls
from stacklib import Stack

# Adds ARGV[1] to KEYS[1] and answers the new value; ARGV[1] 'fail' answers an error reply.
ADD_LUA = """
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[redis.Redis]:
    connection = redis.Redis.from_url(stack.redis_url)
    yield connection
    await connection.aclose()


async def test_concurrent_calls_share_round_trips_and_each_gets_its_own_reply(client: redis.Redis) -> None:
    script = client.register_script(ADD_LUA)
    key = f"script-calls:{uuid.uuid4().hex}"
    calls = ScriptCalls(client)
    try:
        await calls.call(script, [key], [0])  # loads nothing: EVALSHA's NOSCRIPT, then EVAL
        replies = await asyncio.gather(*(calls.call(script, [key], [n]) for n in range(1, 101)))
        # Atomic each, in the order made: the running sums of 1..n.
        assert replies == [n * (n + 1) // 2 for n in range(1, 101)]
        assert int(await client.get(key)) == 5050
    finally:
        await calls.close()
        await client.delete(key)


async def test_an_error_reply_fails_its_own_call_only(client: redis.Redis) -> None:
    script = client.register_script(ADD_LUA)
    key = f"script-calls:{uuid.uuid4().hex}"
    calls = ScriptCalls(client)
    try:
        results = await asyncio.gather(
            calls.call(script, [key], [1]),
            calls.call(script, [key], ["fail"]),
            calls.call(script, [key], [2]),
            return_exceptions=True,
        )
        assert results[0] == 1 and results[2] == 3
        assert isinstance(results[1], ResponseError) and "asked to fail" in str(results[1])
    finally:
        await calls.close()
        await client.delete(key)


async def test_a_flushed_script_cache_and_a_killed_connection_are_recovered(
    client: redis.Redis, stack: Stack
) -> None:
    name = f"script-calls-{uuid.uuid4().hex[:8]}"
    piped = redis.Redis.from_url(stack.redis_url, client_name=name)  # its connections carry the name
    script = client.register_script(ADD_LUA)
    key = f"script-calls:{uuid.uuid4().hex}"
    calls = ScriptCalls(piped)
    try:
        assert await calls.call(script, [key], [5]) == 5
        await client.script_flush()  # as a restarted Redis: its scripts are gone
        assert await asyncio.gather(*(calls.call(script, [key], [1]) for _ in range(3))) == [6, 7, 8]
        (pipe,) = [c for c in await client.client_list() if c["name"] == name]
        await client.client_kill_filter(_id=pipe["id"])  # as Redis closes it on a restart or a timeout
        assert await calls.call(script, [key], [2]) == 10  # sent once more, on a fresh connection
        assert int(await client.get(key)) == 10  # and run once: the killed connection never ran it
        assert [c["id"] for c in await client.client_list() if c["name"] == name] != [pipe["id"]]
    finally:
        await calls.close()
        await piped.aclose()
        await client.delete(key)
