"""Fixtures for the deploy bundle: a Docker engine with the compose and buildx plugins, the local stand-in
images, and `flagmeter:local` built through the real Dockerfile (rebuilt only when its inputs change)."""

from __future__ import annotations

import pytest
from deploy_support import APP_IMAGE, BASE_IMAGE, REPO, SOURCE_LABEL, build_app_image, run, source_hash


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A running engine plus the compose and buildx CLI plugins, installed when missing."""
    run("sh", str(REPO / ".ci/dockerd.sh"), timeout=180)
    run("sh", str(REPO / ".ci/compose-plugin.sh"), timeout=300)


@pytest.fixture(scope="session")
def local_images(docker_engine: None) -> None:
    """Debian 13 based python / postgres / valkey images (tests/images/README.md)."""
    run("bash", str(REPO / "tests/images/build.sh"), timeout=900)


@pytest.fixture(scope="session")
def app_image(local_images: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`flagmeter:local`, rebuilt only when the Dockerfile, the lock or the source changed."""
    wanted = source_hash(BASE_IMAGE)
    have = run(
        "docker",
        "image",
        "inspect",
        "-f",
        f'{{{{index .Config.Labels "{SOURCE_LABEL}"}}}}',
        APP_IMAGE,
        check=False,
    ).stdout.strip()
    if have != wanted:
        build_app_image(tmp_path_factory.mktemp("build"))
    return APP_IMAGE
