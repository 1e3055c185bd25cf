"""`flagmeter api|worker|migrate|seed|tenant|prune|dead-letters|dev`: parse the arguments, call.

prometheus_client is imported only inside commands: the `api` command must set
PROMETHEUS_MULTIPROC_DIR before any process imports it (processes.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import logs
from .admin import seed, thresholds
from .config import ConfigError, Settings, clock_from_env, database_url_from, log_level_from
from .events import TENANT_ID, TENANT_NAME
from .listen import PortTaken, ensure_free
from .processes import preload_api, run, serve_api, serve_worker
from .supervisor import supervise

log = logging.getLogger("flagmeter")


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


# -- api ------------------------------------------------------------------------------------


def _port_taken(error: PortTaken) -> int:
    print(f"flagmeter: {error}", file=sys.stderr)
    return 1


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings(args)
    processes = args.processes or settings.api_processes
    try:
        ensure_free(settings.listen_host, settings.port, "PORT")
        if processes == 1:
            run(serve_api(settings, reuse_port=False))
            return 0
    except PortTaken as error:
        return _port_taken(error)
    # The processes' metric files: a directory of this run's own unless the environment names one,
    # removed when the supervisor stops so that restarts do not pile them up in /tmp.
    made: str | None = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="flagmeter-metrics-")
    preload_api()  # before the fork: the processes share the libraries' pages
    try:
        return supervise(processes, lambda: run(serve_api(settings, reuse_port=True)))
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


# -- worker ---------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.worker_metrics_port:
        try:
            ensure_free(settings.listen_host, settings.worker_metrics_port, "FLAGMETER_WORKER_METRICS_PORT")
        except PortTaken as error:
            return _port_taken(error)
    run(serve_worker(settings, args.concurrency))
    return 0


# -- migrate, seed, tenants -----------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from .store import migrate

    env = _environment()
    try:
        database_url = database_url_from(env)
    except ConfigError as error:
        print(f"flagmeter: {error}", file=sys.stderr)
        return 2
    logs.setup(log_level_from(env))
    applied = run(migrate(database_url))
    log.info("migrations done", extra={"applied": applied})
    return 0


async def _with_store(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from .store import Store

    try:
        database_url = database_url_from(_environment())
    except ConfigError as error:
        raise SystemExit(f"flagmeter: {error}") from None
    store = await Store.connect(database_url, size=2)
    try:
        return await fn(store)
    finally:
        await store.close()


def cmd_seed(args: argparse.Namespace) -> int:
    path = Path(args.keys_file) if args.keys_file else None
    known: dict[str, str] = {}
    if path is not None and path.exists():
        known = dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)
    keys = run(_with_store(lambda store: seed(store, known)))
    lines = "".join(f"{tenant_id}\t{key}\n" for tenant_id, key in keys)
    if path is not None:
        path.touch(0o600)
        path.chmod(0o600)
        path.write_text(lines)
    print(lines, end="")
    return 0


def cmd_tenant(args: argparse.Namespace) -> int:
    from .keys import new_key
    from .store import Conflict, Tenant

    async def act(store: Any) -> int:
        if args.action == "create":
            key_id, key, key_hash = new_key()
            try:
                await store.create_tenant(
                    Tenant(args.id, (args.name or args.id).strip(), args.quota, args.billing_day, None),  # type: ignore[arg-type]
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
            return await thresholds(store, args.id, args.thresholds)
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
    if args.name is not None and not TENANT_NAME.fullmatch(args.name.strip()):
        print("flagmeter: --name must be 1-200 characters without control characters", file=sys.stderr)
        return 2
    if args.quota is not None and args.quota < 0:
        print("flagmeter: --quota must be >= 0", file=sys.stderr)
        return 2
    result: int = run(_with_store(act))
    return result


def cmd_prune(args: argparse.Namespace) -> int:
    async def act(store: Any) -> tuple[int, list[str]]:
        now = clock_from_env(_environment()).now()
        result: tuple[int, list[str]] = await store.prune(args.keep_days, now)
        return result

    ledger, dropped = run(_with_store(act))
    print(f"dropped partitions: {', '.join(dropped) or 'none'}; dedup rows pruned: {ledger}")
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from .stream import PUT_BACK_PAGE, Stream

    settings = _settings(argparse.Namespace(dev=True), _environment())

    async def act() -> int:
        stream = Stream.from_settings(settings)
        try:
            if args.readable:
                moved = await stream.replay_readable(newest=args.limit)
                print(f"replayed {moved} readable malformed dead letters onto {settings.stream}")
            elif args.replay:
                # Only what is there now: an entry dead-lettered again meanwhile is not taken round again.
                through, read, moved = await stream.last_dead_letter(), 0, 0
                while read < args.limit:
                    n, m = await stream.replay_dead_letters(min(PUT_BACK_PAGE, args.limit - read), through)
                    if not n:
                        break
                    read, moved = read + n, moved + m
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

    result: int = run(act())
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
    dead.add_argument(
        "--readable",
        action="store_true",
        help="replay only those dead-lettered as malformed that this version reads (an upgrade's)",
    )
    dead.add_argument(
        "--limit", type=int, default=1_000_000, help="dead letters to look through at most (%(default)s)"
    )
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
