"""Molecule scenarios: converge each role on a Debian 13 systemd container, converge again
(nothing may change), then verify the real state of the host. Each runs as its README says,
`molecule test` from its folder, with nothing prepared beforehand: the scenario's own
dependency step builds the host image, the fake Hetzner Volumes and the stack's images
(tests/ansible/molecule_host.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST = REPO / "tests" / "ansible" / "molecule_host.py"

# The first run also builds the host images (debootstrap), so allow more than the default timeout.
pytestmark = [pytest.mark.molecule, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]


def molecule_test(project: str, env: dict[str, str], scenario: str = "default") -> None:
    # Molecule keys its state directory on the project's folder name alone (roles/flagmeter and
    # another checkout's roles/flagmeter collide); keep it in this checkout.
    state = REPO / ".run" / "molecule" / f"{project.replace('/', '-')}-{scenario}"
    try:
        result = subprocess.run(
            ["molecule", "test", "-s", scenario],
            cwd=REPO / project,
            env={**env, "MOLECULE_EPHEMERAL_DIRECTORY": str(state)},
            text=True,
            capture_output=True,
            check=False,
            timeout=1500,
        )
    finally:
        # Molecule's cleanup step does this too, but not when the run is killed.
        subprocess.run([sys.executable, str(HOST), "down"], env=env, capture_output=True, check=False)
    assert result.returncode == 0, (
        f"molecule {project}/{scenario} failed:\n{result.stdout[-12000:]}\n{result.stderr[-4000:]}"
    )


@pytest.mark.parametrize("role", ["base", "security", "hetzner_volume", "docker"])
def test_role_converges_idempotently_on_a_fresh_host(role: str, tool_env: dict[str, str]) -> None:
    molecule_test(f"roles/{role}", tool_env)


@pytest.mark.parametrize("role", ["coolify", "observability"])
def test_role_converges_idempotently_on_a_docker_host(role: str, tool_env: dict[str, str]) -> None:
    molecule_test(f"roles/{role}", tool_env)


def test_flagmeter_role_deploys_the_stack_until_ready(tool_env: dict[str, str]) -> None:
    molecule_test("roles/flagmeter", tool_env)


def test_site_playbook_provisions_a_fresh_host_end_to_end(tool_env: dict[str, str]) -> None:
    """The default path: the Coolify stand-in in place of Coolify's installer, the coolify role's application
    step deploying FlagMeter through it; ends with /ready answering 200 inside the host, an event posted and
    counted, and PostgreSQL's data on the volume (verify.yml)."""
    molecule_test("playbooks", tool_env, scenario="site")
