"""One value for what several deploy files need: PostgreSQL's host directory and server settings, the image
tags, the API port and the Coolify compose location. The roles' defaults are the source (for PostgreSQL's
settings, the compose stack's); every other file that names the value is read here and must agree with it,
so a path changed in one place and not another fails this test."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from deploy_support import REPO

PATH_LIKE = re.compile(r"/mnt/flagmeter[\w./<>-]*")


def defaults(role: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    return values


def volume_mount() -> str:
    return str(defaults("hetzner_volume")["hetzner_volume_mount_path"])


def postgres_data_dir() -> str:
    """hetzner_volume_postgres_data_dir with its one reference to the mount path resolved."""
    raw = str(defaults("hetzner_volume")["hetzner_volume_postgres_data_dir"])
    return raw.replace("{{ hetzner_volume_mount_path }}", volume_mount())


def compose_default(text: str, variable: str) -> str:
    [value] = re.findall(rf"\$\{{{variable}:-([^}}]+)\}}", text)
    return value


def env_example(variable: str) -> str:
    [value] = re.findall(rf"^{variable}=(.*)$", (REPO / "compose/.env.example").read_text(), re.M)
    return value


def coolify_service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((REPO / "coolify/docker-compose.yml").read_text())["services"]
    return services[name]


def test_postgres_data_directory_is_the_volume_role_s_everywhere() -> None:
    wanted = postgres_data_dir()
    production = (REPO / "compose/docker-compose.yml").read_text()
    found = {
        "roles/flagmeter/defaults": defaults("flagmeter")["flagmeter_postgres_data_dir"],
        "compose/docker-compose.yml": compose_default(production, "FLAGMETER_PG_DATA_DIR"),
        "compose/.env.example": env_example("FLAGMETER_PG_DATA_DIR"),
        "coolify/docker-compose.yml": coolify_service("postgres")["volumes"][0].split(":")[0],
    }
    assert found == dict.fromkeys(found, wanted)
    assert wanted.startswith(volume_mount() + "/")


def test_every_flagmeter_host_path_in_the_bundle_is_on_the_volume() -> None:
    """Docs and files may name the mount point, the data directory or a preview's directory beside it,
    nothing else under /mnt (the old /mnt/flagmeter-pg was on the root disk)."""
    data_dir = re.escape(postgres_data_dir())
    allowed = re.compile(rf"^({re.escape(volume_mount())}|{data_dir}(-pr-(<id>|\d+))?)(/.*)?$")
    files = [
        *REPO.glob("*.md"),
        *REPO.glob("docs/*.md"),
        *REPO.glob("coolify/*"),
        *REPO.glob("compose/**/*.y*ml"),
        REPO / "compose/.env.example",
        *REPO.glob("roles/*/**/*.y*ml"),
        *REPO.glob("roles/*/README.md"),
        *REPO.glob("playbooks/**/*.yml"),
        REPO / "inventory.example.ini",
    ]
    wrong = {
        f"{path.relative_to(REPO)}: {match}"
        for path in files
        if path.is_file()
        for match in PATH_LIKE.findall(path.read_text())
        if not allowed.match(match.rstrip(".`'\")"))
    }
    assert not wrong


def test_image_tags_are_the_flagmeter_role_s_everywhere() -> None:
    role = defaults("flagmeter")
    production = (REPO / "compose/docker-compose.yml").read_text()
    for variable, key, service in (
        ("FLAGMETER_POSTGRES_IMAGE", "flagmeter_postgres_image", "postgres"),
        ("FLAGMETER_VALKEY_IMAGE", "flagmeter_valkey_image", "valkey"),
    ):
        found = {
            "compose default": compose_default(production, variable),
            "compose/.env.example": env_example(variable),
            "coolify/docker-compose.yml": coolify_service(service)["image"],
        }
        assert found == dict.fromkeys(found, role[key]), variable


def test_api_port_is_the_flagmeter_role_s_everywhere() -> None:
    port = int(defaults("flagmeter")["flagmeter_api_port"])
    production = yaml.safe_load((REPO / "compose/docker-compose.yml").read_text())["services"]["api"]
    api = coolify_service("api")
    setup = (REPO / "coolify/setup_coolify.py").read_text()
    assert production["ports"][0].endswith(f":{port}")
    assert production["environment"]["PORT"] == str(port)
    assert api["environment"]["PORT"] == str(port)
    assert f"SERVICE_FQDN_API_{port}" in api["environment"]
    assert f"127.0.0.1:{port}/ready" in " ".join(api["healthcheck"]["test"])
    assert re.search(rf"^API_PORT = {port}$", setup, re.M)


def test_coolify_compose_location_is_the_same_for_the_script_and_the_role() -> None:
    setup = (REPO / "coolify/setup_coolify.py").read_text()
    [script] = re.findall(r'^COMPOSE_LOCATION = "([^"]+)"$', setup, re.M)
    role = defaults("coolify")["coolify_flagmeter_app_compose_file"]
    assert script == role
    assert (REPO / script.lstrip("/")).is_file()
    assert Path(script).name in (REPO / "coolify/README.md").read_text()


def test_postgres_runs_the_same_settings_in_both_stacks() -> None:
    """Coolify's PostgreSQL (the default deploy) and the compose stack's: one set of server settings."""
    compose = yaml.safe_load((REPO / "compose/docker-compose.yml").read_text())["services"]["postgres"]
    assert coolify_service("postgres")["command"] == compose["command"]
    assert "max_wal_size=2GB" in compose["command"]  # the list is read, not empty
