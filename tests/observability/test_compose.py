"""compose/observability.yml, validated by a real compose implementation (`docker compose config`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest
from observability_files import COMPOSE_FILE, REPO

MEMORY_BUDGET_BYTES = 1.4e9  # the observability share of the 2.5 GB budget of issue 4
NETWORK = "flagmeter"  # the production stack's network, see docs/observability.md
ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-grafana", "POSTGRES_PASSWORD": "test-only-postgres"}


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ENV and not k.startswith(("GRAFANA_", "PROMETHEUS_"))
    }
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), *args],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose_available() -> None:
    """The compose v2 plugin, installed by the repository's helper when missing (Debian 12 lacks it)."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI: install docker.io to validate compose files")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        helper = REPO / ".ci" / "compose-plugin.sh"
        if not helper.exists() or os.geteuid() != 0:
            pytest.skip("docker compose plugin missing and .ci/compose-plugin.sh cannot install it here")
        subprocess.run(["sh", str(helper)], capture_output=True, check=True, timeout=300)


@pytest.fixture(scope="module")
def config(compose_available: None) -> dict[str, Any]:
    result = _compose("config", "--format", "json", env=ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_stack_has_every_component(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {
        "prometheus", "grafana", "loki", "alloy", "node-exporter", "postgres-exporter", "redis-exporter",
    }  # fmt: skip


def test_images_are_pinned_to_versions(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        image = service["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest" and any(c.isdigit() for c in tag), f"{name}: {image}"


def test_promtail_is_not_used(config: dict[str, Any]) -> None:
    assert not [s["image"] for s in config["services"].values() if "promtail" in s["image"]]


def test_every_service_is_limited_restarted_and_rotates_logs(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        assert int(service["mem_limit"]) > 0, name
        assert 0 < float(service["cpus"]) <= 1, name
        assert service["restart"] in ("unless-stopped", "always"), name
        assert service["logging"]["driver"] == "json-file", name
        assert service["logging"]["options"]["max-size"] and service["logging"]["options"]["max-file"], name


def test_every_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and not service["healthcheck"].get("disable"), name


def test_memory_limits_fit_the_budget(config: dict[str, Any]) -> None:
    total = sum(int(service["mem_limit"]) for service in config["services"].values())
    assert total <= MEMORY_BUDGET_BYTES, (
        f"{total / 1e9:.2f} GB of mem_limit, budget {MEMORY_BUDGET_BYTES / 1e9} GB"
    )


def test_ports_are_published_on_loopback_only(config: dict[str, Any]) -> None:
    published = [(name, p) for name, s in config["services"].items() for p in s.get("ports", [])]
    assert published, "Grafana at least must be reachable through a tunnel"
    for name, port in published:
        assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port}"


def test_joins_the_production_network_as_external(config: dict[str, Any]) -> None:
    (network,) = config["networks"].values()
    assert network["name"] == NETWORK and network["external"] is True
    for name, service in config["services"].items():
        assert list(service["networks"]) == list(config["networks"]), name


def test_prometheus_retains_by_time_and_size(config: dict[str, Any]) -> None:
    flags = dict(arg.split("=", 1) for arg in config["services"]["prometheus"]["command"] if "=" in arg)
    assert flags["--storage.tsdb.retention.time"] == "15d"
    assert flags["--storage.tsdb.retention.size"] == "4GB"


def test_bind_mounted_files_exist_in_the_repository(config: dict[str, Any]) -> None:
    binds = [v for s in config["services"].values() for v in s.get("volumes", []) if v["type"] == "bind"]
    repo_binds = [v["source"] for v in binds if v["source"].startswith(str(REPO))]
    assert len(repo_binds) >= 5
    for source in repo_binds:
        assert os.path.exists(source), source


def test_grafana_admin_password_comes_from_the_environment(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == ENV["GRAFANA_ADMIN_PASSWORD"]
    refused = _compose("config", "--quiet", env={"POSTGRES_PASSWORD": "x"})
    assert refused.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr
