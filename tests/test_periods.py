"""Billing-period arithmetic: the edges named in the issue, then properties over any date and day."""

import calendar
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flagmeter.api.reservations import _period_fields
from flagmeter.periods import period_containing
from flagmeter.quota import day_field, period_days
from flagmeter.store import Tenant


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_billing_day_31_starts_on_the_last_day_of_february() -> None:
    period = period_containing(utc(2025, 3, 10), 31)
    assert period.start == utc(2025, 2, 28)
    assert period.end == utc(2025, 3, 31)


def test_billing_day_31_in_a_leap_year_starts_on_february_29() -> None:
    period = period_containing(utc(2024, 3, 1, 12), 31)
    assert period.start == utc(2024, 2, 29)
    assert period.end == utc(2024, 3, 31)


def test_billing_day_30_in_april_and_day_29_in_a_common_february() -> None:
    assert period_containing(utc(2025, 5, 1), 31).start == utc(2025, 4, 30)
    assert period_containing(utc(2025, 3, 1), 29).start == utc(2025, 2, 28)
    assert period_containing(utc(2024, 3, 1), 29).start == utc(2024, 2, 29)


def test_event_exactly_at_the_boundary_belongs_to_the_new_period() -> None:
    boundary = utc(2025, 7, 15)
    assert period_containing(boundary, 15).start == boundary
    before = period_containing(boundary - timedelta(microseconds=1), 15)
    assert before.start == utc(2025, 6, 15)
    assert before.end == boundary


def test_period_wraps_across_the_new_year() -> None:
    period = period_containing(utc(2026, 1, 5), 20)
    assert period.start == utc(2025, 12, 20)
    assert period.end == utc(2026, 1, 20)


def test_offsets_are_converted_to_utc() -> None:
    from datetime import timezone

    moment = datetime(2025, 8, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))  # 2025-07-31T23:00Z
    assert period_containing(moment, 1).start == utc(2025, 7, 1)


def test_billing_day_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        period_containing(utc(2025, 1, 1), 0)
    with pytest.raises(ValueError):
        period_containing(utc(2025, 1, 1), 32)


moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
)
days = st.integers(min_value=1, max_value=31)


@given(moments, days)
def test_the_period_contains_the_moment_and_starts_at_midnight(moment: datetime, day: int) -> None:
    period = period_containing(moment, day)
    assert period.start <= moment < period.end
    assert period.start.time() == datetime.min.time()
    month_length = calendar.monthrange(period.start.year, period.start.month)[1]
    assert period.start.day == min(day, month_length)


@given(moments, days)
def test_consecutive_periods_tile_time(moment: datetime, day: int) -> None:
    period = period_containing(moment, day)
    following = period_containing(period.end, day)
    assert following.start == period.end
    preceding = period_containing(period.start - timedelta(microseconds=1), day)
    assert preceding.end == period.start


@given(moments, days)
def test_a_period_spans_one_calendar_month(moment: datetime, day: int) -> None:
    period = period_containing(moment, day)
    months = (period.end.year - period.start.year) * 12 + period.end.month - period.start.month
    assert months == 1
    assert timedelta(days=28) <= period.end - period.start <= timedelta(days=31)


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.integers(1, 31),
)
def test_the_checks_period_built_once_a_day_is_the_period_of_the_moment(moment: datetime, day: int) -> None:
    """Checks and reservations build a tenant's period and its day fields once per UTC day (a cache):
    at any moment of that day they are what the moment itself gives."""
    tenant = Tenant("acme", "Acme", 1000, day, moment)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    for when in (midnight, moment, midnight + timedelta(days=1, microseconds=-1)):
        period, fields = _period_fields(tenant, when)
        assert period == period_containing(when, day)
        assert fields == [day_field("acme", name) for name in period_days(period)]
        assert fields[0] == f"acme|{period.start:%Y-%m-%d}"
        assert len(fields) == (period.end - period.start).days
