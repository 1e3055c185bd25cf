#!/usr/bin/env python3
"""The host a Molecule scenario converges, made ready before Molecule creates it, and cleared after.

Each scenario's molecule.yml runs `up` as its dependency step and the shared cleanup playbook runs `down`
(.config/molecule/config.yml), so `molecule test` from a role's folder needs nothing prepared by hand:

    molecule_host.py up fresh|docker [--stack-images]
    molecule_host.py down

`up` starts a Docker engine when none answers (.ci/dockerd.sh), builds the Debian 13 systemd image
(tests/images/debian13-systemd.sh: `fresh` has nothing installed, `docker` has Docker) and tags it for this
instance, and attaches two loop devices that stand in for Hetzner Volumes: one blank, one holding ext4
with a file.
With --stack-images it also builds the stack's images (tests/images/build.sh and the repository's
Dockerfile) and saves them to an archive the shared prepare step copies onto the host. Everything is
named after the instance, $FLAGMETER_MOLECULE_INSTANCE (default flagmeter-molecule), so two runs with
different instance names do not meet. Needs root (losetup, mkfs) and Docker.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What .config/molecule/config.yml names: the image tag, the devices and the archive, per instance.
STATE_ROOT = Path("/var/tmp/flagmeter-molecule")
HOST_IMAGE = "flagmeter-molecule-host"
VOLUMES = ("volume-blank", "volume-data")
VOLUME_SIZE = 512 * 1024 * 1024


def run(cmd: list[str], timeout: float = 1200, **kwargs: object) -> str:
    result = subprocess.run(cmd, text=True, capture_output=True, check=False, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        sys.exit(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    return str(result.stdout)


def instance() -> str:
    return os.environ.get("FLAGMETER_MOLECULE_INSTANCE") or "flagmeter-molecule"


def host_image(variant: str) -> str:
    """The Debian 13 image for this variant, tagged HOST_IMAGE:<instance> for the platform to run."""
    env = {**os.environ, "FLAGMETER_DEBIAN13_VARIANT": "base" if variant == "fresh" else variant}
    built = run(["sh", str(REPO / "tests/images/debian13-systemd.sh")], env=env).strip().splitlines()[-1]
    run(["docker", "tag", built, f"{HOST_IMAGE}:{instance()}"])
    return built


def attach_volumes(state: Path) -> None:
    """Two loop devices, linked from the paths the platform passes in as the Hetzner Volumes' devices."""
    with tempfile.TemporaryDirectory() as seed:
        (Path(seed) / "precious.txt").write_text("customer data\n")
        for name in VOLUMES:
            image = state / f"{name}.img"
            with image.open("wb") as f:
                f.truncate(VOLUME_SIZE)
            if name == "volume-data":
                run(["mkfs.ext4", "-q", "-F", "-L", "existing", "-d", seed, str(image)])
            device = run(["losetup", "-f", "--show", str(image)]).strip()
            (state / name).symlink_to(device)


def stack_images_archive(state: Path) -> None:
    """`docker save` of flagmeter:local and the stand-in postgres/valkey images, linked as
    <state>/stack-images.tar. The archive is named after the images' ids, so it is rewritten only when
    one of them changed."""
    sys.path[:0] = [str(REPO / "tests" / "deploy"), str(REPO / "tests")]  # deploy_support imports stacklib
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
        with tempfile.TemporaryDirectory() as tmp:
            deploy.build_app_image(Path(tmp))
    images = [deploy.APP_IMAGE, deploy.POSTGRES_IMAGE, deploy.VALKEY_IMAGE]
    ids = run(["docker", "image", "inspect", "-f", "{{.Id}}", *images])
    archive = REPO / ".run" / f"stack-images-{hashlib.sha256(ids.encode()).hexdigest()[:12]}.tar"
    if not archive.exists():
        for stale in archive.parent.glob("stack-images-*"):
            stale.unlink()  # about 1 GB each; only the current images matter
        partial = archive.with_suffix(".partial")
        run(["docker", "save", "-o", str(partial), *images], timeout=600)
        partial.rename(archive)
    (state / "stack-images.tar").symlink_to(archive)


def up(variant: str, stack_images: bool) -> None:
    down()
    state = STATE_ROOT / instance()
    state.mkdir(parents=True)
    run(["sh", str(REPO / ".ci" / "dockerd.sh")], timeout=120)
    print(f"host image {host_image(variant)} as {HOST_IMAGE}:{instance()}")
    attach_volumes(state)
    if stack_images:
        stack_images_archive(state)
    print(f"volumes {', '.join(str((state / name).resolve()) for name in VOLUMES)} under {state}")


def down() -> None:
    state = STATE_ROOT / instance()
    for name in VOLUMES:
        link = state / name
        if link.is_symlink():
            # A device the host still has mounted is detached once the container is gone (autoclear).
            subprocess.run(["losetup", "-d", os.readlink(link)], capture_output=True, check=False)
    if state.exists():
        run(["rm", "-rf", str(state)])
    subprocess.run(["docker", "image", "rm", f"{HOST_IMAGE}:{instance()}"], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="make the host's image, volumes and images ready")
    start.add_argument("variant", choices=["fresh", "docker"], help="nothing installed, or Docker installed")
    start.add_argument("--stack-images", action="store_true", help="also the stack's images, as an archive")
    commands.add_parser("down", help="detach the volumes and drop the instance's image tag")
    args = parser.parse_args()
    if args.command == "up":
        up(args.variant, args.stack_images)
    else:
        down()


if __name__ == "__main__":
    main()
