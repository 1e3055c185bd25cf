"""Every role is usable alone: a README naming each of its variables, and meta/argument_specs.yml typing each
one, so a wrong type fails before any task runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks/main.yml").exists())
TYPES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}


def defaults(role: str) -> dict[str, object]:
    return yaml.safe_load((REPO / "roles" / role / "defaults/main.yml").read_text()) or {}


def options(role: str) -> dict[str, dict[str, object]]:
    specs = yaml.safe_load((REPO / "roles" / role / "meta/argument_specs.yml").read_text())
    return dict(specs["argument_specs"]["main"]["options"])


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_type_every_default_with_its_value(role: str) -> None:
    specs = options(role)
    assert set(specs) == set(defaults(role))
    for name, value in defaults(role).items():
        assert specs[name]["type"] == TYPES[type(value)], name
        assert specs[name]["default"] == value, name
        assert specs[name]["description"], name


@pytest.mark.parametrize("role", ROLES)
def test_readme_documents_every_variable_and_how_to_test_alone(role: str) -> None:
    readme = (REPO / "roles" / role / "README.md").read_text()
    missing = [name for name in defaults(role) if f"`{name}`" not in readme]
    assert not missing
    for section in (
        "## Role variables",
        "## Example playbook",
        "## What it changes on the host",
        "molecule test",
    ):
        assert section in readme, section


def test_a_wrong_variable_type_fails_before_any_task_runs(tmp_path: Path) -> None:
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  roles: [{role: hetzner_volume, hetzner_volume_mount_options: [not, a, string]}]\n"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_LOCALHOST_WARNING": "0"}  # fmt: skip
    result = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(play), "-e", json.dumps({"hetzner_volume_id": "1"})],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Validating arguments against arg spec" in result.stdout
    assert "hetzner_volume_mount_options" in result.stdout
    assert "Require the volume id" not in result.stdout
