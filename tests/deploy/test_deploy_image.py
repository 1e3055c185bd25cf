"""The `flagmeter` image, built through the real Dockerfile on the local Debian 13 python base."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from deploy_support import BASE_IMAGE, HOST_CA_BUNDLE, REPO, compose, compose_env, run

pytestmark = pytest.mark.docker

RUNTIME_ONLY_ABSENT = (
    "pytest",
    "hypothesis",
    "ansible-core",
    "molecule",
    "schemathesis",
    "pip",
    "setuptools",
)
APP_LAYERS_CEILING = 40 * 1024 * 1024  # ~28 MB with the shared objects stripped, ~50 MB without


def in_image(image: str, script: str) -> str:
    return run("docker", "run", "--rm", "--entrypoint", "/bin/sh", image, "-c", script).stdout


def inspect(image: str) -> dict[str, Any]:
    details: dict[str, Any] = json.loads(run("docker", "image", "inspect", image).stdout)[0]
    return details


def test_image_runs_flagmeter_as_a_non_root_user(app_image: str) -> None:
    assert inspect(app_image)["Config"]["Entrypoint"] == ["flagmeter"]
    assert in_image(app_image, "id -u").strip() == "10001"
    usage = run("docker", "run", "--rm", app_image, "--help").stdout
    for command in ("api", "worker", "migrate", "seed"):
        assert command in usage


def test_final_stage_has_no_compiler_and_no_curl(app_image: str) -> None:
    found = in_image(app_image, "for c in gcc cc c++ g++ clang make curl; do command -v $c || true; done")
    assert found.strip() == ""


def test_healthcheck_asks_the_process_with_python(app_image: str) -> None:
    test = inspect(app_image)["Config"]["Healthcheck"]["Test"]
    assert test[:2] == ["CMD", "python3"]
    assert "/health" in test[-1]


def test_image_holds_the_runtime_dependencies_at_the_locked_versions_only(app_image: str) -> None:
    script = (
        "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)"
    )
    listed = run("docker", "run", "--rm", "--entrypoint", "python3", app_image, "-c", script).stdout
    installed = dict(line.split() for line in listed.splitlines())
    normal = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in installed.items()}
    locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.lock").read_text(), re.M))
    locked = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in locked.items()}
    for absent in RUNTIME_ONLY_ABSENT:
        assert absent not in normal
    for name, version in normal.items():
        if name != "flagmeter":
            assert locked.get(name) == version, name


def test_no_pip_secret_or_setting_is_left_in_the_image(app_image: str) -> None:
    config = inspect(app_image)["Config"]
    assert not [env for env in config["Env"] if env.startswith(("PIP_CERT", "PIP_CONFIG_FILE", "PIP_INDEX"))]
    assert in_image(app_image, "ls /run/secrets 2>/dev/null | wc -l").strip() == "0"


def test_app_layers_stay_small_on_top_of_the_base(app_image: str) -> None:
    added = inspect(app_image)["Size"] - inspect(BASE_IMAGE)["Size"]
    print(
        f"\n{app_image}: {inspect(app_image)['Size'] / 1e6:.0f} MB, {added / 1e6:.0f} MB above {BASE_IMAGE}"
    )
    assert added < APP_LAYERS_CEILING


def test_compose_builds_the_image_with_the_optional_pip_ca(app_image: str) -> None:
    tag = "flagmeter:compose-build-test"
    env = compose_env(
        FLAGMETER_IMAGE=tag,
        FLAGMETER_BASE_IMAGE=BASE_IMAGE,
        FLAGMETER_PIP_CA=str(HOST_CA_BUNDLE) if HOST_CA_BUNDLE.is_file() else "/dev/null",
    )
    try:
        compose("-p", "fmdeploybuild", "build", "api", env=env)
        assert in_image(tag, "id -u; ls /run/secrets 2>/dev/null | wc -l").split() == ["10001", "0"]
    finally:
        run("docker", "image", "rm", tag, check=False)
