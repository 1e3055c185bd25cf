"""Molecule scenarios: converge each role on a Debian 13 systemd container, converge again
(nothing may change), then verify the real state of the host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The first run also builds the host images (debootstrap), so allow more than the default timeout.
pytestmark = [pytest.mark.molecule, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

BASE_CONFIG = REPO / "tests" / "ansible" / "molecule-base.yml"


def molecule_test(
    project: str, scenario: str, env: dict[str, str], image: str, volumes: dict[str, str]
) -> None:
    # Molecule keys its state directory on the project's folder name alone (roles/flagmeter and
    # another checkout's roles/flagmeter collide); keep it in this checkout.
    state = REPO / ".run" / "molecule" / f"{project.replace('/', '-')}-{scenario}"
    env = {**env, **volumes, "FLAGMETER_MOLECULE_IMAGE": image, "MOLECULE_EPHEMERAL_DIRECTORY": str(state)}
    result = subprocess.run(
        ["molecule", "-c", str(BASE_CONFIG), "test", "-s", scenario],
        cwd=REPO / project,
        env=env,
        text=True,
        capture_output=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, (
        f"molecule {project}/{scenario} failed:\n{result.stdout[-12000:]}\n{result.stderr[-4000:]}"
    )


@pytest.mark.parametrize("role", ["base", "security", "hetzner_volume", "docker"])
def test_role_converges_idempotently_on_a_fresh_host(
    role: str, ansible_env: dict[str, str], fresh_host_image: str, hetzner_volumes: dict[str, str]
) -> None:
    molecule_test(f"roles/{role}", "default", ansible_env, fresh_host_image, hetzner_volumes)


@pytest.mark.parametrize("role", ["coolify", "observability"])
def test_role_converges_idempotently_on_a_docker_host(
    role: str, ansible_env: dict[str, str], docker_host_image: str, hetzner_volumes: dict[str, str]
) -> None:
    molecule_test(f"roles/{role}", "default", ansible_env, docker_host_image, hetzner_volumes)


def test_flagmeter_role_deploys_the_stack_until_ready(
    ansible_env: dict[str, str],
    docker_host_image: str,
    hetzner_volumes: dict[str, str],
    stack_images_archive: str,
) -> None:
    volumes = {**hetzner_volumes, "FLAGMETER_STACK_IMAGES_ARCHIVE": stack_images_archive}
    molecule_test("roles/flagmeter", "default", ansible_env, docker_host_image, volumes)


def test_site_playbook_provisions_a_fresh_host_end_to_end(
    ansible_env: dict[str, str],
    fresh_host_image: str,
    hetzner_volumes: dict[str, str],
    stack_images_archive: str,
) -> None:
    """The default path: the Coolify stand-in in place of Coolify's installer, the coolify role's application
    step deploying FlagMeter through it; ends with /ready answering 200 inside the host, an event posted and
    counted, and PostgreSQL's data on the volume (verify.yml)."""
    volumes = {**hetzner_volumes, "FLAGMETER_STACK_IMAGES_ARCHIVE": stack_images_archive}
    molecule_test("playbooks", "site", ansible_env, fresh_host_image, volumes)
