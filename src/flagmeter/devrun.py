"""`flagmeter dev` (what `make run` runs): local servers if needed, migrate, seed, API and worker."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from .config import WORKER_METRICS_PORT
from .launch import FLAGMETER, Process, TimedOut, spawn, wait_http
from .listen import PortTaken, ensure_free
from .localstack import LocalStack, MissingBinary

# The local servers' ports (FLAGMETER_DEV_PG_PORT / FLAGMETER_DEV_VALKEY_PORT, as in the dev compose
# stack): below the ephemeral port range, so no outgoing connection can hold them.
PG_PORT = 15432
REDIS_PORT = 16379
DEV_ENV = "dev.env"  # the running stack's settings, for `flagmeter tenant list` and friends
SHARED = ("DATABASE_URL", "REDIS_URL", "FLAGMETER_ADMIN_TOKEN", "PORT", "FLAGMETER_STREAM")


def running_dev_environment(env: dict[str, str]) -> tuple[Path, dict[str, str]] | None:
    """The settings a running `flagmeter dev` wrote under FLAGMETER_RUN_DIR (default .run/)."""
    path = Path(env.get("FLAGMETER_RUN_DIR") or ".run") / DEV_ENV
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    settings = dict(line.split("=", 1) for line in lines if "=" in line)
    try:
        os.kill(int(settings.pop("FLAGMETER_DEV_PID", "0")), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return None  # left behind by a stack that was killed
    return path, settings


def _write_dev_environment(run_dir: Path, env: dict[str, str]) -> Path:
    path = run_dir / DEV_ENV
    path.touch(0o600)
    path.chmod(0o600)
    shared = {name: env[name] for name in SHARED if env.get(name)}
    path.write_text(
        "".join(f"{k}={v}\n" for k, v in {"FLAGMETER_DEV_PID": str(os.getpid()), **shared}.items())
    )
    return path


def _admin_token(run_dir: Path) -> str:
    """A stable per-checkout admin token kept in .run/ (never committed)."""
    path = run_dir / "admin-token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def run_dev(run_dir: Path, port: int) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("FLAGMETER_LISTEN_HOST", "127.0.0.1")  # a dev stack is for this machine only
    try:
        ensure_free(env["FLAGMETER_LISTEN_HOST"], port, "PORT")
        worker_port = int(env.get("FLAGMETER_WORKER_METRICS_PORT") or WORKER_METRICS_PORT)
        if worker_port:
            ensure_free(env["FLAGMETER_LISTEN_HOST"], worker_port, "FLAGMETER_WORKER_METRICS_PORT")
    except PortTaken as error:
        print(f"flagmeter: {error}", file=sys.stderr)
        return 1
    stack = None
    if not (env.get("DATABASE_URL") and env.get("REDIS_URL")):
        stack = LocalStack(
            run_dir,
            int(env.get("FLAGMETER_DEV_PG_PORT") or PG_PORT),
            int(env.get("FLAGMETER_DEV_VALKEY_PORT") or REDIS_PORT),
        )
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
    children: list[Process] = []
    shared: Path | None = None
    try:
        subprocess.run([*FLAGMETER, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        seeded = subprocess.run(
            [*FLAGMETER, "seed", "--keys-file", str(run_dir / "demo-keys")],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        keys = [line.split("\t") for line in seeded.stdout.splitlines() if "\t" in line]
        children += [spawn(["api"], env), spawn(["worker"], env)]  # their output in this terminal
        host = env["FLAGMETER_LISTEN_HOST"]
        address = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
        base = f"http://{address}:{port}"
        try:
            wait_http(f"{base}/ready", 30, process=children[0])
            if worker_port:  # the banner below promises the worker's metrics too
                wait_http(f"http://{address}:{worker_port}/health", 30, process=children[1])
        except (TimedOut, RuntimeError):
            print("flagmeter: the API or the worker did not become ready; see the log above", file=sys.stderr)
            return 1
        shared = _write_dev_environment(run_dir, env)
        tenant, key = keys[0]
        print(
            f"\nFlagMeter is running.\n"
            f"  dashboard:   {base}/   (admin token: {env['FLAGMETER_ADMIN_TOKEN']})\n"
            f"  API docs:    {base}/openapi.json\n"
            f"  metrics:     {base}/metrics (API), http://127.0.0.1:{worker_port}/metrics (worker)\n"
            f"  PostgreSQL:  {env['DATABASE_URL']}\n"
            f"  Redis:       {env['REDIS_URL']}\n"
            f"  CLI:         .venv/bin/flagmeter tenant list   (finds this stack's settings in {shared})\n"
            f"  demo keys (kept across runs):\n" + "".join(f"    {t:<8} {k}\n" for t, k in keys) + f"  try:\n"
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
        if shared is not None:
            shared.unlink(missing_ok=True)
        for child in children:
            child.stop()
        if stack is not None:
            stack.stop()
