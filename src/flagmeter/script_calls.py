"""Lua script calls on a Redis connection of one process's own, around redis-py's client layer.

redis-py's client wraps each call in its connection pool, its retry and its script object; on this
machine that cost about as much CPU as the rest of the call (~250 -> ~130 us per call, appender.py's
measure). Here the calls made while a round trip is in flight go together in the next one, pipelined:
one write, the replies read in order, each call answered with its own reply or its own error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

T = TypeVar("T")
MAX_CALLS = 64  # per round trip: Redis runs a pipeline's scripts one after another, keep it short


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    keys: list[Any]
    args: list[Any]
    done: asyncio.Future[Any]


class GroupCommit(Generic[T]):
    """Items handed in while a batch of them is in flight go together in the next batch: one batch in
    flight at a time, each sent by `_send`, as many items as `_take` says."""

    def __init__(self) -> None:
        self._waiting: list[T] = []
        self._sending: asyncio.Task[None] | None = None

    def _enqueue(self, item: T) -> None:
        self._waiting.append(item)
        if len(self._waiting) == 1:
            asyncio.get_running_loop().call_soon(self._flush)  # after this turn: its items join

    def _flush(self) -> None:
        if not self._waiting or self._sending is not None:
            return  # the batch in flight flushes again when it ends
        take = self._take(self._waiting)
        batch, self._waiting = self._waiting[:take], self._waiting[take:]
        self._sending = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add_done_callback(self._sent)

    def _sent(self, _done: object) -> None:
        self._sending = None
        self._flush()

    def _take(self, waiting: list[T]) -> int:
        """How many of the waiting items the next batch takes (one at least)."""
        raise NotImplementedError

    async def _send(self, batch: list[T]) -> None:
        """Send `batch` and answer each item: it must not raise."""
        raise NotImplementedError


class ScriptConnection:
    """Script calls sent on a connection of their own, several in one round trip (pipelined). A round
    trip that meets a closed connection is sent once more on a fresh one, as redis-py's own retry
    does: only for scripts that may run twice (each of this project's either changes nothing the
    second time or says so). For a caller that already sends one round trip at a time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client: Any = client
        self._connection: Any = None

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.disconnect()

    async def call(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """`script`'s reply; its error reply, or the connection's error, raised."""
        (reply,) = await self.run([(script, keys, args)])
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def run(self, calls: list[tuple[AsyncScript, list[Any], list[Any]]]) -> list[Any]:
        """Each call's reply, in order, an error reply as its exception object; the connection's
        error raised."""
        if self._connection is None:
            self._connection = self.client.connection_pool.make_connection()
        connection = self._connection
        try:
            try:
                return await _run(connection, calls)
            except RedisConnectionError:
                # Redis closed this connection (it restarted, say): once more on a fresh one.
                await connection.disconnect(nowait=True)
                return await _run(connection, calls)
        except BaseException:
            await connection.disconnect(nowait=True)  # a late reply must not answer the next call
            raise


class ScriptCalls(GroupCommit[_Call]):
    """Script calls from many callers at once on one ScriptConnection: the calls made while a round
    trip is in flight go together in the next."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()  # one round trip at a time: one connection
        self._connection = ScriptConnection(client)

    async def close(self) -> None:
        await self._connection.close()

    async def call(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """`script`'s reply to `keys` and `args`; its error reply, or the connection's error, raised."""
        call = _Call(script, keys, args, asyncio.get_running_loop().create_future())
        self._enqueue(call)
        return await call.done

    def _take(self, waiting: list[_Call]) -> int:
        return min(len(waiting), MAX_CALLS)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._connection.run([(c.script, c.keys, c.args) for c in batch])
        except Exception as error:  # whatever it is, no call may wait forever on its future
            for call in batch:
                if not call.done.done():
                    call.done.set_exception(error)
            return
        for call, reply in zip(batch, replies, strict=True):
            if call.done.done():
                continue
            if isinstance(reply, ResponseError):
                call.done.set_exception(reply)
            else:
                call.done.set_result(reply)


async def _run(connection: Any, calls: list[tuple[AsyncScript, list[Any], list[Any]]]) -> list[Any]:
    commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
    await connection.send_packed_command(connection.pack_commands(commands))
    replies = [await _reply(connection) for _ in calls]
    for index, (script, keys, args) in enumerate(calls):
        if isinstance(replies[index], NoScriptError):  # Redis restarted and lost its script cache
            await connection.send_command("EVAL", script.script, len(keys), *keys, *args)
            replies[index] = await _reply(connection)
    return replies


async def _reply(connection: Any) -> Any:
    """The next reply, an error reply as its exception (it was read whole: the replies after it stay
    in step)."""
    try:
        return await connection.read_response()
    except ResponseError as error:
        return error
