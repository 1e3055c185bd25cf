"""Alert delivery: drain the outbox to Slack and Standard-Webhooks endpoints, with retries.

Runs inside every worker as its own task beside the consumers. Rows are leased with
`FOR UPDATE SKIP LOCKED` so workers share the outbox; a lease outlives the HTTP timeout, so
a live worker never sees its row taken, and a killed worker's row is taken once the lease ends.
What an answer means (`outcome_of`, `retry_delay`) is decided in `alerts.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from . import metrics
from .alerts import (
    RetryPolicy,
    disables_target,
    message_id,
    outcome_of,
    parse_retry_after,
    retry_delay,
    signature,
    slack_message,
    webhook_payload,
)
from .config import Settings
from .store import AttemptRecord, DeliveryJob, Store, StoreUnavailable
from .urls import GuardedResolver, UnsafeAddress, url_problem

log = logging.getLogger(__name__)

USER_AGENT = "FlagMeter-Alerts/1"


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    timeout_s: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_s: float = 1.0
    batch: int = 20

    @property
    def lease_s(self) -> float:
        return 2 * self.timeout_s + 5

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryConfig:
        retry = RetryPolicy(
            base_s=settings.alert_retry_base_ms / 1000, max_attempts=settings.alert_max_attempts
        )
        return cls(timeout_s=settings.alert_timeout_ms / 1000, retry=retry)


# -- URL safety -------------------------------------------------------------------------------


# -- the courier ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """How one attempt went: `outcome` as in alerts.outcome_of, plus what to record."""

    outcome: str
    error: str | None = None
    status: int | None = None
    retry_after: float | None = None


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


class Courier:
    def __init__(self, settings: Settings, store: Store, config: DeliveryConfig | None = None) -> None:
        self.settings = settings
        self.store = store
        self.config = config or DeliveryConfig.from_settings(settings)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A batch just decided alerts: look at the outbox now rather than at the next poll."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        resolver = GuardedResolver(self.settings.allow_private_webhooks)
        connector = aiohttp.TCPConnector(resolver=resolver, limit=20)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        next_backlog = 0.0
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while not stopping.is_set():
                jobs: list[DeliveryJob] = []
                try:
                    jobs = await self.store.lease_deliveries(self.config.batch, self.config.lease_s)
                    if jobs:
                        await asyncio.gather(*(self.deliver(session, job) for job in jobs))
                    if time.monotonic() >= next_backlog:
                        metrics.alert_outbox_backlog.set(await self.store.outbox_backlog())
                        next_backlog = time.monotonic() + 5
                except StoreUnavailable as error:
                    log.warning("postgres unavailable; alert delivery paused", extra={"error": str(error)})
                    await asyncio.sleep(2.0)
                except Exception:
                    log.exception("alert delivery loop failed")
                    await asyncio.sleep(2.0)
                if not jobs:
                    await self._idle(stopping)
        log.info("alert delivery stopped")

    async def _idle(self, stopping: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stopping.wait())]
        await asyncio.wait(waits, timeout=self.config.poll_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits:
            waiter.cancel()
        self._wake.clear()

    def _request(self, job: DeliveryJob, now: datetime) -> tuple[bytes, dict[str, str]]:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if job.target == "slack":
            return orjson.dumps(slack_message(job.alert, self.settings.public_url)), headers
        body = orjson.dumps(webhook_payload(job.alert, self.settings.public_url, now))
        msg_id, stamp = message_id(job.alert), int(now.timestamp())
        headers |= {
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature(job.secret or "", msg_id, stamp, body),
        }
        return body, headers

    async def deliver(self, session: aiohttp.ClientSession, job: DeliveryJob) -> None:
        """One attempt for one leased row, recorded whatever happens."""
        started = time.perf_counter()
        url = job.url or (self.settings.slack_webhook_url if job.target == "slack" else None)
        attempt_id = await self.store.start_attempt(job, _endpoint(url) if url else "-")
        if url:
            answer = await self._send(session, job, url)
        else:
            answer = Answer("failed", f"no {job.target} target configured (or it was disabled)")
        retry_in = None
        if answer.outcome == "retry":
            retry_in = retry_delay(job.attempts + 1, self.config.retry, answer.retry_after)
            if retry_in is None:
                answer = replace(
                    answer,
                    outcome="failed",
                    error=f"{answer.error}; gave up after {job.attempts + 1} attempts",
                )
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        attempt = AttemptRecord(
            _endpoint(url) if url else "-", answer.status, answer.outcome, answer.error, elapsed_ms
        )
        await self.store.record_attempt(
            job, attempt_id, attempt, retry_in, disable_target=disables_target(answer.status)
        )
        metrics.alert_deliveries.labels(job.target, answer.outcome).inc()
        extra: dict[str, Any] = {
            "tenant": job.alert.tenant_id,
            "threshold": job.alert.threshold,
            "target": job.target,
            "outcome": answer.outcome,
            "http_status": answer.status,
            "attempt": job.attempts + 1,
        }
        if answer.error:
            extra["error"] = answer.error
        level = logging.INFO if answer.outcome == "delivered" else logging.WARNING
        log.log(level, "alert delivery", extra=extra)

    async def _send(self, session: aiohttp.ClientSession, job: DeliveryJob, url: str) -> Answer:
        problem = await url_problem(
            url,
            allow_http=self.settings.allow_http_webhooks,
            allow_private=self.settings.allow_private_webhooks,
        )
        if problem:
            return Answer("failed", f"{job.target} URL {problem}")
        now = self.settings.clock.now()
        body, headers = self._request(job, now)
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                await response.content.read(4096)
                outcome = outcome_of(response.status)
                return Answer(
                    outcome,
                    None if outcome == "delivered" else f"HTTP {response.status}",
                    response.status,
                    parse_retry_after(response.headers.get("Retry-After"), now),
                )
        except TimeoutError:
            return Answer("retry", f"timed out after {self.config.timeout_s:g} s")
        except (aiohttp.ClientError, OSError) as failure:
            if isinstance(failure.__cause__, UnsafeAddress):  # the resolver's refusal, wrapped by aiohttp
                return Answer("failed", str(failure.__cause__))
            return Answer("retry", f"{type(failure).__name__}: {failure}"[:500])
