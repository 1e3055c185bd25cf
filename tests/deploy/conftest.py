"""Fixtures for the deploy bundle: a Docker engine with the compose and buildx plugins, the local stand-in
images, and `flagmeter:local` built through the real Dockerfile (rebuilt only when its inputs change)."""

from __future__ import annotations

import pytest
from deploy_support import ensure_app_image, ensure_docker_engine, ensure_local_images


@pytest.fixture(scope="session")
def docker_engine() -> None:
    ensure_docker_engine()


@pytest.fixture(scope="session")
def local_images(docker_engine: None) -> None:
    ensure_local_images()


@pytest.fixture(scope="session")
def app_image(local_images: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    return ensure_app_image(tmp_path_factory.mktemp("build"))
