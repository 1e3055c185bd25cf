"""Every Prometheus metric, defined in one place.

The API runs several processes: when PROMETHEUS_MULTIPROC_DIR is set (the `api` command sets
it before any process imports this module) values live in shared files and `/metrics` of any
process reports the sum over all of them.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)

http_request_duration = Histogram(
    "flagmeter_http_request_duration_seconds",
    "HTTP request duration by route template, method and status",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
events_accepted = Counter("flagmeter_events_accepted_total", "Events accepted into the stream")
events_rejected = Counter("flagmeter_events_rejected_total", "Events rejected, by reason", ["reason"])
rate_limited = Counter("flagmeter_rate_limited_total", "Requests refused by the per-tenant rate limit")
busy_rejections = Counter(
    "flagmeter_busy_rejections_total", "Large batches refused (503) after waiting for a slot in their process"
)
dashboard_sign_ins = Counter(
    "flagmeter_dashboard_sign_ins_total",
    "Dashboard sign-in attempts by outcome: signed_in, wrong_token, throttled (refused unchecked, 429)",
    ["outcome"],
)
reservations = Counter(
    "flagmeter_reservations_total",
    "Quota reservations by outcome: granted, refused (402), settled (by an event), released (DELETE),"
    " expired (dropped unsettled at expires_at; counted when the tenant's holds are next read)",
    ["outcome"],
)

stream_length = Gauge(
    "flagmeter_stream_length", "Entries in the event stream not yet counted", multiprocess_mode="max"
)
stream_pending = Gauge(
    "flagmeter_stream_pending", "Entries delivered to a worker and not yet acked", multiprocess_mode="max"
)
consumer_lag = Gauge(
    "flagmeter_consumer_lag_seconds", "Age of the oldest entry not yet counted", multiprocess_mode="max"
)
dead_letter_length = Gauge(
    "flagmeter_dead_letter_length", "Entries in the dead-letter stream", multiprocess_mode="max"
)
worker_batch_size = Histogram(
    "flagmeter_worker_batch_size",
    "Events per worker batch (one counting transaction)",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 4000),
)
worker_batch_duration = Histogram(
    "flagmeter_worker_batch_duration_seconds",
    "Time to count one batch (transaction and ack)",
    buckets=LATENCY_BUCKETS,
)
worker_events_counted = Counter("flagmeter_worker_events_counted_total", "Events counted (new ids)")
worker_events_duplicate = Counter(
    "flagmeter_worker_events_duplicate_total", "Events skipped because their id was already counted"
)
worker_batches_recounted = Counter(
    "flagmeter_worker_batches_recounted_total",
    "Batches counted a second time, skipping ids counted before (retried requests), after their"
    " all-new ledger insert met one",
)
worker_busy = Gauge(
    "flagmeter_worker_busy", "1 while a worker is counting a batch", multiprocess_mode="livesum"
)
dead_letter_total = Counter(
    "flagmeter_dead_letter_total", "Entries moved to the dead-letter stream", ["reason"]
)
rollup_lag = Gauge(
    "flagmeter_rollup_lag_seconds",
    "Time from the API accepting the oldest event of the last batch to its commit",
    multiprocess_mode="max",
)
tenant_tokens = Counter("flagmeter_tenant_tokens_total", "Tokens counted per tenant", ["tenant"])
tenant_quota_used_ratio = Gauge(
    "flagmeter_tenant_quota_used_ratio",
    "Used / quota in the tenant's current period (1.0 = 100 %)",
    ["tenant"],
    multiprocess_mode="max",
)
db_pool_size = Gauge(
    "flagmeter_db_pool_size", "Open PostgreSQL connections", ["role"], multiprocess_mode="livesum"
)
process_memory = Gauge(
    "flagmeter_process_resident_memory_bytes", "Resident memory", ["role"], multiprocess_mode="livesum"
)
# A counter (promtool refuses a gauge named _total): rate() over it then survives a process exit, whose
# seconds stay in the multiprocess sum instead of dropping out of it like a reset.
process_cpu = Counter("flagmeter_process_cpu_seconds_total", "CPU time used (user + system)", ["role"])
alerts_fired = Counter("flagmeter_alerts_fired_total", "Quota alerts decided", ["threshold"])
alert_deliveries = Counter(
    "flagmeter_alert_deliveries_total", "Alert delivery attempts by target and outcome", ["target", "outcome"]
)
alert_outbox_backlog = Gauge(
    "flagmeter_alert_outbox_backlog", "Alert deliveries not yet finished", multiprocess_mode="max"
)

# The series whose label values are known in advance exist from the start, at 0. Prometheus sees no
# increase() in a counter series that first appears at 1, so an alert rule on the first dead letter, failed
# delivery or shut-out sign-in after a restart would not fire.
KNOWN_LABELS: dict[Counter, list[tuple[str, ...]]] = {
    dead_letter_total: [("malformed",), ("max_deliveries",), ("unknown_tenant",)],
    alert_deliveries: [(t, o) for t in ("slack", "webhook") for o in ("delivered", "retry", "failed")],
    dashboard_sign_ins: [("signed_in",), ("wrong_token",), ("throttled",)],
    reservations: [("granted",), ("refused",), ("settled",), ("released",), ("expired",)],
}
for _counter, _values in KNOWN_LABELS.items():
    for _labels in _values:
        _counter.labels(*_labels)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_cpu_counted = 0.0  # this process's CPU seconds already added to process_cpu


def sample_process(role: str) -> None:
    global _cpu_counted
    process_memory.labels(role).set(_rss_bytes())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    process_cpu.labels(role).inc(max(used - _cpu_counted, 0.0))
    _cpu_counted = max(used, _cpu_counted)


async def sample_process_forever(role: str, every: float = 5.0) -> None:
    while True:
        sample_process(role)
        await asyncio.sleep(every)


# What each kind of process exposes. Every process defines every family (this one module), and an
# unlabelled family exists from its definition on, so without this the API's /metrics would show the
# worker's families at zero and the worker's the API's. Other (non-flagmeter) families pass through.
_SHARED = (db_pool_size, process_memory, process_cpu)
EXPOSED: dict[str, tuple[MetricWrapperBase, ...]] = {
    "api": (
        http_request_duration, events_accepted, events_rejected, rate_limited, busy_rejections,
        dashboard_sign_ins, reservations, *_SHARED,
    ),
    "worker": (
        stream_length, stream_pending, consumer_lag, dead_letter_length, worker_batch_size,
        worker_batch_duration, worker_events_counted, worker_events_duplicate, worker_batches_recounted,
        worker_busy,
        dead_letter_total, rollup_lag, tenant_tokens, tenant_quota_used_ratio, alerts_fired,
        alert_deliveries, alert_outbox_backlog, *_SHARED,
    ),
}  # fmt: skip
_OWN_NAMES = {
    role: frozenset(family.name for metric in families for family in metric.describe())
    for role, families in EXPOSED.items()
}


class _Exposed:
    """A registry as one kind of process shows it: its own flagmeter families and everything else."""

    def __init__(self, registry: Collector, role: str) -> None:
        self.registry = registry
        self.own = _OWN_NAMES[role]

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            if family.name in self.own or not family.name.startswith("flagmeter_"):
                yield family


def render(role: str) -> tuple[bytes, str]:
    """The exposition text of `role`'s families: summed over processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(_Exposed(registry, role)), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(_Exposed(REGISTRY, role)), CONTENT_TYPE_LATEST
