"""FlagMeter's own processes as children of this one — the one launcher of `make run`, the tests and
the bench: spawn a command with its output in a log, wait until it answers, stop it with SIGTERM (then
SIGKILL), and the polling wait they all share.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .localstack import free_port

FLAGMETER = [sys.executable, "-m", "flagmeter.cli"]


class TimedOut(AssertionError):
    """A wait ran out of time. An AssertionError, so that a test failing on it reads as a failed
    expectation rather than an error in the test."""


def wait_until(
    check: Callable[[], object],
    timeout: float,
    what: str,
    *,
    ignoring: tuple[type[BaseException], ...] = (),
    every: float = 0.05,
) -> None:
    """Poll `check` until it is true; an exception in `ignoring` counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except ignoring:
            pass
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class Process:
    """A flagmeter command running as a child, its output in `log` (or this process's own output)."""

    popen: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""


def spawn(args: list[str], env: dict[str, str], log: Path | None = None) -> Process:
    """`flagmeter <args>` with `env`; its output appended to `log` when given."""
    if log is None:
        return Process(subprocess.Popen([*FLAGMETER, *args], env=env))
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        popen = subprocess.Popen([*FLAGMETER, *args], env=env, stdout=handle, stderr=subprocess.STDOUT)
    return Process(popen, log)


def _answers(url: str, status: int) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == status)
    except urllib.error.HTTPError as error:
        return error.code == status
    except OSError:
        return False


def wait_http(url: str, timeout: float = 30.0, status: int = 200, process: Process | None = None) -> None:
    """Until `url` answers `status`; fails at once, with its output, if `process` exits meanwhile."""

    def answered() -> bool:
        if process is not None and not process.running():
            raise RuntimeError(
                f"{process.popen.args!r} exited with {process.popen.returncode} before {url} answered:\n"
                + process.output()[-4000:]
            )
        return _answers(url, status)

    try:
        wait_until(answered, timeout, f"{url} to answer {status}", every=0.1)
    except TimedOut as error:
        raise TimedOut(f"{error}\n{process.output()[-4000:] if process else ''}") from None


@dataclass
class Stack:
    """The API and worker of one deployment on this machine, each a child with a log under `workdir`.
    `env` holds what every process reads: DATABASE_URL, REDIS_URL and FLAGMETER_ADMIN_TOKEN at least."""

    workdir: Path
    env: dict[str, str]
    api_url: str = ""
    worker_metrics_url: str = ""
    processes: list[Process] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    @property
    def admin_token(self) -> str:
        return self.env["FLAGMETER_ADMIN_TOKEN"]

    def spawn(self, *args: str, **env: str) -> Process:
        process = spawn(
            list(args), {**self.env, **env}, self.workdir / f"{args[0]}-{uuid.uuid4().hex[:8]}.log"
        )
        self.processes.append(process)
        return process

    def migrate(self) -> None:
        subprocess.run([*FLAGMETER, "migrate"], env=self.env, check=True, capture_output=True)

    def _healthy(self, process: Process, port: int, path: str) -> tuple[Process, str]:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}{path}", process=process)
        return process, url

    def start_api(self, processes: int = 2, until: str = "/health", **env: str) -> tuple[Process, str]:
        """`flagmeter api --processes N` on a free port (or env's PORT), once `until` answers 200
        (/health: it serves; /ready: it also reaches PostgreSQL and Redis)."""
        port = int(env.pop("PORT", 0)) or free_port()
        process = self.spawn("api", "--processes", str(processes), PORT=str(port), **env)
        return self._healthy(process, port, until)

    def start_worker(self, **env: str) -> tuple[Process, str]:
        """`flagmeter worker` with its metrics on a free port (or env's), once it is healthy."""
        port = int(env.pop("FLAGMETER_WORKER_METRICS_PORT", 0)) or free_port()
        process = self.spawn("worker", FLAGMETER_WORKER_METRICS_PORT=str(port), **env)
        return self._healthy(process, port, "/health")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
