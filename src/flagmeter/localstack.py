"""Throwaway local PostgreSQL and Redis servers from the system's binaries, for `make run` and tests.

Data lives under a directory of the caller's (`.run/` for `make run`), so it survives restarts.
PostgreSQL refuses to run as root: as root the server runs as the `postgres` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

INSTALL_HINT = "sudo apt-get install -y postgresql redis-server"


class MissingBinary(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bindir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]), reverse=True
    )
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise MissingBinary(f"PostgreSQL server binaries not found; install them: {INSTALL_HINT}")


def _redis_server() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise MissingBinary(f"redis-server not found; install it: {INSTALL_HINT}")


def _setting(setting: str) -> tuple[str, str]:
    """`name=value` as (name, value), refusing what postgresql.conf could not hold as a quoted value."""
    name, sep, value = setting.partition("=")
    if not sep or not name.isidentifier() or "'" in value or "\n" in value:
        raise ValueError(f"not a name=value server setting: {setting!r}")
    return name, value


def wait_port(port: int, timeout: float, what: str) -> None:
    """Until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start listening on 127.0.0.1:{port}")


class LocalStack:
    def __init__(
        self,
        root: Path,
        pg_port: int | None = None,
        redis_port: int | None = None,
        locale: str = "",
        settings: Sequence[str] = (),
    ) -> None:
        """`locale`: the cluster's (initdb --locale), when not the environment's; `settings`: `name=value`
        server settings over this module's (written to postgresql.conf when the cluster is made)."""
        self.root = root.resolve()
        self.locale = locale
        self.settings = tuple(settings)
        self.pg_port = pg_port or free_port()
        self.redis_port = redis_port or free_port()
        self.pg_data = self.root / "postgres"
        self.redis_dir = self.root / "redis"
        self._redis: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0

    @property
    def database_url(self) -> str:
        return f"postgresql://flagmeter@127.0.0.1:{self.pg_port}/flagmeter"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def pg_command(self, program: str, *args: str, wrapper: Sequence[str] = ()) -> list[str]:
        """The command line running one of PostgreSQL's programs as the server's user, under `wrapper`
        (a profiler's command line, say) when given."""
        command = [*wrapper, str(_pg_bindir() / program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if self._as_postgres else command

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.pg_command(*args), check=check, capture_output=True)

    def start(self) -> None:
        self.start_postgres()
        self.start_redis()

    def stop(self) -> None:
        self.stop_redis()
        self.stop_postgres()

    def start_postgres(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.pg_data / "PG_VERSION").exists():
            self.pg_data.mkdir(parents=True, exist_ok=True)
            if self._as_postgres:
                user = pwd.getpwnam("postgres")
                os.chown(self.pg_data, user.pw_uid, user.pw_gid)
            self._pg(
                "initdb",
                "-D",
                str(self.pg_data),
                "-U",
                "flagmeter",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                *([f"--locale={self.locale}"] if self.locale else []),
            )
            with open(self.pg_data / "postgresql.conf", "a") as conf:
                conf.write(
                    "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                    "max_connections = 200\nshared_buffers = 128MB\nfsync = on\n"
                    "synchronous_commit = on\nlog_min_messages = warning\n"
                    + "".join(f"{name} = '{value}'\n" for name, value in map(_setting, self.settings))
                )
        if self._pg("pg_ctl", "-D", str(self.pg_data), "status", check=False).returncode != 0:
            started = self._pg(
                "pg_ctl",
                "-D",
                str(self.pg_data),
                "-o",
                f"-p {self.pg_port}",
                "-l",
                str(self.pg_data / "server.log"),
                "-w",
                "-t",
                "30",
                "start",
                check=False,
            )
            if started.returncode != 0:
                log = (self.pg_data / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr.decode()}\n{log}")
        wait_port(self.pg_port, 30, "PostgreSQL")
        exists = self._pg(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.pg_port),
            "-U",
            "flagmeter",
            "-d",
            "postgres",
            "-tAc",
            "SELECT 1 FROM pg_database WHERE datname = 'flagmeter'",
        )
        if exists.stdout.strip() != b"1":
            self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "flagmeter", "flagmeter")

    def stop_postgres(self) -> None:
        if (self.pg_data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.pg_data), "-m", "fast", "-w", "stop", check=False)

    def start_redis(self) -> None:
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.5):
                return  # left running by an earlier run that was killed; reuse it
        except OSError:
            pass
        self._redis = subprocess.Popen(
            [
                _redis_server(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.redis_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal: the API and worker stop first, then Redis
        )
        wait_port(self.redis_port, 15, "Redis")

    def stop_redis(self) -> None:
        if self._redis is not None:
            self._redis.terminate()
            self._redis.wait(15)
            self._redis = None
