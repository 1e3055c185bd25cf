"""A transaction's events merged into one set of columns (pure): of each tenant's events the first of
each id, in (tenant, id) order, whatever groups they came in."""

from hypothesis import given
from hypothesis import strategies as st

from flagmeter.events import Event, columns
from flagmeter.store.counting import Batch

events = st.lists(
    st.builds(
        Event,
        st.sampled_from(["acme", "globex", "t-1"]),
        st.sampled_from(["a", "b", "c", "d", "B", "a1", "é"]),  # few ids: repeats within and across
        st.sampled_from(["chat", "embed"]),
        st.integers(0, 10**9),
        st.integers(0, 2**53),
        st.sampled_from([1, 2, 3]),  # several received times: several groups of one tenant
    ),
    min_size=1,
    max_size=60,
)


@given(events)
def test_a_batch_holds_the_first_of_each_id_per_tenant_in_tenant_and_id_order(batch: list[Event]) -> None:
    first: dict[tuple[str, str], Event] = {}
    for event in batch:
        first.setdefault((event.tenant, event.id), event)
    expected = [first[key] for key in sorted(first)]

    merged = Batch.of(columns(batch))

    assert merged.given == len(batch)
    assert [Event(*row) for row in zip(*merged.columns, strict=True)] == expected


def test_an_id_of_two_tenants_is_two_events() -> None:
    batch = [Event("globex", "x", "chat", 1, 5, 5), Event("acme", "x", "chat", 2, 5, 5)]
    assert Batch.of(columns(batch)).columns[:2] == (["acme", "globex"], ["x", "x"])
