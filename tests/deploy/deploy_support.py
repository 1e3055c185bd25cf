"""What the deploy tests share: running commands, `docker compose` over compose/, building `flagmeter:local`
through the real Dockerfile, and reading the stacks' memory limits."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
PRODUCTION_FILE = "compose/docker-compose.yml"
DEV_FILE = "compose/docker-compose.dev.yml"
OBSERVABILITY_FILE = "compose/observability.yml"
COOLIFY_FILE = "coolify/docker-compose.yml"
APP_IMAGE = "flagmeter:local"
BASE_IMAGE = "flagmeter-python:3.13-trixie"
POSTGRES_IMAGE = "flagmeter-postgres:17"
VALKEY_IMAGE = "flagmeter-valkey:8"
SOURCE_LABEL = "org.flagmeter.source-hash"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# pip settings that still mean something inside a build container; local paths (find-links, constraint
# files, file:// indexes, the cert path) do not, and the CA bundle goes in as its own secret.
PORTABLE_PIP_KEYS = {"index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries"}


def run(
    *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run a command, returning its output; on failure the message carries stdout and stderr."""
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def source_hash(base_image: str) -> str:
    """Hash of everything the Dockerfile reads, plus the base image id."""
    digest = hashlib.sha256()
    files = [
        REPO / name
        for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "requirements.lock", "README.md")
    ]
    files += sorted(
        p
        for p in (REPO / "src").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    )
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(run("docker", "image", "inspect", "-f", "{{.Id}}", base_image).stdout.encode())
    return digest.hexdigest()[:16]


def portable_pip_conf() -> str:
    """The host's pip settings that work inside a build container, as a pip.conf (empty when none)."""
    listed = run("pip", "config", "list", check=False).stdout.splitlines()
    lines = []
    for line in listed:
        key, _, value = line.partition("=")
        name = key.split(".", 1)[-1]
        value = value.strip().strip("'")
        if name in PORTABLE_PIP_KEYS and "file:" not in value and not value.startswith("/"):
            lines.append(f"{name} = {value}")
    return "[global]\n" + "\n".join(lines) + "\n" if lines else ""


def build_app_image(tmp: Path) -> subprocess.CompletedProcess[str]:
    """`docker build` of the repository's Dockerfile on the local base, with the host's CA and pip settings
    as optional secrets, labelled with the source hash."""
    args = [
        "docker",
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE={BASE_IMAGE}",
        "--label",
        f"{SOURCE_LABEL}={source_hash(BASE_IMAGE)}",
        "-t",
        APP_IMAGE,
    ]
    if HOST_CA_BUNDLE.is_file():
        args += ["--secret", f"id=pip_ca,src={HOST_CA_BUNDLE}"]
    if pip_conf := portable_pip_conf():
        conf = tmp / "pip.conf"
        conf.write_text(pip_conf)
        args += ["--secret", f"id=pip_conf,src={conf}"]
    return run(*args, str(REPO), env={**os.environ, "DOCKER_BUILDKIT": "1"}, timeout=1200)


def compose_env(**extra: str) -> dict[str, str]:
    """Environment for `docker compose` with throwaway secrets, on top of compose/.env.example."""
    return {
        **os.environ,
        "POSTGRES_PASSWORD": "test-pg-password",
        "FLAGMETER_ADMIN_TOKEN": "test-admin-token",
        "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
        **extra,
    }


def compose(
    *args: str,
    files: tuple[str, ...] = (PRODUCTION_FILE,),
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """`docker compose` over files given relative to the repository, with compose/.env.example as the env
    file. Coolify runs its file with the repository root as project directory, so that one gets it too."""
    cmd = ["docker", "compose", "--env-file", str(COMPOSE_DIR / ".env.example")]
    if COOLIFY_FILE in files:
        cmd += ["--project-directory", str(REPO)]
    for name in files:
        cmd += ["-f", str(REPO / name)]
    return run(*cmd, *args, env=env if env is not None else compose_env(), check=check, timeout=timeout)


@dataclass(frozen=True)
class MemoryLimit:
    compose_file: str
    service: str
    mem_limit: int  # bytes, per container
    replicas: int

    @property
    def total(self) -> int:
        return self.mem_limit * self.replicas


def memory_limits(compose_file: str) -> list[MemoryLimit]:
    """mem_limit and default replica count of every service, as compose resolves them with .env.example."""
    config = json.loads(compose("config", "--format", "json", files=(compose_file,)).stdout)
    limits = []
    for name, service in config["services"].items():
        assert service.get("mem_limit"), f"{compose_file}: service {name} has no mem_limit"
        replicas = service.get("deploy", {}).get("replicas", 1)
        limits.append(MemoryLimit(compose_file, name, int(service["mem_limit"]), int(replicas)))
    return limits
