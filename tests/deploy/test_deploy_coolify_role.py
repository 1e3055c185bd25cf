"""The coolify role's application step (roles/coolify/tasks/application.yml) through Ansible, against the
Coolify stand-in: it creates the application, and a second run changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from coolify_support import DOMAIN, GIT_URL, TOKEN, running_standin
from deploy_support import REPO

PLAY = """
- name: The coolify role's application step
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run the step
      ansible.builtin.include_role:
        name: coolify
        tasks_from: application.yml
"""


def converge(tmp: Path, url: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    playbook = tmp / "play.yml"
    playbook.write_text(PLAY)
    extra = {"coolify_url": url, "coolify_api_token": token, "coolify_flagmeter_app_git_repository": GIT_URL,
             "coolify_flagmeter_app_domain": DOMAIN}  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCALHOST_WARNING": "0"}  # fmt: skip
    return subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(playbook), "-e", json.dumps(extra)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_the_role_creates_the_application_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    with running_standin(tmp_path) as standin:
        first = converge(tmp_path, standin.url)
        assert first.returncode == 0, first.stdout[-3000:]
        assert "changed=1" in first.stdout
        application = standin.application()
        assert application["build_pack"] == "dockercompose"
        assert application["docker_compose_location"] == "/coolify/docker-compose.yml"
        assert json.loads(application["docker_compose_domains"]) == {"api": {"domain": f"{DOMAIN}:8080"}}
        writes = len(standin.writes())
        second = converge(tmp_path, standin.url)
        assert second.returncode == 0, second.stdout[-3000:]
        assert "changed=0" in second.stdout
        assert len(standin.writes()) == writes


def test_the_role_fails_on_a_wrong_token_with_coolify_s_answer(tmp_path: Path) -> None:
    with running_standin(tmp_path) as standin:
        result = converge(tmp_path, standin.url, token="wrong")
        assert result.returncode != 0
        assert "401 Unauthenticated." in result.stdout
        assert standin.api("/projects") == []
