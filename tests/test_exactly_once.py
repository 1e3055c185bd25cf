"""Exactly-once counting: duplicate ids, client retries, workers killed mid-batch, racing workers."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis

from flagmeter.events import Event
from flagmeter.stream import Stream, decode, encode
from stacklib import Process, Stack, events_in, wait_until


def ev(tokens: int, event_id: str | None = None) -> dict[str, object]:
    return {
        "id": event_id or uuid.uuid4().hex,
        "feature": random.choice(["chat", "embed", "tts"]),
        "tokens": tokens,
    }


def test_duplicate_event_id_within_one_batch_counts_once(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    status, body, _ = stack.request("POST", "/v1/events", [ev(5, "same"), ev(5, "same"), ev(1)], token=key)
    assert status == 202 and body["accepted"] == 2
    assert body["duplicates"] == [{"index": 1, "id": "same"}]
    stack.wait_used(tenant, 6)
    time.sleep(0.5)
    assert stack.usage(tenant)["used"] == 6
    assert stack.counted_rows(tenant) == 2


def test_duplicate_event_id_counts_once_across_batches_and_retries(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    batch = [ev(10) for _ in range(50)]
    for _ in range(3):  # a client retrying the whole batch
        assert stack.request("POST", "/v1/events", batch, token=key)[0] == 202
    assert stack.request("POST", "/v1/events", batch[7], token=key)[0] == 202
    stack.wait_used(tenant, 500)
    time.sleep(1)
    assert stack.usage(tenant)["used"] == 500
    assert stack.counted_rows(tenant) == 50


def test_same_id_for_two_tenants_counts_for_each(stack: Stack) -> None:
    first, first_key = stack.create_tenant()
    second, second_key = stack.create_tenant()
    stack.request("POST", "/v1/events", ev(3, "shared-id"), token=first_key)
    stack.request("POST", "/v1/events", ev(4, "shared-id"), token=second_key)
    stack.wait_used(first, 3)
    stack.wait_used(second, 4)


def _isolated(stack: Stack, **env: str) -> dict[str, str]:
    """Env for a pipeline of its own: a fresh stream and group, so the session worker stays out."""
    return {"FLAGMETER_STREAM": f"test:{uuid.uuid4().hex[:8]}", **env}


def _holding(client: redis.Redis, stream: str, worker: Process) -> bool:
    try:
        consumers = client.xinfo_consumers(stream, "flagmeter-workers")
    except redis.ResponseError as error:  # NOGROUP: the new worker has not created its group yet
        if "NOGROUP" not in str(error):
            raise
        return False
    return any(f"-{worker.popen.pid}-" in c["name"].decode() and c["pending"] > 0 for c in consumers)


def _post_in_background(
    stack: Stack, url: str, key: str, batches: list[list[dict[str, object]]]
) -> threading.Thread:
    def post() -> None:
        for batch in batches:
            status, body, _ = stack.request("POST", "/v1/events", batch, token=key, base=url)
            assert status == 202, body

    thread = threading.Thread(target=post)
    thread.start()
    return thread


@pytest.mark.slow
def test_worker_killed_mid_batch_loses_and_doubles_nothing(stack: Stack) -> None:
    env = _isolated(stack, FLAGMETER_CLAIM_IDLE_MS="1000", FLAGMETER_BATCH_SIZE="500")
    tenant, key = stack.create_tenant(quota=10**12)
    api, url = stack.start_api(processes=1, **env)
    batches = [[ev(random.randint(1, 1000)) for _ in range(1000)] for _ in range(30)]
    expected = sum(int(e["tokens"]) for batch in batches for e in batch)  # type: ignore[call-overload]
    client = redis.Redis.from_url(stack.redis_url)
    killed_holding = 0
    poster = _post_in_background(stack, url, key, batches + batches[:5])  # the last five are client retries
    try:
        for _ in range(4):
            worker, _ = stack.start_worker(**env)
            # Kill it the moment it holds entries it has not acked (its consumer name holds its pid).
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not _holding(client, env["FLAGMETER_STREAM"], worker):
                time.sleep(0.005)
            killed_holding += _holding(client, env["FLAGMETER_STREAM"], worker)
            worker.stop(signal.SIGKILL)
        poster.join(120)
        first, _ = stack.start_worker(**env)
        second, _ = stack.start_worker(**env)  # the dead workers' entries are reclaimed by either
        stack.wait_used(tenant, expected, timeout=90, base=url)
        time.sleep(1.5)
        assert stack.usage(tenant, url)["used"] == expected
        assert stack.counted_rows(tenant) == 30_000
        assert killed_holding >= 2, "workers were not killed holding entries; the test proved nothing"
        assert client.xlen(env["FLAGMETER_STREAM"]) == 0
        for worker in (first, second):
            assert worker.stop() == 0  # SIGTERM: finish the batch in hand, exit 0
    finally:
        api.stop()


@pytest.mark.slow
def test_workers_racing_on_reclaimed_entries_count_once(stack: Stack) -> None:
    # An idle timeout far below a batch's duration makes workers steal each other's entries mid-batch.
    env = _isolated(stack, FLAGMETER_CLAIM_IDLE_MS="100", FLAGMETER_BATCH_SIZE="1000")
    tenant, key = stack.create_tenant(quota=10**12)
    api, url = stack.start_api(processes=1, **env)
    workers = [stack.start_worker(**env)[0] for _ in range(3)]
    try:
        batches = [[ev(random.randint(1, 100)) for _ in range(1000)] for _ in range(15)]
        expected = sum(int(e["tokens"]) for batch in batches for e in batch)  # type: ignore[call-overload]
        _post_in_background(stack, url, key, batches).join(120)
        stack.wait_used(tenant, expected, timeout=90, base=url)
        time.sleep(1.5)
        assert stack.usage(tenant, url)["used"] == expected
        assert stack.counted_rows(tenant) == 15_000
    finally:
        for worker in workers:
            worker.stop()
        api.stop()


@pytest.mark.slow
def test_an_entry_that_keeps_failing_is_dead_lettered_without_blocking_the_line(stack: Stack) -> None:
    env = _isolated(stack, FLAGMETER_CLAIM_IDLE_MS="200", FLAGMETER_MAX_DELIVERIES="3")
    tenant, key = stack.create_tenant()
    client = redis.Redis.from_url(stack.redis_url)
    stream = env["FLAGMETER_STREAM"]
    client.xgroup_create(stream, "flagmeter-workers", id="0", mkstream=True)
    # A well-formed entry the database refuses (a bigint overflow in the rollup), between good ones.
    client.xadd(
        stream, {"e": f'["{tenant}","a","chat",5,{int(time.time() * 1000)},{int(time.time() * 1000)}]'}
    )
    client.xadd(stream, {"e": f'["{tenant}","poison","chat",{2**63 - 1},{int(time.time() * 1000)},0]'})
    client.xadd(stream, {"e": b"not json"})
    client.xadd(
        stream, {"e": f'["{tenant}","b","chat",6,{int(time.time() * 1000)},{int(time.time() * 1000)}]'}
    )
    api, url = stack.start_api(processes=1, **env)
    worker, _ = stack.start_worker(**env)
    try:
        stack.wait_used(tenant, 11, timeout=30, base=url)
        deadline = time.monotonic() + 30
        while client.xlen(f"{stream}:dead") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        dead = {fields[b"reason"] for _, fields in client.xrange(f"{stream}:dead")}
        assert dead == {b"malformed", b"max_deliveries"}
        assert client.xlen(stream) == 0
        # The line keeps moving after the poison entry.
        status, _, _ = stack.request("POST", "/v1/events", ev(1), token=key, base=url)
        assert status == 202
        stack.wait_used(tenant, 12, timeout=30, base=url)
    finally:
        worker.stop()
        api.stop()


def test_a_starting_worker_counts_once_what_an_older_worker_could_not_read(stack: Stack) -> None:
    # A rolling upgrade: a worker from before the columnar stream entries dead-lettered the new API's
    # entries as malformed (fields as Stream.dead_letter_entries writes them, then as now).
    env = _isolated(stack)
    tenant, _ = stack.create_tenant()
    client = redis.Redis.from_url(stack.redis_url)
    stream, dead = env["FLAGMETER_STREAM"], f"{env['FLAGMETER_STREAM']}:dead"
    now = int(time.time() * 1000)
    entry = encode([Event(tenant, "up-1", "chat", 5, now, now), Event(tenant, "up-2", "tts", 2, now, now)])
    for source, payload, reason in [
        ("1-0", entry, "malformed"),
        ("2-0", entry, "malformed"),  # the same request twice (a client's retry): counted once
        ("3-0", b"not json", "malformed"),  # unreadable still: stays
        ("4-0", encode([Event("nobody", "x", "chat", 1, now, now)]), "unknown_tenant"),  # not this case's
    ]:
        client.xadd(dead, {"e": payload, "source_id": source, "reason": reason, "deliveries": "1"})
    api, url = stack.start_api(processes=1, **env)
    later = encode([Event(tenant, "up-3", "chat", 4, now, now)])
    try:
        for used, rows in [(7, 2), (11, 3)]:  # each event counted once
            worker, _ = stack.start_worker(**env)
            try:
                stack.wait_used(tenant, used, base=url)
                wait_until(lambda: client.xlen(stream) == 0, 10, "the put-back entries to be acked")
                assert stack.counted_rows(tenant) == rows
                assert [f[b"source_id"] for _, f in client.xrange(dead)] == [b"3-0", b"4-0"]
                assert client.exists(f"{stream}:quota:pending") == 0  # each tally added, then taken off
            finally:
                worker.stop()
            # Left by an old worker still running after the first new one started: the next start
            # puts back just this one.
            client.xadd(dead, {"e": later, "source_id": "5-0", "reason": "malformed", "deliveries": "1"})
    finally:
        api.stop()


# The last commit before the columnar stream entries (fdf7548): what a rolling upgrade replaces.
BEFORE_COLUMNS = "dc013a8c9a7015d6086549e39d86f3897aa392dc"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release_before_columns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `src/` of the release before the columnar entries, from this repository's history."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE_COLUMNS}^{{commit}}"])
    if known.returncode != 0:
        pytest.skip(f"commit {BEFORE_COLUMNS} is not in this clone (shallow?): cannot run the older worker")
    root = tmp_path_factory.mktemp("before-columns")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BEFORE_COLUMNS, "src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root / "src"


@pytest.mark.slow
def test_an_upgrade_from_a_worker_that_reads_only_rows_loses_and_doubles_nothing(
    stack: Stack, release_before_columns: Path
) -> None:
    # The new API beside the previous release's worker (run from its own source on the new schema),
    # then that worker replaced by the new one, as a rolling upgrade does.
    env = _isolated(stack)
    tenant, key = stack.create_tenant()
    client = redis.Redis.from_url(stack.redis_url)
    stream = env["FLAGMETER_STREAM"]
    client.xgroup_create(stream, "flagmeter-workers", id="0", mkstream=True)
    now = int(time.time() * 1000)
    client.xadd(stream, {"e": orjson.dumps([[tenant, "row", "chat", 3, now, now]])})  # an older API's
    api, url = stack.start_api(processes=1, **env)
    old, _ = stack.start_worker(PYTHONPATH=str(release_before_columns), **env)
    try:
        stack.wait_used(tenant, 3, base=url)  # the old worker counts rows on the new schema
        for batch in ([ev(5, "a"), ev(2, "b")], [ev(4, "c")], [ev(5, "a")]):  # the last a client's retry
            assert stack.request("POST", "/v1/events", batch, token=key, base=url)[0] == 202
        wait_until(lambda: client.xlen(f"{stream}:dead") == 3, 20, "the old worker to dead-letter them")
        assert {f[b"reason"] for _, f in client.xrange(f"{stream}:dead")} == {b"malformed"}
        assert stack.counted_rows(tenant) == 1
    finally:
        old.stop()
    new, _ = stack.start_worker(**env)
    try:
        stack.wait_used(tenant, 14, base=url)
        wait_until(lambda: client.xlen(stream) == 0, 10, "the put-back entries to be acked")
        assert stack.counted_rows(tenant) == 4
        assert client.xlen(f"{stream}:dead") == 0
        assert client.exists(f"{stream}:quota:pending") == 0
    finally:
        new.stop()
        api.stop()


OwnStream = tuple[str, Stream, redis.Redis]


@pytest.fixture
async def own_stream(stack: Stack) -> AsyncIterator[OwnStream]:
    """A stream of its own (no worker reads it) with its group, and a plain client on the same Redis."""
    name = f"test:{uuid.uuid4().hex[:8]}"
    stream = Stream.from_url(stack.redis_url, name, "flagmeter-workers", f"{name}:dead")
    await stream.ensure_group()
    yield name, stream, redis.Redis.from_url(stack.redis_url)
    await stream.close()


def _dead_lettered(client: redis.Redis, name: str, payloads: list[bytes]) -> None:
    """Dead letters of stream `name`, each dead-lettered as malformed, `source_id` its index."""
    with client.pipeline(transaction=False) as pipe:
        for n, payload in enumerate(payloads):
            pipe.xadd(f"{name}:dead", {"e": payload, "source_id": str(n), "reason": "malformed"})
        pipe.execute()


async def test_a_replay_takes_only_the_dead_letters_there_when_it_starts(own_stream: OwnStream) -> None:
    name, stream, client = own_stream
    assert await stream.last_dead_letter() == "0-0"
    _dead_lettered(client, name, [b"not json", b"not json"])
    through = await stream.last_dead_letter()
    client.xadd(f"{name}:dead", {"e": b"not json", "source_id": "2", "reason": "malformed"})  # later
    assert await stream.replay_dead_letters(1, through) == (1, 1)
    assert await stream.replay_dead_letters(100, through) == (1, 1)
    assert await stream.replay_dead_letters(100, through) == (0, 0)
    assert [f[b"source_id"] for _, f in client.xrange(f"{name}:dead")] == [b"2"]
    assert client.xlen(name) == 2


async def test_a_page_larger_than_one_script_call_goes_back_whole(own_stream: OwnStream) -> None:
    name, stream, client = own_stream
    # ~30 KB each: four script calls of 512 KiB for one page
    ids = [[f"{n}-{i}-{'x' * 32}" for i in range(500)] for n in range(60)]
    _dead_lettered(client, name, [encode([Event("t", i, "chat", 1, 0, 0) for i in row]) for row in ids])
    assert await stream.replay_readable() == 60
    assert client.xlen(name) == 60 and client.xlen(f"{name}:dead") == 0
    assert client.hgetall(f"{name}:quota:pending") == {b"t|1970-01-01": b"30000"}


async def test_two_at_once_put_back_each_dead_letter_once(stack: Stack) -> None:
    name = f"test:{uuid.uuid4().hex[:8]}"
    streams = [Stream.from_url(stack.redis_url, name, "flagmeter-workers", f"{name}:dead") for _ in range(2)]
    client = redis.Redis.from_url(stack.redis_url)
    try:
        await streams[0].ensure_group()
        _dead_lettered(client, name, [encode([Event("t", f"e{n}", "chat", 10, 0, 0)]) for n in range(1000)])
        moved = await asyncio.gather(*(stream.replay_readable() for stream in streams))
        assert sum(moved) == client.xlen(name) == 1000
        assert client.xlen(f"{name}:dead") == 0
        assert client.hgetall(f"{name}:quota:pending") == {b"t|1970-01-01": b"10000"}  # once each
    finally:
        for stream in streams:
            await stream.close()


async def test_only_the_newest_dead_letters_are_looked_through_and_put_back(own_stream: OwnStream) -> None:
    name, stream, client = own_stream
    # every 100th readable, the rest unreadable still
    readable = {n: encode([Event("t", f"e{n}", "chat", 1, 0, 0)]) for n in range(0, 2500, 100)}
    _dead_lettered(client, name, [readable.get(n, b"[1]") for n in range(2500)])
    assert await stream.replay_readable(newest=1200) == 12  # 1300 .. 2400, across pages
    entries = [decode(i, f) for i, f in client.xrange(name)]
    put_back = sorted(event.id for entry in entries for event in events_in(entry.groups) or ())
    assert put_back == [f"e{n}" for n in range(1300, 2500, 100)]
    assert client.xlen(f"{name}:dead") == 2500 - 12
    assert await stream.replay_readable(newest=1200) == 0


def test_a_request_naming_a_missing_tenant_counts_the_rest_and_sets_aside_only_that_tenants_events(
    stack: Stack,
) -> None:
    env = _isolated(stack)
    tenant, _ = stack.create_tenant()
    missing = f"gone-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(stack.redis_url)
    stream = env["FLAGMETER_STREAM"]
    client.xgroup_create(stream, "flagmeter-workers", id="0", mkstream=True)
    now = int(time.time() * 1000)
    rows = [
        [tenant, "a", "chat", 5, now, now],
        [missing, "b", "chat", 7, now, now],
        [tenant, "c", "tts", 2, now, now],
    ]
    client.xadd(stream, {"e": orjson.dumps(rows)})  # one admin request, as the API appends it
    api, url = stack.start_api(processes=1, **env)
    worker, _ = stack.start_worker(**env)
    try:
        stack.wait_used(tenant, 7, base=url)
        deadline = time.monotonic() + 20
        while client.xlen(f"{stream}:dead") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        [(_, fields)] = client.xrange(f"{stream}:dead")
        assert fields[b"reason"] == b"unknown_tenant"
        assert events_in(decode("1-0", fields).groups) == (Event(*rows[1]),)
        assert client.xlen(stream) == 0
        time.sleep(0.5)
        assert stack.usage(tenant, url)["used"] == 7
    finally:
        worker.stop()
        api.stop()


def test_event_ids_with_quotes_backslashes_and_braces_are_stored_verbatim_and_deduplicated(
    stack: Stack,
) -> None:
    tenant, key = stack.create_tenant()
    ids = ['a"b', "c\\d", "e,f", "{g}", " h i ", "NULL", "j'k"]
    batch = [ev(1, event_id) for event_id in ids]
    for _ in range(2):
        assert stack.request("POST", "/v1/events", batch, token=key)[0] == 202
    stack.wait_used(tenant, len(ids))
    time.sleep(0.5)
    assert stack.usage(tenant)["used"] == len(ids)
    stored = stack.sql("SELECT event_id FROM events WHERE tenant_id = %s", (tenant,))
    assert sorted(row[0] for row in stored) == sorted(ids)


@pytest.mark.slow
def test_a_worker_starting_on_a_backlog_of_large_requests_holds_a_few_at_a_time(stack: Stack) -> None:
    env = _isolated(stack)
    tenant, _ = stack.create_tenant(quota=10**12)
    client = redis.Redis.from_url(stack.redis_url)
    stream = env["FLAGMETER_STREAM"]
    client.xgroup_create(stream, "flagmeter-workers", id="0", mkstream=True)
    now = int(time.time() * 1000)
    with client.pipeline(transaction=False) as pipe:
        for request in range(200):  # 200,000 events waiting, in requests of 1,000
            rows = [[tenant, f"{request}-{i}", "chat", 1, now, now] for i in range(1000)]
            pipe.xadd(stream, {"e": orjson.dumps(rows)})
        pipe.execute()
    api, url = stack.start_api(processes=1, **env)
    worker, _ = stack.start_worker(**env)
    try:
        stack.wait_used(tenant, 200_000, timeout=120, base=url)
        status = open(f"/proc/{worker.popen.pid}/status").read()
        peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
        # Reading the whole backlog at once would hold ~200 MB of entries and events.
        assert peak_mb < 120, f"worker peaked at {peak_mb:.0f} MB"
    finally:
        worker.stop()
        api.stop()
