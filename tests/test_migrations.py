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
        cur.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass")
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
