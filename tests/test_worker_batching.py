"""How the worker cuts what it read into transactions: whole requests, bounded in events."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid

import redis
from hypothesis import given
from hypothesis import strategies as st

from flagmeter.events import Event, columns
from flagmeter.stream import Entry, encode
from flagmeter.worker import CYCLE_S, MAX_READ, read_size, transactions
from stacklib import Stack, wait_until


def entry(n: int, ident: int) -> Entry:
    events = tuple(Event("t", f"{ident}-{i}", "chat", 1, 0, 0) for i in range(n)) or None
    return Entry(f"{ident}-0", b"", tuple(columns(events)) or None)


@given(st.lists(st.integers(min_value=0, max_value=1000), max_size=60), st.integers(1, 2000))
def test_transactions_keep_entries_whole_and_in_order_within_the_limit(sizes: list[int], limit: int) -> None:
    entries = [entry(n, i) for i, n in enumerate(sizes)]
    groups = transactions(entries, limit)
    assert [e for group in groups for e in group] == entries
    for group in groups:
        events = sum(e.size for e in group)
        # Over the limit only when one request alone is larger than it.
        assert events <= limit or len([e for e in group if e.groups]) == 1
        assert group


def test_small_requests_share_one_transaction() -> None:
    groups = transactions([entry(1, i) for i in range(1000)], 1000)
    assert len(groups) == 1


def test_large_requests_each_fill_their_own_transaction() -> None:
    groups = transactions([entry(600, i) for i in range(4)], 1000)
    assert [len(g) for g in groups] == [1, 1, 1, 1]


def test_a_read_asks_for_what_the_transaction_still_has_room_for() -> None:
    assert read_size(4000, 0, 550.0) == 7  # seven requests of 550: 3,850 events
    assert read_size(4000, 3850, 550.0) == 0  # an eighth would not fit: commit what is held
    assert read_size(4000, 0, 1.0) == MAX_READ  # single events: as many entries as one read takes
    assert read_size(4000, 3990, 1.0) == 10
    assert read_size(4000, 4000, 1.0) == 0
    assert read_size(4000, 4400, 550.0) == 0  # past the room (an entry is never split): none


def _transactions(metrics_url: str) -> int:
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(float(re.search(r"^flagmeter_worker_batch_size_count (\S+)$", text, re.M)[1]))  # type: ignore[index]


def _entry(tenant: str, size: int, tokens: int) -> dict[str, bytes]:
    now = int(time.time() * 1000)
    return {"e": encode([Event(tenant, uuid.uuid4().hex, "chat", tokens, now, now) for _ in range(size)])}


def _counted(stack: Stack, tenant: str) -> int:
    return int(
        stack.sql("SELECT coalesce(sum(tokens), 0) FROM period_totals WHERE tenant_id = %s", (tenant,))[0][0]
    )


def test_a_caught_up_worker_lets_its_next_transaction_fill_and_one_behind_reads_back_to_back(
    stack: Stack,
) -> None:
    """Entries trickling in while the worker waits out CYCLE_S after a read that caught up share its next
    transaction (without the wait, each would be a transaction of its own); a backlog is read without
    waiting between transactions."""
    stream = f"test:{uuid.uuid4().hex[:8]}"
    tenant, _ = stack.create_tenant(quota=10**12)
    _, metrics_url = stack.start_worker(FLAGMETER_STREAM=stream, FLAGMETER_BATCH_SIZE="2000")
    client = redis.Redis.from_url(stack.redis_url)
    before = _transactions(metrics_url)

    first = client.xadd(stream, _entry(tenant, 600, 1))
    read = lambda: client.xinfo_groups(stream)[0]["last-delivered-id"] == first  # noqa: E731
    wait_until(read, 10, "the first entry read", ignoring=(IndexError, redis.ResponseError), every=0.002)
    for _ in range(2):  # within the worker's wait (0.8 x CYCLE_S at the least, with its jitter)
        time.sleep(CYCLE_S / 8)
        client.xadd(stream, _entry(tenant, 600, 1))
    wait_until(lambda: _counted(stack, tenant) == 1800, 10, "the three entries counted")
    # The histogram hears of a transaction after its commit and acknowledgement: wait for it too.
    wait_until(lambda: _transactions(metrics_url) - before >= 2, 10, "the transactions observed")
    assert _transactions(metrics_url) - before == 2

    before, started = _transactions(metrics_url), time.monotonic()
    with client.pipeline(transaction=True) as pipe:  # MULTI: the backlog is there at once for any read
        for _ in range(15):
            pipe.xadd(stream, _entry(tenant, 600, 1))
        pipe.execute()
    wait_until(lambda: _counted(stack, tenant) == 1800 + 9000, 10, "the backlog counted", every=0.01)
    # Read three entries at a time (a transaction's worth), five transactions, none waited for: four
    # waits would take 0.64 s at the least.
    assert time.monotonic() - started < 4 * 0.8 * CYCLE_S
    wait_until(lambda: _transactions(metrics_url) - before >= 5, 10, "the transactions observed")
    assert _transactions(metrics_url) - before == 5
