"""The PostgreSQL connection pool and what every part of the store shares (aiopg + psycopg2).

Each aggregate's SQL lives in its own module (tenants, counting, usage, outbox, migrations);
`Store` (store/__init__.py) composes them over one pool.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar
from weakref import WeakKeyDictionary

import aiopg
import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from ..events import TEXT_SEPARATOR
from .migrations import migration_files


class StoreUnavailable(Exception):
    """PostgreSQL cannot be reached right now; the caller should back off and retry."""


class Conflict(Exception):
    """A row with that identity already exists."""


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(error, psycopg2.extensions.TransactionRollbackError):
        return False  # deadlock / serialization: retry at once, PostgreSQL itself is fine
    if isinstance(error, RuntimeError):
        # uvloop closes the poll handle of a connection refused mid-connect; aiopg surfaces that as this.
        return "closed" in str(error)
    if isinstance(error, psycopg2.ProgrammingError):
        # An undefined table or column: the schema is behind the code (`flagmeter migrate` not run yet).
        # Like an outage, it is no fault of the event being written: wait, never dead-letter.
        return True
    return isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError | OSError | TimeoutError)


def ms_to_datetime(moment_ms: int) -> datetime:
    return datetime.fromtimestamp(moment_ms / 1000, UTC)


# The batch's columns travel as array literals ('{"a","b"}'), not as Python lists: psycopg2 turns a
# list into an ARRAY[...] expression of one constant per element, which costs PostgreSQL and the
# worker ~9 us per event each to build and parse; a literal costs under 1 us on each side, and
# written by orjson (C) a quarter of what joining Python strings costs.
# The events' text columns go cheaper still as one string of their values joined by TEXT_SEPARATOR,
# which SPLIT_TEXT turns back into an array: string_to_array reads it for less than array_in reads a
# literal (the counting statement -3.9 % of PostgreSQL's instructions per event), and joining costs the
# worker a tenth of writing the literal. Only for values that cannot hold the separator (the stream's
# decode refuses an entry whose text does).
SPLIT_TEXT = f"string_to_array(%s, chr({ord(TEXT_SEPARATOR)}))"  # holds a parameter's %s


def joined(values: Sequence[str]) -> str:
    return TEXT_SEPARATOR.join(values)


def text_array(values: Sequence[str]) -> str:
    # orjson writes a string as an array literal's element wants it ("..." with \" and \\) unless it
    # holds a control character, which JSON writes as an escape (\n, \u0001) that a literal would
    # misread: then escape by hand. Non-ASCII text stays as it is in both.
    literal = orjson.dumps(values)
    if b"\\" not in literal:
        return "{" + literal[1:-1].decode() + "}"
    return "{" + ",".join(['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]) + "}"


def int_array(values: Sequence[int]) -> str:
    try:
        return "{" + orjson.dumps(values)[1:-1].decode() + "}"
    except orjson.JSONEncodeError:  # beyond 64 bits: orjson cannot write it, str() can
        return "{" + ",".join(map(str, values)) + "}"


class Prepared:
    """A statement PostgreSQL parses and plans once per connection (PREPARE), then runs by name (EXECUTE).

    Sent as text, a statement is lexed, parsed, analysed and planned at every execution: for a batch's
    transaction ~500 us of the backend's CPU here, a third of what a one-event batch costs it (issue 15's
    fourteenth pass, docs/performance.md). EXECUTE's parameters still travel as literals (psycopg2
    writes them), so only the statement's own text is read once. A connection's prepared statements
    live as long as it does, whatever its transactions do (PREPARE is not rolled back), and PostgreSQL
    plans them again by itself after a migration changes their tables.
    """

    # The statements each connection has prepared. A connection whose PREPARE may or may not have run
    # (its reply lost) is not in it: the next `run` asks PostgreSQL before preparing again.
    _done: ClassVar[WeakKeyDictionary[Any, set[str]]] = WeakKeyDictionary()

    def __init__(self, name: str, sql: str) -> None:
        if not re.fullmatch("[a-z_][a-z0-9_]*", name):
            raise ValueError("a prepared statement's name is a lower-case identifier, as PostgreSQL keeps it")
        if "%%" in sql or "%(" in sql:
            raise ValueError("a prepared statement takes positional %s parameters only")
        parts = sql.split("%s")
        self.name = name
        self.definition = f"PREPARE {name} AS " + "".join(
            part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, 1)
        )
        self.execution = f"EXECUTE {name}({', '.join(['%s'] * (len(parts) - 1))})"

    async def run(self, cur: Any, params: Sequence[Any]) -> None:
        """Execute on `cur` with `params`, preparing it on the cursor's connection first if need be."""
        done = self._done.setdefault(cur.connection, set())
        if self.name not in done:
            await cur.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s", (self.name,))
            if not await cur.fetchall():
                await cur.execute(self.definition)
            done.add(self.name)
        try:
            await cur.execute(self.execution, params)
        except psycopg2.errors.FeatureNotSupported as error:
            if "cached plan must not change result type" not in str(error):
                raise
            # A migration changed the type of a column the statement returns. The connection, its
            # prepared statements with it, is closed (the pool drops it) and the caller retries on
            # another, as after an outage: no fault of the batch.
            self._done.pop(cur.connection, None)
            cur.connection.close()
            raise StoreUnavailable(f"{self.name} no longer fits the schema: {error}") from error


async def _roll_back(cur: Any) -> None:
    """ROLLBACK after a failure; a connection that cannot take it is gone, and the pool drops it."""
    try:
        await cur.execute("ROLLBACK")
    except (psycopg2.Error, OSError, RuntimeError):
        pass


class Database:
    """One aiopg pool; the aggregates' SQL (the Store's other bases) runs through `_cursor`."""

    def __init__(self, pool: aiopg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, size: int = 10, timeout: float = 10.0) -> Any:
        try:
            pool = await aiopg.create_pool(dsn, minsize=0, maxsize=size, timeout=timeout)
        except Exception as error:
            if _is_unavailable(error):
                raise StoreUnavailable(str(error)) from error
            raise
        return cls(pool)

    async def close(self) -> None:
        self._pool.close()
        await self._pool.wait_closed()

    @property
    def pool_size(self) -> int:
        return int(self._pool.size)

    @asynccontextmanager
    async def _cursor(self, *, transaction: bool = False, begun: bool = False) -> AsyncIterator[Any]:
        """A pooled connection's cursor. With `transaction` the block runs in one transaction (aiopg
        sends BEGIN); with `begun` the block's first statement opens it (`BEGIN; SELECT ...`, a round
        trip less). Either way it is committed when the block ends and rolled back when it raises."""
        try:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                if transaction:
                    async with cur.begin():
                        yield cur
                elif begun:
                    try:
                        yield cur
                    except BaseException:
                        await _roll_back(cur)
                        raise
                    await cur.execute("COMMIT")
                else:
                    yield cur
        except (psycopg2.Error, OSError, TimeoutError, RuntimeError) as error:
            if _is_unavailable(error):
                raise StoreUnavailable(str(error).strip() or type(error).__name__) from error
            raise

    async def _all(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        async with self._cursor() as cur:
            await cur.execute(sql, params)
            return list(await cur.fetchall())

    async def ping(self) -> None:
        """Reachable and migrated to what this code expects."""
        try:
            rows = await self._all("SELECT max(version) FROM schema_migrations")
        except StoreUnavailable as error:
            raise StoreUnavailable(f"schema not migrated: {error}") from error
        latest = migration_files()[-1][0]
        if not rows or rows[0][0] is None or rows[0][0] < latest:
            current = rows[0][0] if rows else None
            raise StoreUnavailable(f"schema at {current}, code needs {latest}: run flagmeter migrate")
