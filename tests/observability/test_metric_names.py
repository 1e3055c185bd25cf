"""Every metric name the alert rules and dashboards use is one the app really exports, one of our recording
rules, or one the listed exporters are documented to export (exporter_metrics.yml) — and those documented
names are checked against the real exporters from Debian's packages where they can run here."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from observability_files import debian_binary, load_yaml, prometheus_queries, rules
from prometheus_client.parser import text_string_to_metric_families
from promql_names import label_values_metric, metric_names

from flagmeter.localstack import free_port
from flagmeter.metrics import EXPOSED, KNOWN_LABELS

EXPORTERS: dict[str, Any] = load_yaml(Path(__file__).with_name("exporter_metrics.yml"))
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def used_metric_names() -> dict[str, list[str]]:
    """Metric name → where it is used (alert, recording rule or dashboard query)."""
    used: dict[str, list[str]] = defaultdict(list)
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used[name].append(rule.get("alert") or rule["record"])
    for where, expr in prometheus_queries():
        names = label_values_metric(expr) if expr.lstrip().startswith("label_values(") else metric_names(expr)
        for name in names:
            used[name].append(where)
    return used


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def documented(exporter: str) -> set[str]:
    return set(EXPORTERS[exporter]["metrics"])


def exposed_names(text: str) -> set[str]:
    """Every sample name a /metrics page exposes or declares (a declared family with no sample yet counts)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _post(url: str, body: Any, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read() or b"null")


def _metrics_url(base: str) -> str:
    return base if base.rstrip("/").endswith("/metrics") else base.rstrip("/") + "/metrics"


def _wait_for(url: str, predicate: Any, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = scrape(url)
            if predicate(text) or time.monotonic() > deadline:
                return text
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_the_name_finder_sees_selectors_and_not_functions_labels_or_keywords() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) "
        '(rate(a_bucket{route=~"$route", x="y z"}[$__rate_interval])))'
        " / on (job) group_left (instance) b offset 5m > bool 1e3 or absent(c == 1) unless d:rec:rate5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d:rec:rate5m"}
    assert label_values_metric("label_values(flagmeter_x_total, tenant)") == {"flagmeter_x_total"}


def test_the_exposition_reader_expands_declared_families() -> None:
    text = (
        "# HELP h_seconds h\n# TYPE h_seconds histogram\n"
        "# HELP c_total c\n# TYPE c_total counter\nc_total 1.0\n"
    )
    assert exposed_names(text) == {"h_seconds_bucket", "h_seconds_count", "h_seconds_sum", "c_total"}


def test_names_are_flagmeter_recorded_or_documented_exporter_metrics() -> None:
    allowed = recorded_names() | {name for exporter in EXPORTERS for name in documented(exporter)}
    foreign = {
        name: where
        for name, where in used_metric_names().items()
        if not name.startswith("flagmeter_") and name not in allowed
    }
    assert foreign == {}, "document these in exporter_metrics.yml, or stop using them"


def test_every_documented_exporter_metric_is_used() -> None:
    used = set(used_metric_names())
    unused = {name for exporter in EXPORTERS for name in documented(exporter)} - used
    assert unused == set(), "exporter_metrics.yml lists metrics nothing uses"


def test_counters_alerts_watch_exist_at_zero_before_their_first_event(stack: Any) -> None:
    """A series that first appears at 1 shows Prometheus no increase(): the alert would miss that event."""
    pages = {
        role: scrape(_metrics_url(url))
        for role, url in (("api", stack.api_url), ("worker", stack.worker_metrics_url))
    }
    samples = {
        role: {
            (s.name, tuple(sorted(s.labels.items())))
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        for role, text in pages.items()
    }
    for counter, values in KNOWN_LABELS.items():
        role = "api" if counter in EXPOSED["api"] else "worker"
        name = counter.describe()[0].name + "_total"
        for labels in values:
            key = (name, tuple(sorted(zip(counter._labelnames, labels, strict=True))))
            assert key in samples[role], f"{role} /metrics has no {key}"


def sampled_names(text: str) -> set[str]:
    """Every sample name a /metrics page holds a value for (a family declared without one does not count)."""
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_sample_reader_ignores_declared_families_without_a_sample() -> None:
    text = "# HELP g g\n# TYPE g gauge\n# HELP c_total c\n# TYPE c_total counter\nc_total 1.0\n"
    assert sampled_names(text) == {"c_total"}


def test_every_flagmeter_metric_used_has_a_sample_after_a_short_real_run(stack: Any) -> None:
    """Scrape the real API (several processes, multiprocess mode) and worker after events, a rejection
    and a crossed threshold: every flagmeter name a dashboard or rule queries has a sample, not just a
    HELP line (a panel on a declared but never set family stays empty)."""
    api, token = stack.api_url.rstrip("/"), stack.admin_token
    tenant = f"obs-{uuid.uuid4().hex[:10]}"
    status, body = _post(
        f"{api}/v1/tenants", {"id": tenant, "name": "Observability", "monthly_quota": 100}, token
    )
    assert status == 201, body
    # One valid event (counted, and 90 % of the quota: the 80 % threshold is crossed) and one invalid one.
    events = [
        {"tenant": tenant, "feature": "chat", "tokens": 90},
        {"tenant": tenant, "feature": "chat", "tokens": -1},
    ]
    status, body = _post(f"{api}/v1/events", events, token)
    assert status == 202 and body["accepted"] == 1, body
    used = {name: where for name, where in used_metric_names().items() if name.startswith("flagmeter_")}
    api_page = scrape(_metrics_url(api))
    worker = _wait_for(
        _metrics_url(stack.worker_metrics_url),
        lambda text: (
            set(used) <= sampled_names(api_page) | sampled_names(text)
            and f'flagmeter_tenant_quota_used_ratio{{tenant="{tenant}"}} 0.9' in text
        ),
    )
    sampled = sampled_names(api_page) | sampled_names(worker)
    missing = {name: where for name, where in used.items() if name not in sampled}
    assert missing == {}, "queried by rules/dashboards, but no sample on the API's or worker's /metrics"
    assert f'flagmeter_tenant_quota_used_ratio{{tenant="{tenant}"}} 0.9' in worker


def test_the_quota_ratio_follows_a_quota_change_without_new_events_of_that_tenant(stack: Any) -> None:
    """The worker reads the ratio from PostgreSQL, not from its batches: a halved ratio after the quota
    doubles shows once the worker next reads (here woken by another tenant's batch)."""
    api, token = stack.api_url.rstrip("/"), stack.admin_token
    tenant, other = (f"obs-{uuid.uuid4().hex[:10]}" for _ in range(2))
    for tid in (tenant, other):
        status, body = _post(f"{api}/v1/tenants", {"id": tid, "name": tid, "monthly_quota": 100}, token)
        assert status == 201, body
    assert _post(f"{api}/v1/events", {"tenant": tenant, "feature": "chat", "tokens": 50}, token)[0] == 202
    worker = _metrics_url(stack.worker_metrics_url)
    sample = f'flagmeter_tenant_quota_used_ratio{{tenant="{tenant}"}}'
    assert f"{sample} 0.5" in _wait_for(worker, lambda text: f"{sample} 0.5" in text)
    stack.request("PATCH", f"/v1/tenants/{tenant}", {"monthly_quota": 200})
    assert _post(f"{api}/v1/events", {"tenant": other, "feature": "chat", "tokens": 1}, token)[0] == 202
    assert f"{sample} 0.25" in _wait_for(worker, lambda text: f"{sample} 0.25" in text)


@pytest.mark.promtool
def test_promtool_finds_nothing_to_complain_about_in_the_api_and_worker_metrics(
    stack: Any, promtool: str
) -> None:
    """`promtool check metrics` on each real /metrics page (the API in multiprocess mode) says nothing."""
    for role, url in (("api", stack.api_url), ("worker", stack.worker_metrics_url)):
        page = scrape(_metrics_url(url))
        result = subprocess.run(
            [promtool, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60
        )
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), f"{role} /metrics"


def test_the_api_and_the_worker_each_export_only_their_own_families(stack: Any) -> None:
    """Every process defines every family; the API must not show the worker's at zero, nor vice versa."""
    api = exposed_names(scrape(_metrics_url(stack.api_url.rstrip("/"))))
    worker = exposed_names(scrape(_metrics_url(stack.worker_metrics_url)))
    assert {"flagmeter_events_accepted_total", "flagmeter_http_request_duration_seconds_bucket"} <= api
    assert {"flagmeter_worker_events_counted_total", "flagmeter_stream_length"} <= worker
    shared = {
        "flagmeter_process_resident_memory_bytes",
        "flagmeter_process_cpu_seconds_total",
        "flagmeter_db_pool_size",
    }
    assert not {name for name in api & worker if name.startswith("flagmeter_")} - shared
    assert not {name for name in api if name.startswith(("flagmeter_worker_", "flagmeter_stream_"))}


@pytest.fixture
def exporter_process() -> Iterator[Any]:
    """Start a Debian exporter binary on a free 127.0.0.1 port; yield its /metrics URL."""
    started: list[subprocess.Popen[bytes]] = []

    def start(binary: str, listen_flag: str, *args: str, env: dict[str, str] | None = None) -> str:
        port = free_port()
        process = subprocess.Popen(
            [binary, f"{listen_flag}=127.0.0.1:{port}", *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return f"http://127.0.0.1:{port}/metrics"

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


def test_documented_node_exporter_metrics_exist_in_a_real_node_exporter(exporter_process: Any) -> None:
    binary = debian_binary("/usr/bin/prometheus-node-exporter", "prometheus-node-exporter")
    url = exporter_process(binary, "--web.listen-address")
    text = _wait_for(url, lambda text: "node_memory_MemTotal_bytes" in text)
    assert documented("node-exporter") - exposed_names(text) == set()


@pytest.mark.slow
def test_documented_datastore_exporter_metrics_exist_in_real_exporters(
    stack: Any, exporter_process: Any
) -> None:
    """postgres- and redis-exporter from Debian against the test stack's real PostgreSQL and Redis."""
    postgres = debian_binary("/usr/bin/prometheus-postgres-exporter", "prometheus-postgres-exporter")
    redis = debian_binary("/usr/bin/prometheus-redis-exporter", "prometheus-redis-exporter")
    # The local server has no TLS; lib/pq (the exporter's driver) would insist on it by default.
    dsn = f"{stack.database_url}?sslmode=disable"
    pg_url = exporter_process(postgres, "--web.listen-address", env={"DATA_SOURCE_NAME": dsn})
    redis_url = exporter_process(
        redis,
        "-web.listen-address",
        f"-redis.addr={stack.redis_url}",
        "-check-single-streams=flagmeter:events",
    )
    pg_text = _wait_for(pg_url, lambda text: "pg_stat_database_numbackends" in text)
    redis_text = _wait_for(redis_url, lambda text: "redis_stream_length" in text)
    assert documented("postgres-exporter") - exposed_names(pg_text) == set()
    assert documented("redis-exporter") - exposed_names(redis_text) == set()
    assert "pg_up 1" in pg_text and "redis_up 1" in redis_text
