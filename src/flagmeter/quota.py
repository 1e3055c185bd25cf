"""Quota checks and reservations: the pure part (fields, days of a period, the figures, requests).

Redis keeps the live figures per tenant per UTC day (see tally.py): billing periods always start at
00:00 UTC, so a period is a whole number of days and a billing-day change or a rollover needs no
re-keying, only another set of days to sum.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .events import MAX_TOKENS, TENANT_ID, Columns, Event, Rejection, columns
from .periods import Period

DAY_MS = 86_400_000
MAX_TTL_S = 3600
DEFAULT_TTL_S = 300
RESERVATION_ID = re.compile(r"[\x20-\x7e]{1,128}")


_day_names: dict[int, str] = {}  # a service sees a few days at a time; formatting one costs ~2 us


def day_of(moment_ms: int) -> str:
    """The UTC day (YYYY-MM-DD) an instant falls on."""
    number = moment_ms // DAY_MS
    name = _day_names.get(number)
    if name is None:
        if len(_day_names) > 1000:
            _day_names.clear()
        name = _day_names[number] = datetime.fromtimestamp(number * 86_400, UTC).strftime("%Y-%m-%d")
    return name


def tally(events: Sequence[Event]) -> bytes:
    """What a stream entry adds to the pending figures: [field, tokens, ...] as JSON ('' when none)."""
    return tally_columns(columns(events))


def tally_columns(groups: Iterable[Columns]) -> bytes:
    """`tally` of events as the stream's columns (events.columns) hold them."""
    totals: dict[str, int] = {}
    for tenant, _, _, _, tokens, occurred in groups:
        first, last = min(occurred) // DAY_MS, max(occurred) // DAY_MS
        if first == last:  # a request's events mostly fall on one day: summed in C
            days: dict[int, int] = {first: sum(tokens)}
        else:
            days = {}
            for count, moment_ms in zip(tokens, occurred, strict=True):
                day = moment_ms // DAY_MS
                days[day] = days.get(day, 0) + count
        for day, run in days.items():
            if run:
                field = day_field(tenant, day_of(day * DAY_MS))
                totals[field] = totals.get(field, 0) + run
    return orjson.dumps([x for pair in totals.items() for x in pair]) if totals else b""


def day_field(tenant: str, day: str) -> str:
    """A (tenant, day) field of the pending and counted hashes; a tenant slug holds no '|'."""
    return f"{tenant}|{day}"


def period_days(period: Period) -> list[str]:
    days = []
    moment = period.start
    while moment < period.end:
        days.append(moment.strftime("%Y-%m-%d"))
        moment += timedelta(days=1)
    return days


@dataclass(frozen=True, slots=True)
class Figures:
    """A tenant's quota figures in its current period, as one atomic Redis read saw them."""

    quota: int
    used: int
    reserved: int

    @property
    def remaining(self) -> int:
        return max(0, self.quota - self.used - self.reserved)

    def allows(self, tokens: int) -> bool:
        return tokens <= self.remaining


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    tokens: int
    ttl_s: int
    id: str
    tenant: str | None  # named in the body; only the admin may name one


class InvalidFields(Exception):
    """One or more fields of a request are invalid: (field, code, message) each."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        super().__init__(problems[0][2])
        self.problems = problems


def parse_tokens(raw: Any, minimum: int) -> int:
    if type(raw) is not int or not minimum <= raw <= MAX_TOKENS:
        raise Rejection("invalid_tokens", f"tokens must be an integer from {minimum} to {MAX_TOKENS}")
    return raw


def parse_reservation_id(raw: Any) -> str:
    if not isinstance(raw, str) or not RESERVATION_ID.fullmatch(raw):
        raise Rejection("invalid_id", "id must be 1-128 printable ASCII characters")
    return raw


def reservation_request(body: dict[str, Any]) -> ReservationRequest:
    """Judge a POST /v1/reservations body; every invalid field is reported, each with its code."""
    problems: list[tuple[str, str, str]] = []
    tokens, ttl_s, ident, tenant = 0, DEFAULT_TTL_S, "", None
    try:
        tokens = parse_tokens(body.get("tokens"), 1)
    except Rejection as rejection:
        problems.append(("tokens", rejection.code, rejection.message))
    raw_ttl = body.get("ttl_seconds", DEFAULT_TTL_S)
    if type(raw_ttl) is int and 1 <= raw_ttl <= MAX_TTL_S:
        ttl_s = raw_ttl
    else:
        problems.append(
            ("ttl_seconds", "invalid_ttl", f"ttl_seconds must be an integer from 1 to {MAX_TTL_S}")
        )
    try:
        ident = "rsv_" + os.urandom(12).hex() if body.get("id") is None else parse_reservation_id(body["id"])
    except Rejection as rejection:
        problems.append(("id", rejection.code, rejection.message))
    raw_tenant = body.get("tenant")
    if raw_tenant is not None:
        if isinstance(raw_tenant, str) and TENANT_ID.fullmatch(raw_tenant):
            tenant = raw_tenant
        else:
            problems.append(("tenant", "invalid_tenant", "tenant must be a slug [a-z0-9][a-z0-9-]{0,62}"))
    if problems:
        raise InvalidFields(problems)
    return ReservationRequest(tokens, ttl_s, ident, tenant)


def named_reservation(raw: dict[str, Any]) -> str | None:
    """The reservation an event settles (its optional `reservation` field)."""
    ident = raw.get("reservation")
    if ident is None:
        return None
    try:
        return parse_reservation_id(ident)
    except Rejection:
        raise Rejection(
            "invalid_reservation", "reservation must be 1-128 printable ASCII characters"
        ) from None
