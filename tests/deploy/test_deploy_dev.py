"""The development override: the API runs the mounted source tree and restarts when a source file changes."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from deploy_support import DEPLOYED, DEV_FILE, PRODUCTION_FILE, REPO, free_port, running_stack, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_api_reloads_the_mounted_source_when_it_changes(
    app_image: str, local_images: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    work = tmp_path_factory.mktemp("dev")
    src = work / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {
        "FLAGMETER_DEV_SRC": str(src),
        "FLAGMETER_DEV_PG_PORT": str(free_port()),
        "FLAGMETER_DEV_VALKEY_PORT": str(free_port()),
    }
    with running_stack((PRODUCTION_FILE, DEV_FILE), work, extra_env=env) as stack:
        # The document the API serves is read from the package when the process starts.
        spec_path = src / "flagmeter/openapi.json"
        spec = json.loads(spec_path.read_text())
        spec["info"]["title"] = "reloaded from the mounted source"
        spec_path.write_text(json.dumps(spec))
        python_file = src / "flagmeter/api/__init__.py"  # where /openapi.json is served
        os.utime(python_file)  # only .py/.sql changes trigger the restart

        def serves_new_title() -> bool:
            status, served = stack.call("GET", "/openapi.json")
            return status == 200 and served["info"]["title"] == spec["info"]["title"]

        wait_until(serves_new_title, 60, "the API to serve the edited source", **DEPLOYED)
        assert "source changed: restarting flagmeter api" in stack.compose("logs", "--no-color", "api")
