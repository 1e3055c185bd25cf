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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
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
        with psycopg2.connect(self.database_url) as conn, conn.cursor() as cur:
            cur.execute(COLLATION_SQL)
            (collation,) = cur.fetchone() or ("?",)
        conn.close()
        return str(collation)


# The throwaway cluster's locale: the official postgres image's (it sets LANG=en_US.utf8; so does its
# stand-in, tests/images/postgres), under which PostgreSQL compares text with glibc's rules for English.
# Runs whose JSON has no `database_locale` used the machine's (C.UTF-8): `bench/run.py --locale C.UTF-8`
# repeats them.
DATABASE_LOCALE = "en_US.UTF-8"
COLLATION_SQL = "SELECT datcollate FROM pg_database WHERE datname = current_database()"


def _servers(run_dir: Path, locale: str) -> tuple[LocalStack | None, str, str]:
    """The servers in the environment's URLs, or fresh local ones under `run_dir`."""
    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if database_url and redis_url:
        return None, database_url, redis_url
    servers = LocalStack(run_dir / "data", locale=locale)
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
