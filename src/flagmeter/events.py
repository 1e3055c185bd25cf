"""Usage-event validation and normalisation. Pure: the caller passes the clock and the tenant lookup."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import groupby
from operator import itemgetter
from typing import Any, NamedTuple

MAX_BATCH = 1000
MAX_TOKENS = 10**9
MAX_AGE_MS = 35 * 24 * 3600 * 1000
MAX_AHEAD_MS = 5 * 60 * 1000
MAX_ID_LENGTH = 128
# The ASCII unit separator: no tenant id, event id or feature may hold it (all are printable ASCII), so
# a column of them travels to PostgreSQL as one string joined by it (flagmeter.store.base.joined).
TEXT_SEPARATOR = "\x1f"

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# A tenant's display name, trimmed: any text but control characters (C0, DEL, C1; PostgreSQL cannot even
# hold a NUL), 1-200 characters.
TENANT_NAME = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,200}")
FEATURE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


_valid_features: set[str] = set()  # features seen valid: a service sees few, and skips the regex


def _valid_feature(feature: str) -> bool:
    if feature in _valid_features:
        return True
    if not FEATURE.fullmatch(feature):
        return False
    if len(_valid_features) < 10_000:
        _valid_features.add(feature)
    return True


class Event(NamedTuple):
    """An accepted event, as it travels through the stream to the worker.

    A named tuple: immutable, cheap to build (the API makes one per event); the stream carries a
    request's events as columns of these fields (stream.encode).
    """

    tenant: str
    id: str
    feature: str
    tokens: int
    occurred_ms: int
    received_ms: int


# A run of events of one tenant and received time, as columns: a request's events share its received
# time, and a tenant key's its tenant (one group; several for an admin's batch of several tenants).
# (tenant, received_ms, ids, features, tokens, occurred_ms): the API judges a batch into them, the
# stream carries them, and the worker counts them, with no object per event on the way.
Columns = tuple[str, int, Sequence[str], Sequence[str], Sequence[int], Sequence[int]]


def columns(events: Sequence[Event]) -> list[Columns]:
    """(tenant, received_ms, ids, features, tokens, occurred_ms) per run of one tenant and received time."""
    if not events:
        return []
    tenants, ids, features, tokens, occurred, received = zip(*events, strict=True)
    n = len(events)
    if tenants.count(tenants[0]) == n and received.count(received[0]) == n:  # a request's: one group
        return [(tenants[0], received[0], ids, features, tokens, occurred)]
    groups: list[Columns] = []
    for (tenant, received_ms), run in groupby(events, _TENANT_AND_RECEIVED):
        _, ids, features, tokens, occurred, _ = zip(*run, strict=True)
        groups.append((tenant, received_ms, ids, features, tokens, occurred))
    return groups


_TENANT_AND_RECEIVED = itemgetter(0, 5)


# Event(...) without the named tuple's generated __new__ (a Python frame per event on the API's hot path)
_new_event = tuple.__new__


class Rejection(Exception):
    """Why one event was not accepted; `code` is part of the API contract."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Date and time to the second ("YYYY-MM-DDTHH:MM:SS", as given) → epoch seconds, once each: a batch's
# events share their seconds, and checking the calendar and converting is most of a parse's cost.
_EPOCH_SECONDS: dict[str, int] = {}
_EPOCH_SECONDS_KEPT = 4096


def parse_timestamp(raw: Any) -> int:
    """RFC 3339 with an explicit offset → epoch milliseconds (digits past the millisecond dropped)."""
    match = RFC3339.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise Rejection("invalid_timestamp", "timestamp must be an RFC 3339 date-time with an offset")
    to_the_second = raw[:19]
    seconds = _EPOCH_SECONDS.get(to_the_second)
    if seconds is None:
        year, month, day, hour, minute, second = map(int, match.group(1, 2, 3, 4, 5, 6))
        try:
            # datetime() checks the calendar (no 30 February); the rest is integer arithmetic.
            seconds = int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp())
        except ValueError:
            raise Rejection("invalid_timestamp", f"timestamp {raw!r} is not a valid date-time") from None
        if len(_EPOCH_SECONDS) >= _EPOCH_SECONDS_KEPT:
            _EPOCH_SECONDS.clear()
        _EPOCH_SECONDS[to_the_second] = seconds
    fraction, sign, offset_h, offset_m = match.group(7, 8, 9, 10)
    millis = seconds * 1000 + (int(fraction[:3].ljust(3, "0")) if fraction else 0)
    if sign is not None:
        if int(offset_h) > 23 or int(offset_m) > 59:
            raise Rejection("invalid_timestamp", f"timestamp {raw!r} has an invalid offset")
        offset = (int(offset_h) * 60 + int(offset_m)) * 60_000
        millis += -offset if sign == "+" else offset
    return millis


def time_ordered_id(now_ms: int) -> str:
    """An id for an event sent without one: its receipt's millisecond (12 hex digits), then 80 random
    bits, in UUIDv7's order. Ids made close in time sort side by side, so the ledger's B-tree takes them
    in a few leaves; a random id lands in a leaf of its own anywhere in the tree, which cost PostgreSQL
    1.7 times the CPU per event in the bench (docs/performance.md, issue 15's twelfth pass)."""
    return f"{now_ms:012x}{os.urandom(10).hex()}"


def normalise(
    raw: Any,
    *,
    now_ms: int,
    key_tenant: str | None,
    tenant_exists: Callable[[str], bool],
) -> Event:
    """Judge one event alone. `key_tenant` is the caller's tenant, None for the admin."""
    if not isinstance(raw, dict):
        raise Rejection("invalid_event", "an event must be a JSON object")

    tenant = raw.get("tenant", key_tenant)
    if tenant is None:
        raise Rejection("missing_tenant", "tenant is required with the admin token")
    if tenant != key_tenant:  # the key's own tenant is a valid slug already
        if not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant):
            raise Rejection("invalid_tenant", "tenant must be a slug [a-z0-9][a-z0-9-]{0,62}")
        if key_tenant is not None:
            raise Rejection("forbidden", "this key may only post events for its own tenant")

    event_id = raw.get("id")
    if event_id is None:
        event_id = time_ordered_id(now_ms)
    elif not (
        isinstance(event_id, str)
        and 0 < len(event_id) <= MAX_ID_LENGTH
        and event_id.isascii()
        and event_id.isprintable()  # with isascii: [\x20-\x7e] (isprintable() excludes \x7f)
    ):
        raise Rejection("invalid_id", f"id must be 1-{MAX_ID_LENGTH} printable ASCII characters")

    feature = raw.get("feature")
    if not isinstance(feature, str) or not _valid_feature(feature):
        raise Rejection("invalid_feature", "feature must be 1-64 characters of [A-Za-z0-9_.:-]")

    tokens = raw.get("tokens")
    if type(tokens) is not int or not 0 <= tokens <= MAX_TOKENS:
        raise Rejection("invalid_tokens", f"tokens must be an integer from 0 to {MAX_TOKENS}")

    timestamp = raw.get("timestamp")
    if timestamp is None:
        occurred_ms = now_ms
    else:
        occurred_ms = parse_timestamp(timestamp)
        if occurred_ms < now_ms - MAX_AGE_MS:
            raise Rejection("timestamp_too_old", "timestamp is more than 35 days in the past")
        if occurred_ms > now_ms + MAX_AHEAD_MS:
            raise Rejection("timestamp_in_future", "timestamp is more than 5 minutes in the future")

    if not tenant_exists(tenant):
        raise Rejection("unknown_tenant", f"tenant {tenant!r} does not exist")
    return _new_event(Event, (tenant, event_id, feature, tokens, occurred_ms, now_ms))


# [\x20-\x7e], as `normalise` allows in an id: deleting these leaves nothing of a valid batch's ids (a
# third of isprintable()'s cost)
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
# A batch `judge_columns` takes whole: every event names these fields, and may give a timestamp and its
# key's own tenant, the same fields in every event.
_REQUIRED_FIELDS = (itemgetter("id"), itemgetter("feature"), itemgetter("tokens"))
_OPTIONAL_FIELDS = {"timestamp": itemgetter("timestamp"), "tenant": itemgetter("tenant")}


def judge_columns(items: list[Any], *, now_ms: int, key_tenant: str) -> Columns | None:
    """A tenant key's batch judged a field at a time, with no Python run per event.

    The batch's one group of columns when every event is one `normalise` accepts, of the same fields,
    none of them a reservation, and no id repeats: the events `normalise` would make, in order. None
    otherwise: then each event is judged alone, which says which ones fail and why.
    """
    if set(map(type, items)) != {dict}:
        return None
    optional = {name: _OPTIONAL_FIELDS[name] for name in _OPTIONAL_FIELDS if name in items[0]}
    try:
        ids, features, tokens = (tuple(map(field, items)) for field in _REQUIRED_FIELDS)
        given = {name: tuple(map(field, items)) for name, field in optional.items()}
    except KeyError:
        return None
    if set(map(len, items)) != {len(_REQUIRED_FIELDS) + len(given)}:  # each: exactly the first's fields
        return None
    n = len(items)
    if "tenant" in given and given["tenant"].count(key_tenant) != n:
        return None
    if not (
        all_of_type(ids, str) and "" not in ids and max(map(len, ids)) <= MAX_ID_LENGTH and len(set(ids)) == n
    ):
        return None
    joined = "".join(ids)  # printable ASCII throughout exactly when every id is
    if not (joined.isascii() and not joined.encode().translate(None, _PRINTABLE_ASCII)):
        return None
    if not (all_of_type(features, str) and all(map(_valid_feature, set(features)))):
        return None
    if not (all_of_type(tokens, int) and 0 <= min(tokens) and max(tokens) <= MAX_TOKENS):
        return None
    if "timestamp" in given:
        try:
            occurred = tuple(map(parse_timestamp, given["timestamp"]))
        except Rejection:
            return None
        if min(occurred) < now_ms - MAX_AGE_MS or max(occurred) > now_ms + MAX_AHEAD_MS:
            return None
    else:
        occurred = (now_ms,) * n
    return (key_tenant, now_ms, ids, features, tokens, occurred)


def all_of_type(values: Sequence[Any], kind: type) -> bool:
    """Every value is exactly a `kind` (a bool is not an int here), and there is one at least."""
    return set(map(type, values)) == {kind}
