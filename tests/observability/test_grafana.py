"""Grafana provisioning and the FlagMeter dashboard, validated structurally (Grafana cannot run here) and
their PromQL checked by the real promtool."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from observability_files import (
    COMPOSE_FILE,
    DASHBOARDS,
    OBS,
    PROVISIONING,
    dashboard,
    datasources,
    load_yaml,
    panels,
    prometheus_queries,
    run_promtool,
)

# The proof of concept's eight panels, then the business panels issue 4 adds.
REQUIRED_PANELS = [
    "HTTP latency p50 / p95 / p99",
    "Queue depth",
    "PostgreSQL connections",
    "Worker concurrency",
    "Memory of API and worker",
    "CPU of API and worker",
    "API request rate",
    "Worker processing rate",
    "Tokens per minute by tenant",
    "Tenants above 80 % of quota",
    "Alert deliveries",
]
# What a $variable stands for when promtool checks a query: any range, any regex.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def _compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(COMPOSE_FILE)["services"]
    return services


def _container_path(service: str, host_path: Path) -> str:
    """Where compose mounts a repository path inside a service's container."""
    for volume in _compose_services()[service]["volumes"]:
        source, target = volume.split(":")[:2]
        if (COMPOSE_FILE.parent / source).resolve() == host_path.resolve():
            return str(target)
    raise AssertionError(f"{host_path} is not mounted into {service}")


def test_datasources_are_prometheus_and_loki_on_the_compose_services() -> None:
    provisioned = datasources()
    assert {ds["type"] for ds in provisioned.values()} == {"prometheus", "loki"}
    assert [ds["name"] for ds in provisioned.values() if ds.get("isDefault")] == ["Prometheus"]
    services = _compose_services()
    for ds in provisioned.values():
        match = re.fullmatch(r"http://([a-z-]+):(\d+)", ds["url"])
        assert match, ds["url"]
        host, port = match.groups()
        assert host in services, f"{ds['name']} points at {host}, not a service of observability.yml"
        exposed = {p.split(":")[-1] for p in services[host].get("ports", [])}
        assert port in exposed, f"{ds['name']} uses port {port}, {host} listens on {exposed}"


def test_dashboard_provider_reads_the_directory_compose_mounts() -> None:
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "flagmeter.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == _container_path("grafana", OBS / "grafana" / "dashboards")
    assert _container_path("grafana", PROVISIONING) == "/etc/grafana/provisioning"


def test_provisioning_files_declare_api_version_1() -> None:
    files = sorted(PROVISIONING.rglob("*.yml"))
    assert len(files) >= 2
    for path in files:
        assert load_yaml(path)["apiVersion"] == 1, path


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    board = dashboard(path)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", board["uid"])
    assert board["title"] and isinstance(board["schemaVersion"], int)
    every_panel = panels(board)
    ids = [p["id"] for p in every_panel]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    provisioned = datasources()
    cells: dict[tuple[int, int], str] = {}
    for panel in every_panel:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in provisioned, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"])["uid"] in provisioned


def test_dashboard_has_the_proof_of_concept_and_business_panels() -> None:
    titles = {panel["title"] for path in DASHBOARDS for panel in panels(dashboard(path))}
    assert [t for t in REQUIRED_PANELS if t not in titles] == []


def test_dashboard_variables_are_used() -> None:
    for path in DASHBOARDS:
        board = dashboard(path)
        text = json.dumps(board["panels"])
        for variable in board["templating"]["list"]:
            assert f"${variable['name']}" in text, f"${variable['name']} is defined but never used"


@pytest.mark.promtool
def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Every query goes through promtool's PromQL parser, as a recording rule of a throwaway rule file."""
    rules = []
    for i, (where, expr) in enumerate(prometheus_queries()):
        if expr.startswith("label_values("):
            expr = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr).group(1)  # type: ignore[union-attr]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$\w+", ".*", expr)  # a multi-value variable becomes a regex
        rules.append({"record": f"dashboard:query_{i}", "expr": expr, "labels": {"where": where}})
    rule_file = tmp_path / "dashboard-queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_promtool(promtool, "check", "rules", rule_file)
    assert f"SUCCESS: {len(rules)} rules found" in output
