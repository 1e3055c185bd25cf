"""store.base.Prepared on a real PostgreSQL: a statement is prepared once per connection, runs by name
from then on, and keeps running whatever the connection's transactions, a lost reply or a migration
did meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any

import aiopg
import pytest

from flagmeter.localstack import LocalStack
from flagmeter.store.base import Prepared, StoreUnavailable
from stacklib import fresh_database

SUM_SQL = "SELECT sum(v), %s::text FROM unnest(%s::bigint[]) AS v WHERE v > %s"


def _run(url: str, test: Any) -> Any:
    async def main() -> Any:
        async with aiopg.connect(url) as conn, conn.cursor() as cur:
            return await test(cur)

    return asyncio.run(main())


async def _executions(cur: Any, name: str) -> int:
    """How often the connection's prepared statement `name` ran (PostgreSQL 14 and later count plans)."""
    await cur.execute(
        "SELECT generic_plans + custom_plans FROM pg_prepared_statements WHERE name = %s", (name,)
    )
    rows = await cur.fetchall()
    return int(rows[0][0]) if rows else 0


def test_a_statement_is_numbered_for_prepare_and_executed_with_the_same_parameters() -> None:
    statement = Prepared("sums", SUM_SQL)
    assert statement.definition == (
        "PREPARE sums AS SELECT sum(v), $1::text FROM unnest($2::bigint[]) AS v WHERE v > $3"
    )
    assert statement.execution == "EXECUTE sums(%s, %s, %s)"
    for name, sql in (("Sums", SUM_SQL), ("sums-1", SUM_SQL), ("sums", "SELECT 1 %% 2"), ("s", "%(a)s")):
        with pytest.raises(ValueError):
            Prepared(name, sql)


def test_prepared_once_per_connection_then_run_by_name(servers: LocalStack) -> None:
    url = fresh_database(servers.database_url)
    statement = Prepared("sums_once", SUM_SQL)

    async def test(cur: Any) -> list[Any]:
        results = []
        for floor in (0, 2, 10):
            await statement.run(cur, ("x", "{1,2,3}", floor))
            results.append(await cur.fetchall())
        assert await _executions(cur, "sums_once") == 3  # one statement, run three times
        return results

    assert _run(url, test) == [[(6, "x")], [(3, "x")], [(None, "x")]]
    assert _run(url, test)[0] == [(6, "x")]  # a new connection prepares it again


def test_a_statement_prepared_without_the_reply_known_is_not_prepared_twice(servers: LocalStack) -> None:
    url = fresh_database(servers.database_url)
    statement = Prepared("sums_lost", SUM_SQL)

    async def test(cur: Any) -> Any:
        # PREPARE ran, but the process never heard (a timeout, a cancelled task): it is not marked done
        await cur.execute(statement.definition)
        await statement.run(cur, ("y", "{5}", 1))
        return await cur.fetchall()

    assert _run(url, test) == [(5, "y")]


def test_a_rolled_back_transaction_and_a_migration_leave_it_running(servers: LocalStack) -> None:
    url = fresh_database(servers.database_url)
    statement = Prepared("totals_kept", "SELECT count(*), sum(n) FROM things WHERE n >= %s")

    async def test(cur: Any) -> list[Any]:
        await cur.execute("CREATE TABLE things (n bigint)")
        await cur.execute("INSERT INTO things VALUES (1), (2), (3)")
        results = []
        await cur.execute("BEGIN")
        await statement.run(cur, (2,))  # prepared in a transaction that then fails
        results.append(await cur.fetchall())
        with pytest.raises(Exception, match="division by zero"):
            await cur.execute("SELECT 1 / 0")
        await cur.execute("ROLLBACK")  # PREPARE is not undone: it stays prepared, as it is marked
        await statement.run(cur, (3,))
        results.append(await cur.fetchall())
        # A migration changes the table under the prepared plan: PostgreSQL plans it again by itself.
        await cur.execute("ALTER TABLE things ADD COLUMN label text DEFAULT 'x', ALTER COLUMN n TYPE numeric")
        await cur.execute("CREATE INDEX things_n ON things (n)")
        await statement.run(cur, (1,))
        results.append(await cur.fetchall())
        return results

    assert _run(url, test) == [[(2, 5)], [(1, 3)], [(3, 6)]]


def test_a_migration_that_changes_what_it_returns_closes_the_connection_for_a_retry(
    servers: LocalStack,
) -> None:
    url = fresh_database(servers.database_url)
    statement = Prepared("values_retyped", "SELECT n FROM things ORDER BY n DESC LIMIT %s")

    async def main() -> list[Any]:
        conn = await aiopg.connect(url)
        try:
            cur = await conn.cursor()
            await cur.execute("CREATE TABLE things (n bigint); INSERT INTO things VALUES (1), (2)")
            await statement.run(cur, (1,))
            rows: list[Any] = [await cur.fetchall()]
            await cur.execute("ALTER TABLE things ALTER COLUMN n TYPE text")
            with pytest.raises(StoreUnavailable, match="no longer fits the schema"):
                await statement.run(cur, (1,))
            assert conn.closed  # its prepared statements went with it
        finally:
            await conn.close()
        async with aiopg.connect(url) as again, again.cursor() as fresh:
            await statement.run(fresh, (1,))  # a new connection prepares it for the new schema
            rows.append(await fresh.fetchall())
        return rows

    assert asyncio.run(main()) == [[(2,)], [("2",)]]
