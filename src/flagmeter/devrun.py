"""`flagmeter dev` (what `make run` runs): local servers if needed, migrate, seed, API and worker."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .localstack import LocalStack, MissingBinary

PG_PORT = 15432  # below the ephemeral port range, so no outgoing connection can hold it
REDIS_PORT = 16379


def _admin_token(run_dir: Path) -> str:
    """A stable per-checkout admin token kept in .run/ (never committed)."""
    path = run_dir / "admin-token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def run_dev(run_dir: Path, port: int) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    stack = None
    if not (env.get("DATABASE_URL") and env.get("REDIS_URL")):
        stack = LocalStack(run_dir, PG_PORT, REDIS_PORT)
        try:
            stack.start()
        except MissingBinary as error:
            print(f"flagmeter: {error}", file=sys.stderr)
            return 1
        env.setdefault("DATABASE_URL", stack.database_url)
        env.setdefault("REDIS_URL", stack.redis_url)
    env.setdefault("FLAGMETER_ADMIN_TOKEN", _admin_token(run_dir))
    env["PORT"] = str(port)
    env.setdefault("FLAGMETER_ALLOW_HTTP_WEBHOOKS", "1")
    flagmeter = [sys.executable, "-m", "flagmeter.cli"]
    children: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([*flagmeter, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        seeded = subprocess.run([*flagmeter, "seed"], env=env, check=True, capture_output=True, text=True)
        keys = [line.split("\t") for line in seeded.stdout.splitlines() if "\t" in line]
        children.append(subprocess.Popen([*flagmeter, "api"], env=env))
        children.append(subprocess.Popen([*flagmeter, "worker"], env=env))
        base = f"http://127.0.0.1:{port}"
        if not _wait_ready(f"{base}/ready", 30):
            print("flagmeter: the API did not become ready; see the log above", file=sys.stderr)
            return 1
        tenant, key = keys[0]
        print(
            f"\nFlagMeter is running.\n"
            f"  dashboard:   {base}/   (admin token: {env['FLAGMETER_ADMIN_TOKEN']})\n"
            f"  API docs:    {base}/openapi.json\n"
            f"  metrics:     {base}/metrics\n"
            f"  demo keys:\n" + "".join(f"    {t:<8} {k}\n" for t, k in keys) + f"  try:\n"
            f"    curl -s -X POST {base}/v1/events -H 'Authorization: Bearer {key}' "
            f'-H \'Content-Type: application/json\' -d \'{{"id":"evt-1","feature":"chat","tokens":42}}\'\n'
            f"    curl -s {base}/v1/usage/{tenant} -H 'Authorization: Bearer {key}'\n"
            f"  Ctrl-C stops everything; data stays in {run_dir}/\n",
            flush=True,
        )
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        if stack is not None:
            stack.stop()
