"""Migrations: ordered, recorded, idempotent, and safe when several containers start at once."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg2

from flagmeter.localstack import LocalStack
from flagmeter.store import migration_files
from stacklib import fresh_database


def test_two_migrate_processes_started_together_both_succeed_and_leave_one_schema(
    servers: LocalStack,
) -> None:
    url = fresh_database(servers.database_url)
    env = {**os.environ, "DATABASE_URL": url}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "flagmeter.cli", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=60)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [row[0] for row in cur.fetchall()] == [version for version, _ in migration_files()]
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'tenants'")
        assert cur.fetchone() == (1,)
        cur.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'event_log'::regclass")
        assert cur.fetchone()[0] >= 6  # default + months around now


def test_migrate_again_applies_nothing(servers: LocalStack) -> None:
    url = fresh_database(servers.database_url)
    env = {**os.environ, "DATABASE_URL": url}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "flagmeter.cli", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    assert '"applied":[]' in done.stdout.replace(" ", "")


def _schema_before(version: str, servers: LocalStack) -> str:
    """A fresh database with the migrations before `version` applied and recorded, as an older release
    left it."""
    url = fresh_database(servers.database_url)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz)")
        for name, sql in migration_files():
            if name < version:
                cur.execute(sql)
                cur.execute("INSERT INTO schema_migrations VALUES (%s, now())", (name,))
    conn.close()
    return url


def _migrate(url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "flagmeter.cli", "migrate"],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        check=True,
    )


def test_raw_events_stored_a_row_each_before_0009_are_carried_into_the_event_log(servers: LocalStack) -> None:
    url = _schema_before("0009", servers)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        # The schema as 0008 left it, with 9,001 raw events over three months (one in the default partition),
        # their times to the millisecond as the worker stored them
        cur.execute(
            "INSERT INTO events (tenant_id, event_id, feature, tokens, occurred_at, received_at)"
            " SELECT 'tenant-' || i % 3, 'id-' || i, 'chat', i, t - i * interval '7 minutes 0.123 seconds',"
            "        t - i * interval '7 minutes' FROM generate_series(1, 9000) AS i,"
            "        date_trunc('milliseconds', now()) AS t"
            " UNION ALL"
            " SELECT 'tenant-0', 'id-old', 'embed', 5, '2019-12-31 23:59:59.5+00', '2020-01-01 00:00+00'"
        )
        cur.execute("SELECT tenant_id, event_id, feature, tokens, occurred_at, received_at FROM events")
        before = sorted(cur.fetchall())
    conn.close()
    _migrate(url)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tenant_id, event_id, feature, tokens, occurred_at, received_at FROM events")
        assert sorted(cur.fetchall()) == before
        cur.execute("SELECT count(*), sum(cardinality(event_ids)) FROM event_log")
        assert cur.fetchone() == (3, 9001)  # batches of up to 4,000 in received order
        cur.execute("SELECT count(*) FROM event_log_default")
        assert cur.fetchone() == (0,)  # each batch in its month's partition, 2020's too
        cur.execute("SELECT to_regclass('events_before_0009'), to_regclass('event_log_2020_01')")
        assert cur.fetchone() == (None, "event_log_2020_01")
    conn.close()


def test_ledger_rows_from_before_0010_still_make_their_events_duplicates(servers: LocalStack) -> None:
    url = _schema_before("0010", servers)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO event_ids VALUES ('acme', 'e-1', now()), ('globex', 'e-1', now())")
    conn.close()
    _migrate(url)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO event_ids VALUES ('acme', 'e-1', now()), ('acme', 'e-2', now()),"
            " ('initech', 'e-1', now()) ON CONFLICT DO NOTHING RETURNING tenant_id, event_id"
        )
        assert sorted(cur.fetchall()) == [("acme", "e-2"), ("initech", "e-1")]
        cur.execute(
            "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_index i"
            " CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = 'event_ids'::regclass AND i.indisprimary"
        )
        assert cur.fetchone() == (["event_id", "tenant_id"],)
    conn.close()
