"""The default deploy path, Coolify, through its stand-in (tests/coolify_standin/standin.py; Coolify itself
cannot run here): coolify/setup_coolify.py against the API, then the Docker Compose build pack deploying
coolify/docker-compose.yml on the local engine, production and a preview."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from coolify_support import (
    DOMAIN,
    READ_ONLY_TOKEN,
    StandIn,
    api_call,
    free_port,
    running_standin,
    setup_coolify,
)
from deploy_support import DEPLOYED, POSTGRES_IMAGE, run, wait_until

# PostgreSQL's host directory (hetzner_volume_postgres_data_dir), below the stand-in server's root.
DATA_DIR = "mnt/flagmeter-data/postgres"


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandIn]:
    with running_standin(tmp_path) as coolify:
        yield coolify


def test_dry_run_writes_nothing_and_prints_every_write(standin: StandIn) -> None:
    result = setup_coolify(standin.url, "--dry-run", "--deploy")
    assert result.returncode == 0, result.stderr
    writes = [line.split()[1:3] for line in result.stdout.splitlines()]
    assert writes == [
        ["POST", "/projects"],
        ["POST", "/applications/public"],
        ["PATCH", "/applications/<new"],
        ["GET", "/deploy?uuid=<new"],
    ]
    assert '"preview_url_template": "{{pr_id}}.{{domain}}"' in result.stdout
    assert standin.writes() == []
    assert standin.api("/projects") == [] and standin.api("/applications") == []


def test_a_run_creates_project_environment_application_and_variables(standin: StandIn) -> None:
    result = setup_coolify(standin.url, "--environment", "staging")
    assert result.returncode == 0, result.stderr
    [project] = standin.api("/projects")
    assert project["name"] == "flagmeter"
    environments = standin.api(f"/projects/{project['uuid']}/environments")
    assert {e["name"] for e in environments} == {"production", "staging"}
    application = standin.application()
    assert application["build_pack"] == "dockercompose"
    assert application["docker_compose_location"] == "/coolify/docker-compose.yml"
    assert application["base_directory"] == "/"
    assert json.loads(application["docker_compose_domains"]) == {"api": {"domain": f"{DOMAIN}:8080"}}
    assert application["preview_url_template"] == "{{pr_id}}.{{domain}}"
    assert application["settings"] == {"is_auto_deploy_enabled": True, "is_preview_deployments_enabled": True}
    envs = standin.envs(application["uuid"])
    assert envs[("FLAGMETER_RATE_LIMIT", False)] == "10000"
    assert envs[("FLAGMETER_RATE_LIMIT", True)] == "1000"


def test_a_second_run_changes_nothing(standin: StandIn) -> None:
    assert setup_coolify(standin.url).returncode == 0
    before = len(standin.writes())
    again = setup_coolify(standin.url)
    assert again.returncode == 0, again.stderr
    assert standin.writes()[before:] == []
    assert "up to date" in again.stdout


def test_deploy_if_changed_deploys_after_a_change_and_not_after_a_run_that_changed_nothing(
    standin: StandIn,
) -> None:
    first = setup_coolify(standin.url, "--dry-run", "--deploy-if-changed")
    assert first.stdout.splitlines()[-1].startswith("would GET /deploy?uuid=")
    assert setup_coolify(standin.url).returncode == 0
    again = setup_coolify(standin.url, "--dry-run", "--deploy-if-changed")
    assert again.returncode == 0, again.stderr
    assert "would" not in again.stdout


def test_a_wrong_token_is_one_error_line_and_exit_1(standin: StandIn) -> None:
    result = setup_coolify(standin.url, token="not-a-token")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("coolify: GET /servers: 401 Unauthenticated.")


def test_a_read_only_token_is_refused_before_anything_is_created(standin: StandIn) -> None:
    result = setup_coolify(standin.url, token=READ_ONLY_TOKEN)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "POST /projects: 403" in line
    assert standin.api("/projects") == []


def test_an_unreachable_coolify_is_one_error_line_and_exit_1() -> None:
    result = setup_coolify(f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("coolify: cannot reach http://127.0.0.1:")


def test_the_stand_in_refuses_fields_coolify_does_not_accept(standin: StandIn) -> None:
    status, answer = api_call(
        standin.url, "POST", "/api/v1/projects", "standin-token-with-write", {"name": "x", "colour": "red"}
    )
    assert (status, answer["errors"]) == (422, {"colour": ["This field is not allowed."]})


def routed_url(uuid: str, pr: int = 0) -> str:
    """Where the stand-in's proxy publishes the api, the service with the domain (Traefik's route on Coolify);
    its container is api-<uuid>, api-<uuid>-pr-<id> in a preview."""
    container = f"api-{uuid}" + (f"-pr-{pr}" if pr else "")
    name = run("docker", "ps", "-q", "--filter", f"name=^{container}$").stdout.strip()
    port = run("docker", "port", name, "8080/tcp").stdout.split(":")[-1].strip()
    return f"http://127.0.0.1:{port}"


def count_event(base: str, admin: str, tenant: str, tokens: int) -> None:
    status, created = api_call(
        base, "POST", "/v1/tenants", admin, {"id": tenant, "name": tenant, "monthly_quota": 10**6}
    )
    assert status == 201, created
    key = created["api_key"]
    assert (
        api_call(base, "POST", "/v1/events", key, {"id": f"{tenant}-1", "feature": "chat", "tokens": tokens})[
            0
        ]
        == 202
    )
    wait_until(lambda: used(base, admin, tenant) == tokens, 60, f"{tenant}'s event counted", **DEPLOYED)


def used(base: str, admin: str, tenant: str) -> int | None:
    status, usage = api_call(base, "GET", f"/v1/usage/{tenant}", admin)
    return usage["used"] if status == 200 else None


def ready(base: str) -> bool:
    return api_call(base, "GET", "/ready", "")[0] == 200


@pytest.mark.slow
def test_coolify_deploys_production_and_a_preview_on_the_volume(standin: StandIn, app_image: str) -> None:
    """/ready 200 and an event counted, PG_VERSION under the volume's data directory; PR 42 starts empty in
    postgres-pr-42 beside it, production untouched; a redeploy keeps the generated secrets and the data."""
    # What the hetzner_volume role prepares: the directory, 0700, owned by the image's postgres user.
    data_dir = standin.host_root / DATA_DIR
    data_dir.mkdir(parents=True, mode=0o700)
    owner = run("docker", "run", "--rm", "--entrypoint", "id", POSTGRES_IMAGE, "-u", "postgres").stdout
    group = run("docker", "run", "--rm", "--entrypoint", "id", POSTGRES_IMAGE, "-g", "postgres").stdout
    os.chown(data_dir, int(owner), int(group))
    assert setup_coolify(standin.url).returncode == 0
    uuid = standin.application()["uuid"]
    try:
        standin.deploy(uuid)
        secrets = {k: v for k, v in standin.envs(uuid).items() if k[0].startswith("SERVICE_")}
        assert {k for k, _ in secrets} == {
            "SERVICE_USER_POSTGRES",
            "SERVICE_PASSWORD_POSTGRES",
            "SERVICE_PASSWORD_64_ADMIN",
        }
        admin = secrets[("SERVICE_PASSWORD_64_ADMIN", False)]
        production = routed_url(uuid)
        wait_until(lambda: ready(production), 180, "production /ready = 200", **DEPLOYED)
        count_event(production, admin, "acme", 42)
        assert (standin.host_root / DATA_DIR / "17/docker/PG_VERSION").read_text().strip() == "17"

        standin.deploy(uuid, pr=42)
        preview = routed_url(uuid, pr=42)
        wait_until(lambda: ready(preview), 180, "preview /ready = 200", **DEPLOYED)
        assert api_call(preview, "GET", "/v1/tenants", admin) == (200, {"tenants": []})
        assert (standin.host_root / f"{DATA_DIR}-pr-42/17/docker/PG_VERSION").is_file()
        count_event(preview, admin, "preview-only", 7)
        assert used(production, admin, "acme") == 42
        assert used(production, admin, "preview-only") is None

        standin.deploy(uuid)
        assert {k: v for k, v in standin.envs(uuid).items() if k[0].startswith("SERVICE_")} == secrets
        wait_until(lambda: ready(production), 180, "production /ready again", **DEPLOYED)
        assert used(production, admin, "acme") == 42
    finally:
        remove_application(standin, uuid)


def remove_application(standin: StandIn, uuid: str) -> None:
    """What deleting the application does: its containers, volumes and networks (and here its directories)."""
    for container in run(
        "docker", "ps", "-aq", "--filter", f"label=coolify.applicationId={uuid}"
    ).stdout.split():
        run("docker", "rm", "-fv", container, check=False)
    for volume in run("docker", "volume", "ls", "-q", "--filter", f"name={uuid}_").stdout.split():
        run("docker", "volume", "rm", volume, check=False)
    for network in (uuid, f"{uuid}-42"):
        run("docker", "network", "rm", network, check=False)
    shutil.rmtree(standin.host_root, ignore_errors=True)
