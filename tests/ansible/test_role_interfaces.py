"""Every role types and documents its inputs: meta/argument_specs.yml names each variable of defaults/main.yml
with the type and default found there, so a wrong variable type fails before any task runs, and the role's
README lists each one with that default and the spec's description, so neither can drift."""

from __future__ import annotations

import json
import os
import re
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


def readme_variables(role: str) -> dict[str, tuple[object, str]]:
    """The README's variable table: each row's variable, its default (YAML) and its meaning."""
    rows = {}
    for line in (REPO / "roles" / role / "README.md").read_text().splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = (yaml.safe_load(cells[1].strip("`")), cells[2])
    return rows


@pytest.mark.parametrize("role", ROLES)
def test_readme_lists_every_default_with_its_value_and_meaning(role: str) -> None:
    documented = readme_variables(role)
    assert list(documented) == list(defaults(role))
    specs = options(role)
    for name, value in defaults(role).items():
        assert documented[name] == (value, specs[name]["description"]), name


@pytest.mark.parametrize("role", ROLES)
def test_readme_says_how_to_run_the_role_s_scenario_alone(role: str) -> None:
    assert f"cd roles/{role} && molecule test" in (REPO / "roles" / role / "README.md").read_text()


def test_a_wrong_variable_type_fails_before_any_task_runs(tmp_path: Path) -> None:
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  roles: [{role: coolify, coolify_min_memory_mb: plenty}]\n"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_LOCALHOST_WARNING": "0"}  # fmt: skip
    result = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(play), "-e", json.dumps({"coolify_install_run": False})],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "coolify_min_memory_mb" in result.stdout
    assert "Ask Docker for its version" not in result.stdout
