"""The service under test, brought up the way `make run` does: throwaway PostgreSQL and Redis in a fresh
directory (unless DATABASE_URL/REDIS_URL are set), migrations, then one worker and `flagmeter api
--processes N` through the launcher the tests use, each a child of the harness whose pid the resource
sampler follows.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psycopg2
import yaml
from bench.procs import MemoryCgroup, pid_of_command

from flagmeter import launch
from flagmeter.launch import Process
from flagmeter.localstack import LocalStack


@dataclass
class Stack(launch.Stack):
    api: Process | None = None
    api_processes: int = 0
    worker: Process | None = None
    server_pids: dict[str, int] = field(default_factory=dict)

    def start_api(self, processes: int = 2, until: str = "/ready", **env: str) -> tuple[Process, str]:
        """A new API of `processes` processes in place of the running one, on the same port."""
        if self.api is not None:
            self.api.stop()
            self.processes.remove(self.api)
        port = self.api_url.rsplit(":", 1)[1] if self.api_url else ""
        self.api, self.api_url = super().start_api(
            processes, until, **({"PORT": port} if port else {}), **env
        )
        self.api_processes = processes
        return self.api, self.api_url

    def roles(self) -> dict[str, int]:
        """Root pid of each role, for the resource sampler."""
        assert self.api and self.worker
        return {"api": self.api.pid, "worker": self.worker.pid, **self.server_pids}

    def cgroups(self) -> dict[str, MemoryCgroup]:
        return {}  # the roles share the harness's cgroup: only the compose stack has one per role

    def database_collation(self) -> str:
        """The database's collation as PostgreSQL reports it (a DATABASE_URL's server has its own)."""
        return sql_value(self.database_url, COLLATION_SQL)

    def warm_wal(self) -> int:
        return warm_wal(partial(sql_value, self.database_url))


# The throwaway cluster's locale: the official postgres image's (it sets LANG=en_US.utf8; so does its
# stand-in, tests/images/postgres), under which PostgreSQL compares text with glibc's rules for English.
# Runs whose JSON has no `database_locale` used the machine's (C.UTF-8): `bench/run.py --locale C.UTF-8`
# repeats them.
DATABASE_LOCALE = "en_US.UTF-8"
COLLATION_SQL = "SELECT datcollate FROM pg_database WHERE datname = current_database()"

# The production stack's PostgreSQL settings, which the throwaway cluster runs too.
PRODUCTION_COMPOSE = Path(__file__).resolve().parents[1] / "compose" / "docker-compose.yml"


def production_postgres_settings() -> list[str]:
    """The `-c name=value` arguments of the postgres service in compose/docker-compose.yml."""
    services = yaml.safe_load(PRODUCTION_COMPOSE.read_text())["services"]
    program, *arguments = services["postgres"]["command"]
    flags, settings = arguments[0::2], arguments[1::2]
    if program != "postgres" or set(flags) != {"-c"} or len(flags) != len(settings):
        raise ValueError(f"{PRODUCTION_COMPOSE}: postgres's command is not `postgres -c name=value ...`")
    return [str(setting) for setting in settings]


# A server that has been running holds up to max_wal_size of old WAL segments, which each checkpoint
# renames for reuse; a fresh cluster writes every new 16 MB segment full of zeros first, in the backend
# that needs it (~34 MB of WAL a second under batches). Before the steps (unless --cold-wal) the bench
# switches through as many segments as max_wal_size holds, one small commit each, and a checkpoint then
# keeps them all for reuse (its estimate of the next cycle's WAL is that distance).
WARM_WAL_SQL = """
DO $$
BEGIN
    FOR i IN 1 .. pg_size_bytes(current_setting('max_wal_size'))
                / pg_size_bytes(current_setting('wal_segment_size')) LOOP
        PERFORM txid_current();
        COMMIT;
        PERFORM pg_switch_wal();
    END LOOP;
END $$
"""
WAL_SEGMENTS_SQL = "SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'"


def warm_wal(sql: Callable[[str], str]) -> int:
    """Ready the WAL segments a running server would have (WARM_WAL_SQL), through `sql` (one statement
    in a transaction of its own, as a superuser); how many segments pg_wal then holds."""
    sql(WARM_WAL_SQL)
    sql("CHECKPOINT")
    return int(sql(WAL_SEGMENTS_SQL))


def sql_value(database_url: str, query: str) -> str:
    """One statement in a transaction of its own; the first column of its first row as text ("" if none)."""
    conn = psycopg2.connect(database_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone() if cur.description else None
    finally:
        conn.close()
    return "" if row is None else str(row[0])


def _servers(run_dir: Path, locale: str) -> tuple[LocalStack | None, str, str]:
    """The servers in the environment's URLs, or fresh local ones under `run_dir`."""
    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if database_url and redis_url:
        return None, database_url, redis_url
    servers = LocalStack(run_dir / "data", locale=locale, settings=production_postgres_settings())
    servers.start()
    return servers, servers.database_url, servers.redis_url


@contextlib.contextmanager
def running_stack(run_dir: Path, api_processes: int, locale: str = DATABASE_LOCALE) -> Iterator[Stack]:
    """A stack logging into `run_dir`; its data is deleted afterwards so each run starts empty."""
    run_dir.mkdir(parents=True, exist_ok=True)
    servers, database_url, redis_url = _servers(run_dir, locale)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLAGMETER_ADMIN_TOKEN": secrets.token_urlsafe(24),
    }
    stack = Stack(run_dir, env)
    try:
        if servers is not None:
            stack.server_pids = {
                "postgres": int((servers.pg_data / "postmaster.pid").read_text().split()[0]),
                "redis": pid_of_command("-server", f":{servers.redis_port}"),  # its process title
            }
        stack.migrate()
        stack.worker, stack.worker_metrics_url = stack.start_worker()
        stack.start_api(api_processes)
        yield stack
    finally:
        stack.stop()
        if servers is not None:
            servers.stop()
        shutil.rmtree(run_dir / "data", ignore_errors=True)
