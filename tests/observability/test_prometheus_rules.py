"""Prometheus configuration and alert rules, checked and unit-tested with the real promtool."""

from __future__ import annotations

import re
from typing import Any

import pytest
from observability_files import COMPOSE_FILE, OBS, RULE_FILES, RULE_TESTS, load_yaml, rules, run_promtool

# The situations issue 4 asks alerts for, and the alert that covers each.
REQUIRED_ALERTS = {
    "API down": "FlagMeterApiDown",
    "5xx ratio": "FlagMeterHigh5xxRatio",
    "p99 latency above 200 ms": "FlagMeterHighP99Latency",
    "consumer lag above 60 s": "FlagMeterConsumerLag",
    "dead-lettered events": "FlagMeterEventsDeadLettered",
    "alert deliveries failing": "FlagMeterAlertDeliveriesFailing",
    "disk pressure": "HostDiskPressure",
    "memory pressure": "HostMemoryPressure",
}


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def _alert_cases() -> list[dict[str, Any]]:
    return [
        case for path in RULE_TESTS for test in load_yaml(path)["tests"] for case in test["alert_rule_test"]
    ]


@pytest.mark.promtool
def test_prometheus_config_is_valid_and_loads_every_rule_file(promtool: str) -> None:
    output = run_promtool(promtool, "check", "config", OBS / "prometheus.yml")
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in output


@pytest.mark.promtool
def test_rule_files_are_valid(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", *RULE_FILES)
    assert output.count("SUCCESS") == len(RULE_FILES)


@pytest.mark.promtool
def test_rule_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS, "no promtool unit tests found"
    output = run_promtool(promtool, "test", "rules", *RULE_TESTS)
    assert output.count("SUCCESS") == len(RULE_TESTS)


def test_issue_alerts_exist() -> None:
    missing = {what: name for what, name in REQUIRED_ALERTS.items() if name not in _alerts()}
    assert not missing


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing = {case["alertname"] for case in _alert_cases() if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in _alert_cases() if not case.get("exp_alerts")}
    assert set(_alerts()) - firing == set(), "alerts never seen firing in a unit test"
    assert set(_alerts()) - quiet == set(), "alerts never seen staying quiet in a unit test"


def test_every_alert_has_severity_and_explanation() -> None:
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_unit_tests_cover_every_rule_file() -> None:
    tested = {(path.parent / f).resolve() for path in RULE_TESTS for f in load_yaml(path)["rule_files"]}
    assert tested == {path.resolve() for path in RULE_FILES}


def test_api_and_worker_replicas_are_discovered_by_dns_on_their_service_names() -> None:
    jobs = {job["job_name"]: job for job in load_yaml(OBS / "prometheus.yml")["scrape_configs"]}
    # Service names and ports of compose/docker-compose.yml and docs/design.md (PORT, worker metrics port).
    for job, service, port in (("flagmeter-api", "api", 8080), ("flagmeter-worker", "worker", 9091)):
        (sd,) = jobs[job]["dns_sd_configs"]
        assert (sd["names"], sd["type"], sd["port"]) == ([service], "A", port)
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"


def test_exporter_targets_are_services_of_the_observability_stack() -> None:
    services = load_yaml(COMPOSE_FILE)["services"]
    jobs = {job["job_name"]: job for job in load_yaml(OBS / "prometheus.yml")["scrape_configs"]}
    for job, service in (
        ("node", "node-exporter"),
        ("postgres", "postgres-exporter"),
        ("redis", "redis-exporter"),
    ):
        (static,) = jobs[job]["static_configs"]
        (target,) = static["targets"]
        host, port = target.split(":")
        assert host == service and host in services
        healthcheck = " ".join(services[service]["healthcheck"]["test"])
        assert re.search(rf"127\.0\.0\.1:{port}/", healthcheck), f"{service} is checked on another port"


def test_alert_jobs_match_scrape_jobs() -> None:
    jobs = {job["job_name"] for job in load_yaml(OBS / "prometheus.yml")["scrape_configs"]}
    named = set()
    for rule in rules():
        for match in re.finditer(r'job(?:=|=~)"([^"]+)"', rule["expr"]):
            named |= set(match.group(1).split("|"))
    assert named and named <= jobs
