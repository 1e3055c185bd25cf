"""The Redis stream between API and worker: append (appender.py), read, ack, reclaim, dead-letter.

A Stream owns the Redis client; the other Redis data lives beside the stream, on its client and named
after it: the quota figures (quota_figures.py, tally.py), usage versions (usage_versions.py) and failed
sign-ins (sign_in_failures.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .appender import APPEND_ENTRY_LUA, MAX_APPEND_BYTES, Appender, RateLimited, RedisUnavailable, on_redis
from .clock import SYSTEM, Clock
from .config import Settings
from .events import TEXT_SEPARATOR, Columns, Event, all_of_type, columns
from .quota import tally_columns
from .quota_figures import MAX_MERGE_LUA, TALLY_LUA, QuotaKeys

__all__ = [
    "Backlog",
    "Entry",
    "RateLimited",
    "RedisUnavailable",
    "Stream",
    "consumer_name",
    "decode",
    "encode",
    "encode_columns",
    "on_redis",
]

# Ack, delete, and in the same call take each really acknowledged entry's tally off the pending figures
# and merge the batch's absolute daily totals into the counted ones: a reader sees the events pending or
# counted, never neither. XACK answers 0 for an entry acked before (a redelivery, a dead worker's
# batch), so nothing is taken off twice.
# KEYS: stream, pending, counted. ARGV: group, n, n entry ids, then (day field, total) pairs.
ACK_LUA = (
    TALLY_LUA
    + MAX_MERGE_LUA
    + """
local n = tonumber(ARGV[2])
local acked = 0
for i = 3, 2 + n do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    acked = acked + 1
    local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if entry[1] then add_tally(KEYS[2], entry[1][2], -1) end
  end
  redis.call('XDEL', KEYS[1], ARGV[i])
end
max_merge(KEYS[3], 3 + n)
return acked
"""
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: the events one request had accepted, as columns (events.Columns), one group per
    run of one tenant; `groups` is None when the payload is undecodable."""

    id: str
    payload: bytes
    groups: tuple[Columns, ...] | None
    deliveries: int = 1

    @property
    def size(self) -> int:
        """How many events the entry holds (none when undecodable)."""
        return sum(len(group[2]) for group in self.groups or ())


@dataclass(frozen=True, slots=True)
class Backlog:
    length: int
    pending: int
    oldest_ms: int | None
    dead_letters: int


# A stream entry's field `e` holds the events of one request, as JSON. Written now: columns, one group per
# run of events of one tenant and received time (a request's events share its received time, and a
# tenant key's its tenant: one group, but for an admin's batch of several tenants):
#     [[tenant, received_ms, [id, ...], [feature, ...], [tokens, ...], [occurred_ms, ...]], ...]
# Tenant and received time are written once, and encoding and decoding run in C, not per event in
# Python. Read, and not yet written: the same group without its last column, every event of it having
# occurred when received (30 % of a batch without client timestamps). A release may write it once every
# worker it replaces reads it: a worker that cannot read a form dead-letters its entries as malformed,
# which takes them off the pending quota figures until the next worker to start puts them back.
# Still read, as entries from before (a rolling upgrade; the dead-letter stream, replayable):
#     [[tenant, id, feature, tokens, occurred_ms, received_ms], ...]   a row per event
#     [tenant, id, feature, tokens, occurred_ms, received_ms]          one bare row


def encode(events: Sequence[Event]) -> bytes:
    return encode_columns(columns(events))


def encode_columns(groups: Sequence[Columns]) -> bytes:
    return orjson.dumps(groups)


def decode(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Entry:
    """An entry as read from the stream; its `groups` are None when its payload is malformed."""
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    payload = fields.get(b"e", b"")
    try:
        groups = orjson.loads(payload)
        if groups and not isinstance(groups[0], list):
            groups = [groups]  # one bare row
        if groups and type(groups[0][1]) is str:  # rows: the second of a row is an event id
            decoded: tuple[Columns, ...] | None = tuple(columns(_from_rows(groups))) or None
        else:
            decoded = _from_columns(groups) or None
        if decoded and not all(map(_countable_text, decoded)):
            decoded = None
    except (orjson.JSONDecodeError, ValueError, TypeError, IndexError, KeyError):
        decoded = None
    return Entry(ident, payload, decoded)


def _countable_text(group: Columns) -> bool:
    """No text of the group is empty or holds TEXT_SEPARATOR: the counting statement's split would read
    either as a value more or less (the API accepts neither: an entry that has one was not written by it)."""
    tenant, _, ids, features, _, _ = group
    return (
        all(ids)
        and all(features)
        and bool(tenant)
        and TEXT_SEPARATOR not in tenant + "".join(ids) + "".join(features)
    )


def _from_columns(groups: list[Any]) -> tuple[Columns, ...]:
    """ValueError (or TypeError) on any malformed group. No Python runs per event: the columns' types
    are checked by set(map(type, ...)), and the lists JSON gave are kept as they are."""
    checked: list[Columns] = []
    for group in groups:
        if type(group) is not list or len(group) not in (5, 6):
            raise ValueError("malformed stream group")
        tenant, received_ms, ids, features, tokens = group[:5]
        n = len(ids) if type(ids) is list else 0
        occurred = group[5] if len(group) == 6 else [received_ms] * n
        if not (
            type(tenant) is str
            and type(received_ms) is int
            and _column_of(ids, str)
            and _column_of(features, str)
            and _column_of(tokens, int)
            and _column_of(occurred, int)
            and n == len(features) == len(tokens) == len(occurred)
        ):
            raise ValueError(f"malformed stream group: {tenant!r}, {received_ms!r}")
        checked.append((tenant, received_ms, ids, features, tokens, occurred))
    return tuple(checked)


def _column_of(values: Any, kind: type) -> bool:
    return type(values) is list and all_of_type(values, kind)  # an empty column is malformed


def _from_rows(rows: list[Any]) -> tuple[Event, ...]:
    """ValueError (or TypeError) on any malformed row."""
    events = []
    for row in rows:
        tenant, event_id, feature, tokens, occurred_ms, received_ms = row
        if not (
            type(tenant) is str
            and type(event_id) is str
            and type(feature) is str
            and type(tokens) is int
            and type(occurred_ms) is int
            and type(received_ms) is int
        ):
            raise ValueError(f"malformed stream row: {row!r}")
        events.append(tuple.__new__(Event, (tenant, event_id, feature, tokens, occurred_ms, received_ms)))
    return tuple(events)


# Dead letters back onto the stream: each one claimed by deleting it, and appended (with its tally) only
# if this call's XDEL removed it, so two workers or commands putting back at once never both append one.
# KEYS: stream, pending, dead-letter stream. ARGV: (dead letter id, payload, tally) triples.
PUT_BACK_LUA = (
    APPEND_ENTRY_LUA
    + """
local moved = 0
for i = 1, #ARGV, 3 do
  if redis.call('XDEL', KEYS[3], ARGV[i]) == 1 then
    append_entry(KEYS[1], KEYS[2], ARGV[i + 1], ARGV[i + 2])
    moved = moved + 1
  end
end
return moved
"""
)
# How many of the newest dead letters a starting worker looks through for entries it can read now
# (Stream.replay_readable): those of a rolling upgrade are the newest; `flagmeter dead-letters --readable`
# looks through any number.
READABLE_SCAN = 10_000
PUT_BACK_PAGE = 100  # dead letters read at a time: ~40 KB for a 550-event entry, ~200 KB at most


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Stream:
    def __init__(
        self, client: redis.Redis, stream: str, group: str, dead_letter: str, clock: Clock = SYSTEM
    ) -> None:
        self.client: Any = client  # redis-py's asyncio stubs type replies too loosely to help
        self.name = stream
        self.group = group
        self.dead_letter = dead_letter
        self.clock = clock
        self.quota_keys = QuotaKeys.beside(stream)
        self._appender = Appender(client, stream, self.quota_keys, clock)
        self._ack = client.register_script(ACK_LUA)
        self._put_back_script = client.register_script(PUT_BACK_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        stream: str,
        group: str,
        dead_letter: str,
        *,
        connections: int = 32,
        clock: Clock = SYSTEM,
    ) -> Stream:
        # A blocking pool: under a burst, requests wait (up to 5 s) for a connection instead of
        # failing with MaxConnectionsError, which would be a 503 while Redis is perfectly healthy.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=connections, timeout=5,
            socket_timeout=5, socket_connect_timeout=2, health_check_interval=30,
        )  # fmt: skip
        return cls(redis.Redis(connection_pool=pool), stream, group, dead_letter, clock)

    @classmethod
    def from_settings(cls, settings: Settings) -> Stream:
        return cls.from_url(
            settings.redis_url,
            settings.stream,
            settings.consumer_group,
            settings.dead_letter_stream,
            clock=settings.clock,
        )

    async def close(self) -> None:
        await self._appender.close()
        await self.client.aclose()

    async def ping(self) -> None:
        await on_redis(self.client.ping())

    async def append(
        self,
        groups: list[Columns],
        *,
        tenant: str | None,
        rate: int,
        settle: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Append a request's accepted events, as columns (events.columns), as one entry (see
        appender.Appender): charged to `tenant`'s request bucket first when given, settling the
        `settle` holds; the answer is how many of those were still held."""
        return await self._appender.append(  # encoded and tallied from the same columns
            encode_columns(groups), tally_columns(groups), tenant=tenant, rate=rate, settle=settle
        )

    # -- consumer side ------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.name, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for `consumer`; waits up to `block_ms` for some (None: answer at once)."""
        try:
            reply = await self.client.xreadgroup(
                self.group, consumer, {self.name: ">"}, count=count, block=block_ms
            )
        except ResponseError as error:
            if "NOGROUP" in str(error):
                await self.ensure_group()
                return []
            raise
        return [decode(i, f) for _, entries in reply or [] for i, f in entries]

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries idle longer than `min_idle_ms` (a dead or stuck consumer's)."""
        try:
            reply = await self.client.xautoclaim(
                self.name, self.group, consumer, min_idle_ms, start_id="0-0", count=count
            )
        except ResponseError as error:
            if "NOGROUP" in str(error):
                await self.ensure_group()
                return []
            raise
        entries = [decode(i, f) for i, f in reply[1] if f is not None]
        if not entries:
            return []
        pending = await self.client.xpending_range(
            self.name,
            self.group,
            min=entries[0].id,
            max=entries[-1].id,
            count=len(entries) * 2,
            consumername=consumer,
        )
        deliveries = {
            (p["message_id"].decode() if isinstance(p["message_id"], bytes) else p["message_id"]): int(
                p["times_delivered"]
            )
            for p in pending
        }
        return [Entry(e.id, e.payload, e.groups, deliveries.get(e.id, 1)) for e in entries]

    def _ack_call(self, ids: Sequence[str], totals: Sequence[tuple[str, int]], client: Any = None) -> Any:
        keys = [self.name, self.quota_keys.pending, self.quota_keys.counted]
        args = [self.group, len(ids), *ids, *[value for pair in totals for value in pair]]
        return self._ack(keys=keys, args=args, client=client)

    async def ack(self, ids: Sequence[str], totals: Sequence[tuple[str, int]] = ()) -> None:
        """Acknowledge and delete: the stream then holds only what is not yet counted.

        `totals` are the committed batch's absolute (day field, tokens) totals, merged into the counted
        figures in the same call that takes the entries off the pending ones.
        """
        if ids:
            await self._ack_call(ids, totals)

    async def dead_letter_entries(self, entries: Sequence[Entry], reason: str) -> None:
        """Move entries to the dead-letter stream, then ack them off the main stream."""
        if not entries:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            for entry in entries:
                pipe.xadd(
                    self.dead_letter,
                    {
                        "e": entry.payload,
                        "source_id": entry.id,
                        "reason": reason,
                        "deliveries": str(entry.deliveries),
                    },
                )
            await self._ack_call([e.id for e in entries], (), client=pipe)  # queued in the transaction
            await pipe.execute()

    async def dead_letter_summary(self) -> dict[str, int]:
        """Dead-lettered entries by reason."""
        reasons: dict[str, int] = {}
        last = "-"
        while True:
            batch = await self.client.xrange(self.dead_letter, min=last, count=1000)
            batch = [(i, f) for i, f in batch if i != last]
            if not batch:
                return reasons
            for _, fields in batch:
                reason = fields.get(b"reason", b"unknown").decode()
                reasons[reason] = reasons.get(reason, 0) + 1
            last = batch[-1][0]

    async def replay_dead_letters(self, count: int, through: str = "+") -> tuple[int, int]:
        """Put back up to `count` of the oldest dead letters, up to the id `through` (inclusive): how
        many this call read, and how many of those it moved (another put-back may have taken some).
        Dedup makes a replay safe."""
        entries = await self.client.xrange(self.dead_letter, max=through, count=count)
        return len(entries), await self._put_back([decode(i, f) for i, f in entries])

    async def last_dead_letter(self) -> str:
        """The newest dead letter's id ("0-0" if none): where a replay of what is there now stops."""
        newest = await self.client.xrevrange(self.dead_letter, count=1)
        return newest[0][0].decode() if newest else "0-0"

    async def replay_readable(self, newest: int = READABLE_SCAN) -> int:
        """Put back on the stream those of the `newest` dead letters that were dead-lettered as malformed
        and that this code reads: an older worker's, which could not read a newer API's entries during a
        rolling upgrade. The API accepted them (202), so they are due to be counted; the dedup ledger
        counts each once. A page at a time, newest first (counting does not mind the order)."""
        moved, scanned, before = 0, 0, "+"
        while scanned < newest:
            count = min(PUT_BACK_PAGE, newest - scanned)
            page = await self.client.xrevrange(self.dead_letter, max=before, count=count)
            if not page:
                break
            scanned += len(page)
            before = "(" + page[-1][0].decode()  # exclusive: older than the page's oldest
            malformed = [decode(i, f) for i, f in page[::-1] if f.get(b"reason") == b"malformed"]
            moved += await self._put_back([entry for entry in malformed if entry.groups])
        return moved

    async def _put_back(self, entries: Sequence[Entry]) -> int:
        """Dead letters back onto the stream with their tallies, pending again: a script call each time
        MAX_APPEND_BYTES of entries are gathered (Redis runs each atomically: keep it short). Each call
        deletes before it adds, so Redis runs it even at its maxmemory: moving is about memory-neutral."""
        moved, size = 0, 0
        args: list[str | bytes] = []
        keys = [self.name, self.quota_keys.pending, self.dead_letter]
        for entry in entries:  # decoded dead letters: `id` the dead letter's, to delete
            args += [entry.id, entry.payload, tally_columns(entry.groups or ())]
            size += len(entry.payload)
            if size >= MAX_APPEND_BYTES:
                moved += int(await self._put_back_script(keys=keys, args=args))
                args, size = [], 0
        if args:
            moved += int(await self._put_back_script(keys=keys, args=args))
        return moved

    async def backlog(self) -> Backlog:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xlen(self.name)
            pipe.xrange(self.name, count=1)
            pipe.xlen(self.dead_letter)
            pipe.xpending(self.name, self.group)
            length, first, dead, pending = await pipe.execute(raise_on_error=False)
        oldest = None
        if isinstance(first, list) and first:
            first_id = first[0][0]
            first_id = first_id.decode() if isinstance(first_id, bytes) else first_id
            oldest = int(first_id.split("-")[0])
        pending_count = int(pending["pending"]) if isinstance(pending, dict) else 0
        return Backlog(
            int(length) if isinstance(length, int) else 0,
            pending_count,
            oldest,
            int(dead) if isinstance(dead, int) else 0,
        )


TRANSIENT_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
