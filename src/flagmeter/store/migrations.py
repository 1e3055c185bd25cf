"""The schema: migrations/*.sql applied in order, each once, whoever runs `flagmeter migrate`."""

from __future__ import annotations

import functools
import logging
from importlib import resources

import aiopg

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x466C61674D6574  # "FlagMet": one advisory lock id for all migrators


@functools.cache
def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("flagmeter") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations in order, each in its own transaction, under one advisory lock."""
    applied_now: list[str] = []
    async with aiopg.connect(dsn, timeout=30) as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for version, sql in migration_files():
                if version in done:
                    continue
                async with cur.begin():
                    await cur.execute(sql)
                    await cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
                log.info("migration applied", extra={"version": version})
            await cur.execute("SELECT flagmeter_ensure_event_partitions(2, 3)")
        finally:
            await cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now
