"""The pure alert rules: thresholds, retry schedule, answer classification, signing, address checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from datetime import UTC, datetime
from fractions import Fraction

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flagmeter.alerts import (
    RetryPolicy,
    crossed_thresholds,
    delivery_targets,
    disables_target,
    new_secret,
    outcome_of,
    parse_retry_after,
    retry_delay,
    signature,
    valid_secret,
    validate_thresholds,
)
from flagmeter.urls import GuardedResolver, UnsafeAddress, forbidden_address, url_shape_problem

thresholds = st.lists(st.integers(1, 1000), max_size=10)


def test_a_jump_from_10_to_120_percent_crosses_both_default_thresholds() -> None:
    assert crossed_thresholds(100, 1000, [80, 100]) == []
    assert crossed_thresholds(1200, 1000, [80, 100]) == [80, 100]


def test_a_threshold_is_reached_at_exactly_its_share() -> None:
    assert crossed_thresholds(799, 1000, [80]) == []
    assert crossed_thresholds(800, 1000, [80]) == [80]


def test_a_zero_quota_alerts_on_the_first_token_only() -> None:
    assert crossed_thresholds(0, 0, [80, 100]) == []
    assert crossed_thresholds(1, 0, [80, 100]) == [80, 100]


@given(st.integers(0, 10**12), st.integers(1, 10**12), thresholds, st.integers(0, 10**9))
def test_more_usage_never_uncrosses_a_threshold(used: int, quota: int, chosen: list[int], more: int) -> None:
    before = set(crossed_thresholds(used, quota, chosen))
    assert before <= set(crossed_thresholds(used + more, quota, chosen))


@given(st.integers(1, 10**12), st.integers(1, 10**12), thresholds)
def test_crossed_means_used_at_or_over_the_share(used: int, quota: int, chosen: list[int]) -> None:
    crossed = crossed_thresholds(used, quota, chosen)
    assert crossed == sorted(set(crossed))
    assert set(crossed) == {t for t in chosen if Fraction(used, quota) * 100 >= t}


@pytest.mark.parametrize("bad", [[0], [1001], [80.5], "80", [True], list(range(1, 12))])
def test_invalid_threshold_lists_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        validate_thresholds(bad)


def test_threshold_lists_are_sorted_and_deduplicated() -> None:
    assert validate_thresholds([100, 80, 80, 50]) == [50, 80, 100]
    assert validate_thresholds([]) == []


def test_default_retries_make_at_least_five_attempts_over_about_an_hour() -> None:
    policy = RetryPolicy()
    waits = []
    attempts = 1
    while (delay := retry_delay(attempts, policy, rng=random.Random(attempts))) is not None:
        waits.append(delay)
        attempts += 1
    assert attempts >= 5
    assert 45 * 60 <= sum(waits) <= 2 * 3600
    assert waits == sorted(waits)


@given(st.integers(1, 20), st.randoms())
def test_backoff_doubles_with_bounded_jitter(attempts: int, rng: random.Random) -> None:
    policy = RetryPolicy(base_s=1.0, max_attempts=30)
    delay = retry_delay(attempts, policy, rng=rng)
    assert delay is not None and 0.75 * 2 ** (attempts - 1) <= delay <= 1.25 * 2 ** (attempts - 1)


def test_retry_after_replaces_the_backoff_but_is_capped() -> None:
    assert retry_delay(1, RetryPolicy(base_s=0.1), retry_after_s=7) == 7
    assert retry_delay(1, RetryPolicy(), retry_after_s=10**9) == 3600


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (408, "retry"),
        (400, "failed"),
        (403, "failed"),
        (404, "failed"),
        (410, "failed"),
        (301, "failed"),
    ],
)
def test_what_an_answer_means(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


def test_signature_is_hmac_sha256_of_id_timestamp_body_under_the_decoded_key() -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    expected = base64.b64encode(hmac.new(key, b"msg_1.1700000000.{}", hashlib.sha256).digest()).decode()
    assert signature(secret, "msg_1", 1700000000, b"{}") == f"v1,{expected}"


def test_new_secrets_are_valid_and_distinct() -> None:
    first, second = new_secret(), new_secret()
    assert valid_secret(first) and valid_secret(second) and first != second
    assert not valid_secret("whsec_short") and not valid_secret("nope_" + first[6:])


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.100.100.200", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("fd00:ec2::254", True),
        ("fe80::1", True),
        ("::ffff:10.0.0.1", True),
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_private_and_metadata_addresses_are_forbidden(address: str, forbidden: bool) -> None:
    assert forbidden_address(address) is forbidden


def test_url_shape_rules() -> None:
    assert url_shape_problem("https://hooks.example.com/a", allow_http=False) is None
    assert url_shape_problem("http://hooks.example.com/a", allow_http=False) is not None
    assert url_shape_problem("http://hooks.example.com/a", allow_http=True) is None
    assert url_shape_problem("https://hooks.example.com:99999/a", allow_http=False) is not None
    assert url_shape_problem(42, allow_http=True) is not None


async def test_the_connect_time_resolver_refuses_names_that_resolve_privately() -> None:
    guarded = GuardedResolver(allow_private=False)
    with pytest.raises(UnsafeAddress):
        await guarded.resolve("localhost", 443)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=guarded)) as session:
        with pytest.raises(aiohttp.ClientError) as caught:
            await session.get("http://localhost:9/never-connected")
    assert isinstance(caught.value.__cause__, UnsafeAddress)
    assert (await GuardedResolver(allow_private=True).resolve("localhost", 443))[0]["port"] == 443


@pytest.mark.parametrize(
    ("slack_url", "webhook", "fallback", "targets"),
    [
        (True, True, False, ["slack", "webhook"]),
        (False, True, False, ["webhook"]),
        (False, False, True, ["slack"]),  # the service's fallback Slack webhook
        (True, False, True, ["slack"]),  # once, not once per source
        (False, False, False, []),
    ],
)
def test_an_alert_goes_to_each_enabled_target_once(
    slack_url: bool, webhook: bool, fallback: bool, targets: list[str]
) -> None:
    chosen = delivery_targets(slack_url_enabled=slack_url, webhook_enabled=webhook, slack_fallback=fallback)
    assert chosen == targets


@pytest.mark.parametrize(("status", "disabled"), [(410, True), (404, False), (500, False), (None, False)])
def test_only_410_gone_switches_a_webhook_off(status: int | None, disabled: bool) -> None:
    assert disables_target(status) is disabled
