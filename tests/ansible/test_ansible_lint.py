"""The Ansible code passes its linters and the playbook parses: the cheap checks before Molecule."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def check(cmd: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=True, check=False, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-8000:]}\n{result.stderr[-4000:]}"


def test_yaml_is_clean(ansible_env: dict[str, str]) -> None:
    check(["yamllint", "--strict", "."], ansible_env)


def test_ansible_lint_production_profile_is_clean(ansible_env: dict[str, str]) -> None:
    check(["ansible-lint", "--profile", "production", "--offline"], ansible_env)


def test_site_playbook_parses(ansible_env: dict[str, str]) -> None:
    check(
        ["ansible-playbook", "--syntax-check", "-i", "inventory.example.ini", "playbooks/site.yml"],
        ansible_env,
    )
