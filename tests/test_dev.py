"""`flagmeter dev` (what `make run` runs) and what a new user meets around it, as real processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flagmeter.localstack import free_port
from stacklib import Stack, wait_until

pytestmark = pytest.mark.slow


class DevRun:
    """One `flagmeter dev` in its own process group, as a terminal runs it."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        self.log = run_dir.with_suffix(f".{time.monotonic_ns()}.log")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "flagmeter.cli", "dev", "--run-dir", str(run_dir), "--port", env["PORT"]],
            env=env,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_running(self) -> None:
        wait_until(
            lambda: "FlagMeter is running." in self.output() or self.popen.poll() is not None, 90, "dev"
        )
        assert "FlagMeter is running." in self.output(), self.output()

    def demo_keys(self) -> dict[str, str]:
        lines = self.output().split("demo keys", 1)[1].split("try:", 1)[0].splitlines()[1:]
        return dict(line.split() for line in lines if line.strip())

    def ctrl_c(self) -> int:
        """What Ctrl-C does in a terminal: SIGINT to every process of the foreground group."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)
        return self.popen.wait(60)


@pytest.fixture
def dev_env() -> Iterator[tuple[Path, dict[str, str]]]:
    # Not under pytest's tmp_path (mode 0700): PostgreSQL runs as its own user and must reach it.
    root = Path(tempfile.mkdtemp(prefix="flagmeter-dev-", dir=os.environ.get("FLAGMETER_TEST_DIR")))
    root.chmod(0o755)
    unset = {"DATABASE_URL", "REDIS_URL", "FLAGMETER_ADMIN_TOKEN", "PROMETHEUS_MULTIPROC_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env |= {
        "PORT": str(free_port()),
        "FLAGMETER_WORKER_METRICS_PORT": str(free_port()),
        "FLAGMETER_DEV_PG_PORT": str(free_port()),
        "FLAGMETER_DEV_VALKEY_PORT": str(free_port()),
        "FLAGMETER_API_PROCESSES": "1",
    }
    yield root / "run", env
    shutil.rmtree(root, ignore_errors=True)


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flagmeter.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_dev_keeps_its_demo_keys_listens_on_loopback_and_stops_quietly(
    stack: Stack, dev_env: tuple[Path, dict[str, str]]
) -> None:
    run_dir, env = dev_env
    first = DevRun(run_dir, env)
    try:
        first.wait_running()
        keys = first.demo_keys()
        assert set(keys) == {"acme", "globex", "initech"}
        banner = first.output()
        assert "PostgreSQL:  postgresql://" in banner and "Redis:       redis://" in banner
        assert _listeners(int(env["PORT"])) == {"0100007F"}  # 127.0.0.1 only
        assert _listeners(int(env["FLAGMETER_WORKER_METRICS_PORT"])) == {"0100007F"}

        # The CLI finds the running stack's settings when DATABASE_URL and REDIS_URL are unset.
        listed = _cli({**env, "FLAGMETER_RUN_DIR": str(run_dir)}, "tenant", "list")
        assert listed.returncode == 0, listed.stderr
        assert "acme\tAcme Corp" in listed.stdout and "dev.env" in listed.stderr
    finally:
        assert first.ctrl_c() == 0
    stopping = first.output().split("FlagMeter is running.", 1)[1]
    assert "unavailable" not in stopping, stopping  # Redis outlived the processes that use it
    assert not (run_dir / "dev.env").exists()
    assert _cli({**env, "FLAGMETER_RUN_DIR": str(run_dir)}, "tenant", "list").returncode != 0

    second = DevRun(run_dir, env)
    try:
        second.wait_running()
        assert second.demo_keys() == keys  # an app configured yesterday keeps working
        status, body, _ = stack.request(
            "GET", "/v1/usage/acme", token=keys["acme"], base=f"http://127.0.0.1:{env['PORT']}"
        )
        assert status == 200, body
    finally:
        second.ctrl_c()


@contextmanager
def _taken_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("command", "variable"),
    [("api", "PORT"), ("worker", "FLAGMETER_WORKER_METRICS_PORT"), ("dev", "PORT")],
)
def test_a_taken_port_is_named_in_one_line_and_nothing_starts(
    stack: Stack, dev_env: tuple[Path, dict[str, str]], command: str, variable: str
) -> None:
    run_dir, env = dev_env
    with _taken_port() as port:
        env = {**stack.env, **env, variable: str(port), "FLAGMETER_LISTEN_HOST": "127.0.0.1"}
        args = ["dev", "--run-dir", str(run_dir), "--port", str(port)] if command == "dev" else [command]
        started = time.monotonic()
        done = _cli(env, *args)
    assert done.returncode == 1
    assert time.monotonic() - started < 10
    assert done.stderr.strip().splitlines() == [
        f"flagmeter: port {port} on 127.0.0.1 is already in use; set {variable} to use another"
    ]
