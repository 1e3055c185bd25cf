#!/usr/bin/env python3
"""PostgreSQL's share of counting, alone: Store.write_batch on batches of new events, with the CPU time
of the one backend that ran them read from /proc, per event. For A/B of the counting statement, the
schema (migrations) and server settings, without the API, the worker's loop or a load generator.

    .venv/bin/python bench/counting.py                       # 60 batches of 4,000 events
    .venv/bin/python bench/counting.py --setting wal_compression=lz4 --batches 90
    .venv/bin/python bench/counting.py --sql "ALTER TABLE ..."   # a schema change to try before the run
    .venv/bin/python bench/counting.py --callgrind --batches 20  # instructions instead (valgrind)

A fresh throwaway PostgreSQL each run (under .run/counting-<time>/, deleted afterwards), migrated, with
a ledger filled to --ledger rows first so its B-tree is not trivially small. Prints the backend's CPU
per event (median and min over the batches), the wall time, the WAL written per event and what each
event counted takes on disk (the ledger's rows and indexes, the event log's compressed arrays).

On a VM whose speed changes by 2x within minutes, CPU time cannot show a 5 % change. --callgrind counts
instructions instead, the same on every run: the batches' SQL, as the store sent it, is recorded and
replayed by a single-user backend (`postgres --single`) under callgrind, on a copy of the cluster as the
ledger's fill left it; an empty replay's count is taken off. User space only: what the kernel does
(WAL and page writes) is not counted, and the single-user backend reads its input a character at a
time (~9 % of the count, the same for the same statements). `--keep DIR` keeps callgrind's two files
(empty.out, batches.out) for `callgrind_annotate`, to see where the instructions went.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiopg

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

from bench.calibrate import calibrate, describe  # noqa: E402
from bench.stack import COLLATION_SQL, DATABASE_LOCALE  # noqa: E402

from flagmeter.events import Columns, Event, columns  # noqa: E402
from flagmeter.ledger import LedgerInsert  # noqa: E402
from flagmeter.localstack import LocalStack  # noqa: E402
from flagmeter.store import Store, migrate  # noqa: E402
from flagmeter.store import counting as store_module  # noqa: E402
from flagmeter.store.base import Prepared  # noqa: E402

TENANTS = ("count-a", "count-b", "count-c")
FEATURES = ("chat", "embed", "summarize", "classify", "translate", "code.complete")
_TICKS = os.sysconf("SC_CLK_TCK")


def without_raw_events() -> None:
    """What counting would cost with the raw events written elsewhere (a lagging audit writer): the
    event log's insert becomes a CTE that only takes its parameter (the batch's time)."""
    for name in ("WRITE_NEW_BATCH_SQL", "WRITE_BATCH_SQL"):
        sql = getattr(store_module, name)
        head, rest = sql.split("), stored AS (", 1)
        unused = "), stored AS (SELECT %s::timestamptz AS counted_at"
        setattr(store_module, name, head + unused + "), rolled AS (" + rest.split("), rolled AS (", 1)[1])
    variant = store_module.WRITE_NEW_BATCH_SQL
    store_module.WRITE_NEW_BATCH = Prepared("flagmeter_write_new_batch_variant", variant)


VARIANTS = {"no-raw-events": without_raw_events}


def backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# How the events' ids are made. `sequential`: as the bench's load makes them, `<run>-<thread>-<request>-
# <index>`, so a batch's new keys land in a few neighbouring leaves of the ledger's B-tree. `uuid4`: as
# many clients make them, random, so each new key lands in a leaf of its own anywhere in the tree.
ID_FORMS: dict[str, Callable[[str, int, int], str]] = {
    "sequential": lambda run, number, i: f"{run}-1-{number}-{i}",
    "uuid4": lambda _run, _number, _i: str(uuid.uuid4()),
}


def batch(run: str, number: int, size: int, now_ms: int, ids: str) -> list[Columns]:
    """Events shaped like the bench's, ids as `ids` names (ID_FORMS), a few minutes apart, as the
    stream's columns (built outside the timing)."""
    make_id = ID_FORMS[ids]
    events = [
        Event(
            TENANTS[number % len(TENANTS)],
            make_id(run, number, i),
            FEATURES[i % len(FEATURES)],
            i % 1000 + 1,
            now_ms - (i % 5) * 60_000,
            now_ms,
        )
        for i in range(size)
    ]
    return columns(events)


async def fill_ledger(store: Store, args: argparse.Namespace, run: str, now: datetime) -> None:
    """Batches of new events until the ledger holds `args.ledger` rows, then a checkpoint."""
    fill, ledger = 0, LedgerInsert()
    while fill < args.ledger:
        events = batch(f"{run}fill", fill, args.size, int(now.timestamp() * 1000), args.ids)
        await store.write_batch(events, now=now, ledger=ledger)
        fill += args.size
    async with store._cursor() as cur:
        await cur.execute("CHECKPOINT")


async def measure(url: str, args: argparse.Namespace) -> dict[str, float]:
    store = await Store.connect(url, size=1)
    ledger = LedgerInsert()
    run = f"r{int(time.time())}"
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    await fill_ledger(store, args, run, now)
    async with store._cursor() as cur:  # the pool's one connection: the backend that counts
        await cur.execute("SELECT pg_backend_pid(), pg_current_wal_lsn()")
        pid, wal_start = await cur.fetchone()
    # /proc counts in clock ticks (10 ms, a few per batch): the sum over groups of ten batches
    per_event: list[float] = []
    speed = [float(calibrate(5_000, 3)["min_us"])]
    started = time.perf_counter()
    for group in range(0, args.batches, 10):
        before = backend_cpu_s(pid)
        for number in range(group, min(group + 10, args.batches)):
            await store.write_batch(batch(run, number, args.size, now_ms, args.ids), now=now, ledger=ledger)
        done = min(group + 10, args.batches) - group
        per_event.append(1e6 * (backend_cpu_s(pid) - before) / (done * args.size))
    wall = time.perf_counter() - started
    speed.append(float(calibrate(5_000, 3)["min_us"]))
    async with store._cursor() as cur:
        await cur.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (wal_start,))
        (wal_bytes,) = await cur.fetchone()
        await cur.execute(STORED_SQL)
        stored = await cur.fetchone()
    await store.close()
    mean = statistics.fmean(per_event)
    return {
        "backend_us_per_event": round(mean, 2),
        "calibration_us": speed,
        # the same in units of the calibration loop: steadier across this VM's changes of speed
        "backend_per_event_in_loops": round(mean / statistics.fmean(speed), 3),
        "spread": [round(min(per_event), 2), round(max(per_event), 2)],
        "wall_us_per_event": round(1e6 * wall / (args.batches * args.size), 2),
        "wal_bytes_per_event": round(float(wal_bytes) / (args.batches * args.size)),
        "disk_bytes_per_event": stored_per_event(*stored),
    }


# What the events counted so far (the fill's and the batches') take on disk: the dedup ledger (heap and
# indexes) and the event log's partitions (arrays compressed out of line, their TOAST included).
STORED_SQL = """
SELECT pg_total_relation_size('event_ids'),
       (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('event_log')),
       (SELECT count(*) FROM event_ids)
"""


def stored_per_event(ledger: int, log: int, events: int) -> dict[str, int]:
    return {"ledger": round(ledger / events), "event_log": round(int(log) / events)}


async def record(url: str, args: argparse.Namespace, run: str, now: datetime) -> list[bytes]:
    """The SQL `args.batches` batches of new events send, as psycopg2 sent it (parameters in place)."""
    sent: list[bytes] = []
    execute = aiopg.Cursor.execute

    async def recording(cursor: aiopg.Cursor, operation: str, parameters: Any = None, **kw: Any) -> Any:
        result = await execute(cursor, operation, parameters, **kw)
        sent.append(cursor._impl.query)
        return result

    store = await Store.connect(url, size=1)
    ledger = LedgerInsert()
    aiopg.Cursor.execute = recording  # type: ignore[method-assign]
    try:
        for number in range(args.batches):
            events = batch(run, number, args.size, int(now.timestamp() * 1000), args.ids)
            await store.write_batch(events, now=now, ledger=ledger)
    finally:
        aiopg.Cursor.execute = execute  # type: ignore[method-assign]
        await store.close()
    return sent


def replay_instructions(
    servers: LocalStack, snapshot: Path, statements: list[bytes], out: Path | None
) -> int:
    """Instructions a single-user backend runs for `statements` on a copy of `snapshot` (callgrind)."""
    copy = snapshot.with_name("replay")
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-a", str(snapshot), str(copy)], check=True)  # owner and modes kept
    script = b"".join(statement.rstrip().rstrip(b";") + b";\n\n" for statement in statements)  # -j ends
    written = str(copy / "callgrind.out") if out else "/dev/null"  # where the server's user may write
    command = servers.pg_command(
        "postgres", "--single", "-j", "-D", str(copy), "flagmeter",
        wrapper=["valgrind", "--tool=callgrind", f"--callgrind-out-file={written}"],
    )  # fmt: skip
    done = subprocess.run(command, input=script, capture_output=True, check=True)
    if out:
        shutil.copy(written, out)
    if b"ERROR:" in done.stdout + done.stderr:
        raise SystemExit(f"the replay failed:\n{(done.stdout + done.stderr).decode()[-2000:]}")
    return int(re.findall(rb"Collected : ([0-9]+)", done.stderr)[-1])


def count_instructions(servers: LocalStack, args: argparse.Namespace) -> dict[str, float]:
    """--callgrind: the ledger filled, a copy of the cluster, the batches recorded, then replayed."""
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found: sudo apt-get install -y valgrind")
    run, now = f"r{int(time.time())}", datetime.now(UTC)

    async def fill() -> None:
        store = await Store.connect(servers.database_url, size=1)
        await fill_ledger(store, args, run, now)
        await store.close()

    asyncio.run(fill())
    servers.stop_postgres()
    snapshot = servers.root / "snapshot"
    subprocess.run(["cp", "-a", str(servers.pg_data), str(snapshot)], check=True)
    servers.start_postgres()
    statements = asyncio.run(record(servers.database_url, args, run, now))
    servers.stop_postgres()
    keep = args.keep.resolve() if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    nothing = replay_instructions(servers, snapshot, [], keep and keep / "empty.out")
    counted = replay_instructions(servers, snapshot, statements, keep and keep / "batches.out")
    return {"backend_instructions_per_event": round((counted - nothing) / (args.batches * args.size))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--size", type=int, default=4000, help="events per batch (the worker's 4,000)")
    parser.add_argument("--ledger", type=int, default=400_000, help="ledger rows written before measuring")
    parser.add_argument("--setting", action="append", default=[], help="name=value for postgresql.conf")
    parser.add_argument("--sql", action="append", default=[], help="run after migrating, before the run")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="a counting statement to try")
    parser.add_argument("--callgrind", action="store_true", help="count the backend's instructions instead")
    parser.add_argument("--keep", type=Path, help="with --callgrind: keep its files in this directory")
    parser.add_argument("--ids", choices=sorted(ID_FORMS), default="sequential", help="event ids (ID_FORMS)")
    parser.add_argument("--locale", default=DATABASE_LOCALE, help="the cluster's (default: %(default)s)")
    args = parser.parse_args()
    if args.variant:
        VARIANTS[args.variant]()
    print(describe(calibrate()), flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = ROOT / ".run" / f"counting-{stamp}"
    servers = LocalStack(root, locale=args.locale)
    servers.start_postgres()
    try:
        if args.setting:
            with open(servers.pg_data / "postgresql.conf", "a") as conf:
                conf.write("".join(f"\n{setting}" for setting in args.setting) + "\n")
            servers.stop_postgres()
            servers.start_postgres()
        url = servers.database_url
        asyncio.run(migrate(url))
        collation = asyncio.run(_prepare(url, args.sql))
        result = count_instructions(servers, args) if args.callgrind else asyncio.run(measure(url, args))
    finally:
        servers.stop_postgres()
        shutil.rmtree(root, ignore_errors=True)
    run = {
        "collation": collation,
        "ids": args.ids,
        "settings": args.setting,
        "sql": args.sql,
        "variant": args.variant,
    }
    print(run | result)
    return 0


async def _prepare(url: str, statements: list[str]) -> str:
    """The database's collation, once the tenants are in and `statements` run."""
    store = await Store.connect(url, size=1)
    async with store._cursor() as cur:
        for tenant in TENANTS:
            await cur.execute(
                "INSERT INTO tenants (id, name, monthly_quota) VALUES (%s, %s, 1000000000000)",
                (tenant, tenant),
            )
        for statement in statements:
            await cur.execute(statement)
        await cur.execute(COLLATION_SQL)
        (collation,) = await cur.fetchone()
    await store.close()
    return str(collation)


if __name__ == "__main__":
    sys.exit(main())
