"""Every compose file is valid for a real compose implementation and keeps the production rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    COMPOSE_DIR,
    COOLIFY_FILE,
    DEV_FILE,
    OBSERVABILITY_FILE,
    PRODUCTION_FILE,
    REPO,
    compose,
    compose_env,
)

pytestmark = pytest.mark.docker

COMBINATIONS = [(PRODUCTION_FILE,), (PRODUCTION_FILE, DEV_FILE), (OBSERVABILITY_FILE,), (COOLIFY_FILE,)]
SECRETS = ("POSTGRES_PASSWORD", "FLAGMETER_ADMIN_TOKEN")


def resolved(*files: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(compose("config", "--format", "json", files=files).stdout)
    return config


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda files: "+".join(Path(f).name for f in files))
def test_compose_file_is_valid(docker_engine: None, files: tuple[str, ...]) -> None:
    compose("config", "--quiet", files=files)


def test_every_production_service_has_health_restart_limits_and_log_rotation(docker_engine: None) -> None:
    for name, service in resolved(PRODUCTION_FILE)["services"].items():
        assert service.get("mem_limit") and service.get("cpus"), name
        assert service.get("restart"), name
        assert service["logging"]["options"] == {"max-size": "10m", "max-file": "3"}, name
        health = service.get("healthcheck", {})
        # The one-shot migration is the only service without a health check; the others wait for its exit.
        assert health.get("disable") if name == "migrate" else health.get("test"), name


def test_only_the_api_port_is_published_and_only_on_loopback_by_default(docker_engine: None) -> None:
    services = resolved(PRODUCTION_FILE)["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert list(published) == ["api"]
    assert [(p["host_ip"], p["target"]) for p in published["api"]] == [("127.0.0.1", 8080)]


def test_api_and_worker_wait_for_a_successful_migration(docker_engine: None) -> None:
    services = resolved(PRODUCTION_FILE)["services"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_valkey_persists_every_second_and_never_evicts(docker_engine: None) -> None:
    command = " ".join(resolved(PRODUCTION_FILE)["services"]["valkey"]["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command


def test_postgres_major_is_pinned_and_data_is_on_the_volume_mount(docker_engine: None) -> None:
    postgres = resolved(PRODUCTION_FILE)["services"]["postgres"]
    assert re.fullmatch(r"postgres:17(\.\d+)?(-\w+)?", postgres["image"])
    [volume] = postgres["volumes"]
    assert (volume["type"], volume["source"], volume["target"]) == (
        "bind",
        "/mnt/flagmeter-data/postgres",
        "/var/lib/postgresql",
    )
    assert postgres["environment"]["PGDATA"].startswith("/var/lib/postgresql/17/")


@pytest.mark.parametrize("secret", SECRETS)
def test_a_missing_secret_stops_compose_instead_of_defaulting(docker_engine: None, secret: str) -> None:
    proc = compose("config", "--quiet", env=compose_env(**{secret: ""}), check=False)
    assert proc.returncode != 0
    assert secret in proc.stderr


def test_env_example_names_every_variable_the_compose_files_read() -> None:
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (COMPOSE_DIR / ".env.example").read_text(), re.M))
    used: set[str] = set()
    for path in [*COMPOSE_DIR.glob("*.yml"), REPO / "coolify/docker-compose.yml"]:
        used |= set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", path.read_text()))
    # Coolify generates its SERVICE_* variables itself.
    assert {v for v in used if not v.startswith("SERVICE_")} <= documented


def test_coolify_stack_mirrors_production_limits_and_publishes_nothing(docker_engine: None) -> None:
    production = resolved(PRODUCTION_FILE)["services"]
    coolify = resolved(COOLIFY_FILE)["services"]
    assert set(coolify) == set(production)
    for name, service in coolify.items():
        assert not service.get("ports"), name
        assert (service["mem_limit"], service["cpus"]) == (
            production[name]["mem_limit"],
            production[name]["cpus"],
        )
        # Coolify counts a service with restart "no" as a one-shot; every other one needs a health check.
        assert service["restart"] == "no" if name == "migrate" else service["healthcheck"]["test"], name


def test_coolify_apps_reach_the_stores_by_their_preview_suffixed_names(docker_engine: None) -> None:
    text = (REPO / COOLIFY_FILE).read_text()
    assert "@${SERVICE_NAME_POSTGRES:-postgres}:5432/" in text
    assert "redis://${SERVICE_NAME_VALKEY:-valkey}:6379/" in text
    assert "SERVICE_FQDN_API_8080" in text
