"""quota.tally, the pending tokens a stream entry adds per (tenant, UTC day): pure, against a plain sum.

tally sums runs of one tenant and day as integers (the API's hot path); whatever the order of the
events, it must name the same fields with the same totals as summing event by event.
"""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from flagmeter.events import Event
from flagmeter.quota import DAY_MS, day_field, day_of, tally

DAY_ONE = 1_764_547_200_000  # 2025-12-01T00:00:00Z

events = st.lists(
    st.builds(
        Event,
        tenant=st.sampled_from(["acme", "beta", "c-3"]),
        id=st.just("e"),
        feature=st.just("chat"),
        tokens=st.sampled_from([0, 1, 7, 10**9]),
        occurred_ms=st.integers(DAY_ONE - 1, DAY_ONE + 2 * DAY_MS),
        received_ms=st.just(DAY_ONE),
    ),
    max_size=40,
)


@given(events)
def test_tally_names_every_tenant_day_with_tokens_and_its_sum(batch: list[Event]) -> None:
    expected: dict[str, int] = {}
    for event in batch:
        if event.tokens:
            field = day_field(event.tenant, day_of(event.occurred_ms))
            expected[field] = expected.get(field, 0) + event.tokens
    written = tally(batch)
    pairs = orjson.loads(written) if written else []
    assert dict(zip(pairs[::2], pairs[1::2], strict=True)) == expected
    assert len(pairs) == 2 * len(expected)  # each field once


def test_a_day_boundary_splits_one_tenants_run() -> None:
    batch = [Event("acme", str(n), "chat", 5, DAY_ONE - 1 + n, DAY_ONE) for n in range(3)]
    assert orjson.loads(tally(batch)) == ["acme|2025-11-30", 5, "acme|2025-12-01", 10]
