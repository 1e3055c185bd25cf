"""`flagmeter api|worker|migrate|seed|tenant|dev|prune`.

prometheus_client is imported only inside commands: the `api` command must set
PROMETHEUS_MULTIPROC_DIR before any process imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import logs
from .config import ConfigError, Settings, clock_from_env
from .events import TENANT_ID
from .listen import EXIT_PORT_TAKEN, PortTaken, ensure_free

log = logging.getLogger("flagmeter")

DEMO_TENANTS = (
    ("acme", "Acme Corp", 1_000_000, 1),
    ("globex", "Globex", 500_000, 15),
    ("initech", "Initech", 250_000, 31),
)


def _environment() -> dict[str, str]:
    """The environment of a management command (migrate, seed, tenant, prune, dead-letters): with
    DATABASE_URL and REDIS_URL unset, a running `flagmeter dev` stack's settings fill them in."""
    from .devrun import running_dev_environment

    env = dict(os.environ)
    if env.get("DATABASE_URL") or env.get("REDIS_URL"):
        return env
    found = running_dev_environment(env)
    if found is None:
        return env
    path, settings = found
    print(f"flagmeter: using the running dev stack's settings from {path}", file=sys.stderr)
    return {**settings, **env}


def _settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    try:
        settings = Settings.from_env(env, dev=getattr(args, "dev", False))
    except ConfigError as error:
        print(f"flagmeter: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(settings.log_level)
    return settings


# Ingest allocates a few containers per event (the parsed row or object, the Event). With Python's
# default first-generation threshold (700) the cyclic collector ran every few hundred events and
# doubled the worker's decoding time (0.94 -> 1.9 us per event with the service's modules loaded).
# Reference cycles are rare on these paths; they are still collected, after 10,000 allocations.
GC_THRESHOLDS = (10_000, 10, 10)


def _run(coro: Awaitable[Any]) -> Any:
    import gc

    import uvloop

    gc.set_threshold(*GC_THRESHOLDS)
    return uvloop.run(coro)  # type: ignore[arg-type]


# -- api ------------------------------------------------------------------------------------


async def _serve_api(settings: Settings, reuse_port: bool) -> None:
    from aiohttp import web

    from .api import create_app

    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen_host, settings.port, reuse_port=reuse_port, backlog=4096)
    try:
        await site.start()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortTaken(settings.listen_host, settings.port, "PORT") from None
        raise
    log.info("api listening", extra={"port": settings.port, "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def _port_taken(error: PortTaken) -> int:
    print(f"flagmeter: {error}", file=sys.stderr)
    return 1


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings(args)
    processes = args.processes or settings.api_processes
    try:
        ensure_free(settings.listen_host, settings.port, "PORT")
        if processes == 1:
            _run(_serve_api(settings, reuse_port=False))
            return 0
    except PortTaken as error:
        return _port_taken(error)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="flagmeter-metrics-"))
    # The app is imported by each child, not before the fork: the supervisor stays ~25 MB instead of
    # carrying every library's pages too (RSS counts shared pages once per process).
    return _supervise(processes, lambda: _run(_serve_api(settings, reuse_port=True)))


def _supervise(processes: int, serve: Callable[[], None]) -> int:
    """Fork `processes` children sharing the port (SO_REUSEPORT); restart any that dies."""
    children: set[int] = set()
    stopping = False
    exit_code = 0

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                serve()
            except PortTaken as error:  # taken between the supervisor's check and this bind
                print(f"flagmeter: {error}", file=sys.stderr)
                code = EXIT_PORT_TAKEN
            except BaseException:
                log.exception("api process failed")
                code = 1
            finally:
                os._exit(code)
        children.add(pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(processes):
        spawn()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        from prometheus_client import multiprocess  # only now: it would double the supervisor's size

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_PORT_TAKEN:
            forward(signal.SIGTERM, None)  # restarting cannot help
            exit_code = 1
        elif not stopping:
            log.error("api process died; restarting", extra={"pid": pid, "status": status})
            spawn()
    return exit_code


# -- worker ---------------------------------------------------------------------------------


async def _worker(settings: Settings, concurrency: int) -> None:
    from aiohttp import web

    from .api import health as endpoints
    from .api.errors import json_response
    from .store import Store
    from .stream import Stream
    from .worker import Worker

    store = await Store.connect(settings.database_url, size=max(4, concurrency + 2))
    stream = Stream.from_settings(settings)
    worker = Worker(settings, store, stream, concurrency=concurrency)

    async def health(_: web.Request) -> web.Response:
        return json_response({"status": "stopping" if worker.stopping else "ok"})

    runner = None
    if settings.worker_metrics_port:
        app = web.Application()
        app["store"], app["stream"] = store, stream  # what the shared /ready checks
        app["metrics_role"] = "worker"
        app.router.add_get("/metrics", endpoints.metrics_endpoint)
        app.router.add_get("/health", health)
        app.router.add_get("/ready", endpoints.ready)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, settings.listen_host, settings.worker_metrics_port).start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        await stream.close()
        await store.close()


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.worker_metrics_port:
        try:
            ensure_free(settings.listen_host, settings.worker_metrics_port, "FLAGMETER_WORKER_METRICS_PORT")
        except PortTaken as error:
            return _port_taken(error)
    _run(_worker(settings, args.concurrency))
    return 0


# -- migrate, seed, tenants -----------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from .store import migrate

    env = _environment()
    database_url = env.get("DATABASE_URL")
    if not database_url:
        print("flagmeter: missing required environment: DATABASE_URL", file=sys.stderr)
        return 2
    logs.setup(env.get("FLAGMETER_LOG_LEVEL", "INFO"))
    applied = _run(migrate(database_url))
    log.info("migrations done", extra={"applied": applied})
    return 0


async def _with_store(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from .store import Store

    database_url = _environment().get("DATABASE_URL")
    if not database_url:
        raise SystemExit("flagmeter: missing required environment: DATABASE_URL")
    store = await Store.connect(database_url, size=2)
    try:
        return await fn(store)
    finally:
        await store.close()


async def seed(store: Any, known: dict[str, str]) -> list[tuple[str, str]]:
    """Ensure the demo tenants, each with a working demo key: its key in `known` while that still
    works, else a fresh one (older demo keys are revoked)."""
    from .api.auth import hash_key, new_key
    from .store import Conflict, Tenant

    keys = []
    for tenant_id, name, quota, day in DEMO_TENANTS:
        kept = known.get(tenant_id)
        if kept and await store.tenant_for_key(hash_key(kept)) == tenant_id:
            keys.append((tenant_id, kept))
            continue
        key_id, key, key_hash = new_key()
        try:
            await store.create_tenant(Tenant(tenant_id, name, quota, day, None), key_id, key_hash, "demo")  # type: ignore[arg-type]
        except Conflict:
            await store.revoke_keys_labelled(tenant_id, "demo")
            await store.create_key(tenant_id, key_id, key_hash, "demo")
        keys.append((tenant_id, key))
    return keys


def cmd_seed(args: argparse.Namespace) -> int:
    path = Path(args.keys_file) if args.keys_file else None
    known: dict[str, str] = {}
    if path is not None and path.exists():
        known = dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)
    keys = _run(_with_store(lambda store: seed(store, known)))
    lines = "".join(f"{tenant_id}\t{key}\n" for tenant_id, key in keys)
    if path is not None:
        path.touch(0o600)
        path.chmod(0o600)
        path.write_text(lines)
    print(lines, end="")
    return 0


def cmd_tenant(args: argparse.Namespace) -> int:
    from .api.auth import new_key
    from .store import Conflict, Tenant

    async def act(store: Any) -> int:
        if args.action == "create":
            key_id, key, key_hash = new_key()
            try:
                await store.create_tenant(
                    Tenant(args.id, args.name or args.id, args.quota, args.billing_day, None),  # type: ignore[arg-type]
                    key_id,
                    key_hash,
                )
            except Conflict as error:
                print(f"flagmeter: {error}", file=sys.stderr)
                return 1
            print(f"created {args.id}; key {key_id}: {key}")
        elif args.action == "list":
            for t in await store.list_tenants():
                print(f"{t.id}\t{t.name}\tquota={t.monthly_quota}\tbilling_day={t.billing_day}")
        elif args.action == "key":
            if await store.get_tenant(args.id) is None:
                print(f"flagmeter: unknown tenant {args.id!r}", file=sys.stderr)
                return 1
            key_id, key, key_hash = new_key()
            await store.create_key(args.id, key_id, key_hash)
            print(f"key {key_id}: {key}")
        elif args.action == "thresholds":  # alert thresholds (issue 3)
            return await _thresholds(store, args.id, args.thresholds)
        return 0

    if args.action == "create" and not (args.id and args.quota is not None):
        print("flagmeter: tenant create needs --id and --quota", file=sys.stderr)
        return 2
    if args.action in {"key", "thresholds"} and not args.id:
        print(f"flagmeter: tenant {args.action} needs --id", file=sys.stderr)
        return 2
    if args.id is not None and not TENANT_ID.fullmatch(args.id):
        print("flagmeter: --id must be a slug [a-z0-9][a-z0-9-]{0,62}", file=sys.stderr)
        return 2
    if args.quota is not None and args.quota < 0:
        print("flagmeter: --quota must be >= 0", file=sys.stderr)
        return 2
    result: int = _run(_with_store(act))
    return result


async def _thresholds(store: Any, tenant_id: str, raw: str | None) -> int:
    """Show or set a tenant's alert thresholds."""
    from .alerts import validate_thresholds
    from .store import AlertSettingsChange

    if raw is not None:
        try:
            chosen = validate_thresholds([int(part) for part in raw.split(",") if part.strip()])
        except ValueError as error:
            print(f"flagmeter: --thresholds: {error}", file=sys.stderr)
            return 2
        if not await store.update_alert_settings(tenant_id, AlertSettingsChange(chosen)):
            print(f"flagmeter: unknown tenant {tenant_id!r}", file=sys.stderr)
            return 1
    current = (await store.alert_settings([tenant_id])).get(tenant_id)
    if current is None:
        print(f"flagmeter: unknown tenant {tenant_id!r}", file=sys.stderr)
        return 1
    print(f"{tenant_id}\tthresholds={','.join(map(str, current.thresholds)) or 'none'}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    async def act(store: Any) -> tuple[int, list[str]]:
        now = clock_from_env(dict(os.environ)).now()
        result: tuple[int, list[str]] = await store.prune(args.keep_days, now)
        return result

    ledger, dropped = _run(_with_store(act))
    print(f"dropped partitions: {', '.join(dropped) or 'none'}; dedup rows pruned: {ledger}")
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from .stream import Stream

    settings = _settings(argparse.Namespace(dev=True), _environment())

    async def act() -> int:
        stream = Stream.from_settings(settings)
        try:
            if args.replay:
                moved = 0
                while moved < args.limit and (
                    n := await stream.replay_dead_letters(min(1000, args.limit - moved))
                ):
                    moved += n
                print(f"replayed {moved} dead letters onto {settings.stream}")
            else:
                summary = await stream.dead_letter_summary()
                for reason, count in sorted(summary.items()):
                    print(f"{reason}\t{count}")
                if not summary:
                    print("no dead letters")
        finally:
            await stream.close()
        return 0

    result: int = _run(act())
    return result


def cmd_dev(args: argparse.Namespace) -> int:
    from .devrun import run_dev

    return run_dev(Path(args.run_dir), args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flagmeter", description="Per-tenant AI-token metering.")
    sub = parser.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="serve the HTTP API (several processes sharing the port)")
    api.add_argument(
        "--processes", type=int, default=0, help="processes (default FLAGMETER_API_PROCESSES or CPUs)"
    )
    api.add_argument("--dev", action="store_true", help="allow a missing FLAGMETER_ADMIN_TOKEN")
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="count events from the stream into PostgreSQL")
    worker.add_argument("--concurrency", type=int, default=2, help="batches in flight (default 2)")
    worker.add_argument("--dev", action="store_true", help="allow a missing FLAGMETER_ADMIN_TOKEN")
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("migrate", help="apply database migrations (safe to run concurrently)").set_defaults(
        func=cmd_migrate
    )
    seeding = sub.add_parser("seed", help="create the demo tenants and print their demo keys")
    seeding.add_argument(
        "--keys-file", help="keep the demo keys listed here while they work (tenant<TAB>key); write them back"
    )
    seeding.set_defaults(func=cmd_seed)

    tenant = sub.add_parser("tenant", help="manage tenants: create | list | key | thresholds")
    tenant.add_argument("action", choices=["create", "list", "key", "thresholds"])
    tenant.add_argument("--id", help="tenant id (slug)")
    tenant.add_argument("--name", help="display name")
    tenant.add_argument("--quota", type=int, help="monthly token quota")
    tenant.add_argument("--billing-day", type=int, default=1, choices=range(1, 32), metavar="1..31")
    tenant.add_argument(
        "--thresholds", help="alert thresholds in percent, e.g. 50,80,100 ('' for none); omit to show them"
    )
    tenant.set_defaults(func=cmd_tenant)

    prune = sub.add_parser("prune", help="drop old event partitions and dedup rows")
    prune.add_argument("--keep-days", type=int, default=400)
    prune.set_defaults(func=cmd_prune)

    dead = sub.add_parser("dead-letters", help="count dead-lettered entries by reason, or replay them")
    dead.add_argument("--replay", action="store_true", help="move them back onto the stream (safe: dedup)")
    dead.add_argument("--limit", type=int, default=1_000_000)
    dead.set_defaults(func=cmd_dead_letters)

    dev = sub.add_parser("dev", help="run everything locally (what `make run` does)")
    dev.add_argument("--run-dir", default=".run")
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
