"""The environment the Ansible tests run ansible-lint, ansible-playbook and Molecule with."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def tool_env() -> dict[str, str]:
    """What a developer's shell has with the venv active, plus a Molecule instance name unique to this run
    (so two checkouts can test side by side)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    env["FLAGMETER_MOLECULE_INSTANCE"] = f"flagmeter-molecule-{os.getpid()}"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PY_COLORS"] = "0"
    return env


@pytest.fixture(scope="session")
def ansible_env(tool_env: dict[str, str]) -> dict[str, str]:
    """For ansible-lint and ansible-playbook: the roles (the collections come with the venv's `ansible`)."""
    return {**tool_env, "ANSIBLE_ROLES_PATH": str(REPO / "roles")}
