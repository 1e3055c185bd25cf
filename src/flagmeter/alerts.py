"""Quota alert decisions and messages. Pure: no I/O, no clock.

The worker asks `crossed_thresholds` inside the batch transaction; `delivery.py` turns an
`Alert` into Slack and Standard Webhooks requests using the builders here and `outcome_of`
/ `retry_delay` to decide what an HTTP answer means.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from .clock import rfc3339

DEFAULT_THRESHOLDS = (80, 100)
MAX_THRESHOLDS = 10
MAX_THRESHOLD = 1000  # percent; alerting at 10x the quota is the most anyone asked for
SECRET_PREFIX = "whsec_"
NO_RETRY = frozenset({400, 403, 404, 410})


@dataclass(frozen=True, slots=True)
class Alert:
    """One decided alert, with the facts every message names."""

    id: int
    tenant_id: str
    tenant_name: str
    threshold: int
    used: int
    quota: int
    period_start: datetime
    period_end: datetime

    @property
    def percent(self) -> float:
        return percent_used(self.used, self.quota)


def percent_used(used: int, quota: int) -> float:
    if quota <= 0:
        return 100.0 if used > 0 else 0.0
    return round(100 * used / quota, 2)


def crossed_thresholds(used: int, quota: int, thresholds: Iterable[int]) -> list[int]:
    """Every threshold (percent of quota) that `used` has reached, ascending.

    Integer arithmetic, so 80 % of a quota of 1000 is reached at exactly 800 tokens.
    """
    if used <= 0:
        return []
    return sorted({t for t in thresholds if used * 100 >= t * quota})


def delivery_targets(*, slack_url_enabled: bool, webhook_enabled: bool, slack_fallback: bool) -> list[str]:
    """Where a decided alert goes: Slack when the tenant has an enabled incoming webhook or the
    service has a fallback one (FLAGMETER_SLACK_WEBHOOK_URL), the signed webhook when enabled."""
    targets = ["slack"] if slack_url_enabled or slack_fallback else []
    return [*targets, "webhook"] if webhook_enabled else targets


def validate_thresholds(value: object) -> list[int]:
    """Normalise a client's threshold list; ValueError says what is wrong."""
    if not isinstance(value, list) or not all(type(t) is int for t in value):
        raise ValueError("alert_thresholds must be a list of integers")
    if len(value) > MAX_THRESHOLDS:
        raise ValueError(f"alert_thresholds takes at most {MAX_THRESHOLDS} values")
    if not all(1 <= t <= MAX_THRESHOLD for t in value):
        raise ValueError(f"alert_thresholds values must be from 1 to {MAX_THRESHOLD}")
    return sorted(set(value))


# -- messages -------------------------------------------------------------------------------


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def headline(alert: Alert) -> str:
    verb = "has used" if alert.threshold < 100 else "has reached"
    return f"{alert.tenant_name} {verb} {alert.percent:g} % of its monthly token quota"


def slack_message(alert: Alert, dashboard_url: str) -> dict[str, Any]:
    """Slack incoming-webhook body: `text` for notifications, `blocks` for the channel."""
    link = f"{dashboard_url}/tenants/{alert.tenant_id}"
    facts = (
        f"*Tenant:* {alert.tenant_name} (`{alert.tenant_id}`)\n"
        f"*Used:* {alert.used:,} of {alert.quota:,} tokens ({alert.percent:g} %)\n"
        f"*Threshold:* {alert.threshold} %\n"
        f"*Period ends:* {_day(alert.period_end)}"
    )
    return {
        "text": f"{headline(alert)} ({alert.used:,} / {alert.quota:,} tokens). {link}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"Quota alert: {alert.threshold} %"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": facts}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"<{link}|Open the dashboard>"}},
        ],
    }


def webhook_payload(alert: Alert, dashboard_url: str, sent_at: datetime) -> dict[str, Any]:
    """Standard Webhooks body: `type`, `timestamp`, `data`."""
    return {
        "type": "quota.threshold_crossed",
        "timestamp": rfc3339(sent_at),
        "data": {
            "alert_id": alert.id,
            "tenant": alert.tenant_id,
            "tenant_name": alert.tenant_name,
            "threshold": alert.threshold,
            "percent": alert.percent,
            "used": alert.used,
            "quota": alert.quota,
            "period": {"start": rfc3339(alert.period_start), "end": rfc3339(alert.period_end)},
            "dashboard_url": f"{dashboard_url}/tenants/{alert.tenant_id}",
        },
    }


def message_id(alert: Alert) -> str:
    """The same id on every retry, so receivers can drop duplicates."""
    return f"msg_flagmeter_alert_{alert.id}"


# -- Standard Webhooks signing ----------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def valid_secret(secret: str) -> bool:
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        return False
    return 24 <= len(key) <= 64


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`, key = base64-decoded secret."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# -- what an answer means -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 30.0
    max_attempts: int = 8  # 30 s doubling: the 8th attempt lands about an hour after the first
    max_retry_after_s: float = 3600.0


def disables_target(http_status: int | None) -> bool:
    """410 Gone: the receiver says the URL is gone for good; stop sending there until it is set again."""
    return http_status == 410


def outcome_of(status: int) -> str:
    """`delivered`, `retry` or `failed` for an HTTP status (redirects are not followed: failed)."""
    if 200 <= status < 300:
        return "delivered"
    if status == 429 or status == 408 or status >= 500:
        return "retry"
    return "failed"


def retry_delay(
    attempts: int, policy: RetryPolicy, retry_after_s: float | None = None, rng: random.Random | None = None
) -> float | None:
    """Seconds until the next attempt after `attempts` tries, or None when they are used up.

    Exponential with +-25 % jitter; a server's Retry-After (capped at an hour) replaces it.
    """
    if attempts >= policy.max_attempts:
        return None
    if retry_after_s is not None:
        return max(min(retry_after_s, policy.max_retry_after_s), 0.0)
    jitter: float = (rng or random).uniform(0.75, 1.25)
    return float(policy.base_s * 2 ** (attempts - 1) * jitter)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)
