"""How the dashboard writes numbers, percentages and times for people (pure, no I/O)."""

from __future__ import annotations

from datetime import datetime

from ...periods import Period
from ...store import AlertRecord

UNITS = ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k"))


def compact(tokens: float) -> str:
    """An axis label: 2500000 → '2.5M'."""
    for size, unit in UNITS:
        if tokens >= size:
            return f"{tokens / size:g}{unit}"
    return f"{tokens:g}"


def percent_label(percent: float) -> str:
    """5000010.0 → '5,000,010 %', 12.5 → '12.5 %': grouped, never an exponent."""
    return f"{percent:,.2f}".rstrip("0").rstrip(".") + " %"


def level(percent: float) -> str:
    """The CSS class for a share of the quota: red from 80 %, amber from 60 %."""
    return "level-red" if percent >= 80 else "level-amber" if percent >= 60 else "level-ok"


def human_time(moment: datetime, *, seconds: bool = False) -> str:
    """A time as people read it: '3 May 2026, 14:02 UTC' (the exact value goes in a title)."""
    return f"{moment.day} {moment:%b %Y, %H:%M{':%S' if seconds else ''}} UTC"


def human_date(moment: datetime) -> str:
    return f"{moment.day} {moment:%b %Y}"


def period_label(period: Period) -> str:
    return f"{human_date(period.start)} \N{EN DASH} {human_date(period.end)}"


def delivery_summary(record: AlertRecord) -> str:
    """Where an alert went and how that ended, in one line: '<target>: <status> after N attempt(s)'."""
    text = "; ".join(
        f"{d.target}: {d.status} after {d.attempts} attempt(s)"
        + (f" ({d.last_error})" if d.last_error else "")
        for d in record.deliveries
    )
    return text or "no target configured"
