"""The service under test, brought up the way `make run` does: throwaway PostgreSQL and Redis in a fresh
directory (unless DATABASE_URL/REDIS_URL are set), migrations, then one worker and `flagmeter api
--processes N`, each a child process of the harness whose pid the resource sampler follows.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import pid_of_command

from flagmeter.localstack import LocalStack, free_port

FLAGMETER = [sys.executable, "-m", "flagmeter.cli"]


def wait_http_ok(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before {url} answered")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s}s")


def wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def _stop(process: subprocess.Popen[bytes] | None, timeout_s: float = 15) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Stack:
    run_dir: Path
    api_port: int = field(default_factory=free_port)
    worker_metrics_port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    database_url: str = ""
    redis_url: str = ""
    server_pids: dict[str, int] = field(default_factory=dict)
    api: subprocess.Popen[bytes] | None = None
    api_processes: int = 0
    worker: subprocess.Popen[bytes] | None = None
    servers: LocalStack | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "FLAGMETER_ADMIN_TOKEN": self.admin_token,
            "PORT": str(self.api_port),
            "FLAGMETER_WORKER_METRICS_PORT": str(self.worker_metrics_port),
        }

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.run_dir / f"{name}.log").open("ab")
        return subprocess.Popen([*FLAGMETER, *args], env=self._env(), stdout=log, stderr=subprocess.STDOUT)

    def start(self, api_processes: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = os.environ.get("DATABASE_URL", "")
        self.redis_url = os.environ.get("REDIS_URL", "")
        if not (self.database_url and self.redis_url):
            self.servers = LocalStack(self.run_dir / "data")
            self.servers.start()
            self.database_url, self.redis_url = self.servers.database_url, self.servers.redis_url
            postmaster = int((self.servers.pg_data / "postmaster.pid").read_text().split()[0])
            self.server_pids = {
                "postgres": postmaster,
                "redis": pid_of_command("-server", f":{self.servers.redis_port}"),  # its process title
            }
        subprocess.run([*FLAGMETER, "migrate"], env=self._env(), check=True, capture_output=True)
        self.worker = self._spawn("worker", "worker")
        wait_http_ok(f"http://127.0.0.1:{self.worker_metrics_port}/health", 30, self.worker)
        self.start_api(api_processes)

    def start_api(self, processes: int) -> None:
        _stop(self.api)
        self.api = self._spawn("api", "api", "--processes", str(processes))
        self.api_processes = processes
        wait_http_ok(f"{self.api_url}/ready", 30, self.api)

    def roles(self) -> dict[str, int]:
        """Root pid of each role, for the resource sampler."""
        assert self.api and self.worker
        return {"api": self.api.pid, "worker": self.worker.pid, **self.server_pids}

    def stop(self) -> None:
        _stop(self.api)
        _stop(self.worker)
        if self.servers is not None:
            self.servers.stop()


@contextlib.contextmanager
def running_stack(run_dir: Path, api_processes: int) -> Iterator[Stack]:
    """A stack logging into `run_dir`; its data is deleted afterwards so each run starts empty."""
    stack = Stack(run_dir)
    try:
        stack.start(api_processes)
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(run_dir / "data", ignore_errors=True)
