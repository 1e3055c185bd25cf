"""Billing-period arithmetic. Pure: no I/O, no clock.

A tenant's period starts at 00:00 UTC on its billing day of the month, clamped to the
month's last day (billing day 31 starts on Feb 28/29 and Apr 30), and ends where the next
one starts.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def _start_in_month(year: int, month: int, billing_day: int) -> datetime:
    day = min(billing_day, calendar.monthrange(year, month)[1])
    return datetime(year, month, day, tzinfo=UTC)


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def period_containing(moment: datetime, billing_day: int) -> Period:
    """The billing period that `moment` (timezone-aware) falls in."""
    if not 1 <= billing_day <= 31:
        raise ValueError(f"billing_day must be 1..31, got {billing_day}")
    moment = moment.astimezone(UTC)
    year, month = moment.year, moment.month
    start = _start_in_month(year, month, billing_day)
    if moment < start:
        year, month = _shift_month(year, month, -1)
        start = _start_in_month(year, month, billing_day)
    next_year, next_month = _shift_month(year, month, 1)
    return Period(start, _start_in_month(next_year, next_month, billing_day))
