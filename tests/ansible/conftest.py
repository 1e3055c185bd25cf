"""Fixtures for the Ansible tests: collections, the Docker engine, the host image, fake volumes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# community.docker (Molecule's docker driver), ansible.posix, community.general and hetzner.hcloud
# come from the `ansible` package, which bundles them; Galaxy is out of reach here.
COLLECTIONS_PACKAGE = "ansible>=11,<12"
COLLECTIONS_DIR = REPO / ".run" / "ansible-collections"
REQUIRED_COLLECTIONS = ("community.docker", "community.general", "ansible.posix", "hetzner.hcloud")


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def _collections_missing(env: dict[str, str]) -> bool:
    listed = subprocess.run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "list", "--format", "json"],
        text=True,
        capture_output=True,
        env=env,
        check=False,
    ).stdout
    return any(f'"{name}"' not in listed for name in REQUIRED_COLLECTIONS)


@pytest.fixture(scope="session")
def ansible_env() -> dict[str, str]:
    """Environment for ansible-*/molecule with the needed collections installed (once, cached)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    env["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS_DIR)
    env["ANSIBLE_ROLES_PATH"] = str(REPO / "roles")
    env["FLAGMETER_ROLES_PATH"] = str(REPO / "roles")
    env["FLAGMETER_REPO"] = str(REPO)
    env["FLAGMETER_MOLECULE_INSTANCE"] = f"flagmeter-molecule-{os.getpid()}"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PY_COLORS"] = "0"
    if _collections_missing(env):
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(COLLECTIONS_DIR),
                COLLECTIONS_PACKAGE,
            ]
        )
    return env


@pytest.fixture(scope="session")
def docker_engine() -> None:
    run(["sh", str(REPO / ".ci" / "dockerd.sh")])


def _host_image(variant: str) -> str:
    script = REPO / "tests" / "images" / "debian13-systemd.sh"
    env = dict(os.environ, FLAGMETER_DEBIAN13_VARIANT=variant)
    return run(["sh", str(script)], env=env, timeout=1200).stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def fresh_host_image(docker_engine: None) -> str:
    """Debian 13 with systemd and nothing else installed (the packages are in its apt cache)."""
    return _host_image("base")


@pytest.fixture(scope="session")
def docker_host_image(docker_engine: None) -> str:
    """The same image with Docker preinstalled, for roles that only need Docker to be there."""
    return _host_image("docker")


@pytest.fixture(scope="session")
def stack_images_archive(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`docker save` of flagmeter:local and the stand-in postgres/valkey images, for the inner Docker.

    The images come from the deploy bundle's builders (tests/images/build.sh, tests/deploy/deploy_support.py);
    the archive is named after the images' ids, so it is rewritten only when one of them changed."""
    sys.path.insert(0, str(REPO / "tests" / "deploy"))
    import deploy_support as deploy

    run(["sh", str(REPO / ".ci" / "compose-plugin.sh")], timeout=300)
    run(["bash", str(REPO / "tests" / "images" / "build.sh")], timeout=900)
    label = f'{{{{index .Config.Labels "{deploy.SOURCE_LABEL}"}}}}'
    built = subprocess.run(
        ["docker", "image", "inspect", "-f", label, deploy.APP_IMAGE],
        text=True,
        capture_output=True,
        check=False,
    ).stdout.strip()
    if built != deploy.source_hash(deploy.BASE_IMAGE):
        deploy.build_app_image(tmp_path_factory.mktemp("build"))
    images = [deploy.APP_IMAGE, deploy.POSTGRES_IMAGE, deploy.VALKEY_IMAGE]
    ids = run(["docker", "image", "inspect", "-f", "{{.Id}}", *images]).stdout
    archive = REPO / ".run" / f"stack-images-{hashlib.sha256(ids.encode()).hexdigest()[:12]}.tar"
    if not archive.exists():
        for stale in archive.parent.glob("stack-images-*"):
            stale.unlink()  # about 1 GB each; only the current images matter
        partial = archive.with_suffix(".partial")
        run(["docker", "save", "-o", str(partial), *images], timeout=600)
        partial.rename(archive)
    return str(archive)


@pytest.fixture
def hetzner_volumes(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Two loop devices standing in for Hetzner Volumes: one blank, one with ext4 and a data file."""
    blank = tmp_path / "blank.img"
    data = tmp_path / "data.img"
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "precious.txt").write_text("customer data\n")
    for image in (blank, data):
        with image.open("wb") as f:
            f.truncate(512 * 1024 * 1024)
    run(["mkfs.ext4", "-q", "-F", "-L", "existing", "-d", str(seed), str(data)])
    devices = [run(["losetup", "-f", "--show", str(image)]).stdout.strip() for image in (blank, data)]
    try:
        yield {"FLAGMETER_TEST_VOLUME_BLANK": devices[0], "FLAGMETER_TEST_VOLUME_DATA": devices[1]}
    finally:
        for device in devices:
            subprocess.run(["losetup", "-d", device], check=False)
