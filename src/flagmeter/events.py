"""Usage-event validation and normalisation. Pure: the caller passes the clock and the tenant lookup."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_BATCH = 1000
MAX_TOKENS = 10**9
MAX_AGE_MS = 35 * 24 * 3600 * 1000
MAX_AHEAD_MS = 5 * 60 * 1000

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
FEATURE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
EVENT_ID = re.compile(r"[\x20-\x7e]{1,128}")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True, slots=True)
class Event:
    """An accepted event, as it travels through the stream to the worker."""

    tenant: str
    id: str
    feature: str
    tokens: int
    occurred_ms: int
    received_ms: int

    def as_row(self) -> list[Any]:
        return [self.tenant, self.id, self.feature, self.tokens, self.occurred_ms, self.received_ms]

    @classmethod
    def from_row(cls, row: list[Any]) -> Event:
        tenant, event_id, feature, tokens, occurred_ms, received_ms = row
        if not (
            isinstance(tenant, str)
            and isinstance(event_id, str)
            and isinstance(feature, str)
            and type(tokens) is int
            and type(occurred_ms) is int
            and type(received_ms) is int
        ):
            raise ValueError(f"malformed stream row: {row!r}")
        return cls(tenant, event_id, feature, tokens, occurred_ms, received_ms)


class Rejection(Exception):
    """Why one event was not accepted; `code` is part of the API contract."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_timestamp(raw: Any) -> int:
    """RFC 3339 with an explicit offset → epoch milliseconds."""
    if not isinstance(raw, str) or not RFC3339.fullmatch(raw):
        raise Rejection("invalid_timestamp", "timestamp must be an RFC 3339 date-time with an offset")
    text = raw.replace("z", "Z").replace("t", "T")
    fraction = re.search(r"\.(\d+)", text)
    if fraction and len(fraction.group(1)) > 6:  # fromisoformat takes microseconds at most
        text = text.replace(fraction.group(0), "." + fraction.group(1)[:6])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Rejection("invalid_timestamp", f"timestamp {raw!r} is not a valid date-time") from None
    return int(moment.timestamp() * 1000)


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
    if not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant):
        raise Rejection("invalid_tenant", "tenant must be a slug [a-z0-9][a-z0-9-]{0,62}")
    if key_tenant is not None and tenant != key_tenant:
        raise Rejection("forbidden", "this key may only post events for its own tenant")

    event_id = raw.get("id")
    if event_id is None:
        event_id = os.urandom(16).hex()
    elif not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
        raise Rejection("invalid_id", "id must be 1-128 printable ASCII characters")

    feature = raw.get("feature")
    if not isinstance(feature, str) or not FEATURE.fullmatch(feature):
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
    return Event(tenant, event_id, feature, tokens, occurred_ms, now_ms)
