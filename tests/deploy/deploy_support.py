"""What the deploy tests share: running commands, `docker compose` over compose/, building `flagmeter:local`
through the real Dockerfile, and reading the stacks' memory limits."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from flagmeter.localstack import free_port
from stacklib import wait_until

# How a test waits on a deployed stack: slower polls; a connection not yet accepted means "not yet".
DEPLOYED: dict[str, Any] = {"ignoring": (OSError, urllib.error.URLError), "every": 0.5}

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
ARTIFACTS = REPO / "tests/artifacts"
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


def ensure_docker_engine() -> None:
    """A running engine plus the compose and buildx CLI plugins, installed when missing."""
    run("sh", str(REPO / ".ci/dockerd.sh"), timeout=180)
    run("sh", str(REPO / ".ci/compose-plugin.sh"), timeout=300)


def ensure_local_images() -> None:
    """Debian 13 based python / postgres / valkey images (tests/images/README.md)."""
    run("bash", str(REPO / "tests/images/build.sh"), timeout=900)


def ensure_app_image(tmp: Path) -> str:
    """`flagmeter:local`, rebuilt only when the Dockerfile, the lock or the source changed."""
    have = run(
        "docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{SOURCE_LABEL}"}}}}', APP_IMAGE,
        check=False,
    ).stdout.strip()  # fmt: skip
    if have != source_hash(BASE_IMAGE):
        build_app_image(tmp)
    return APP_IMAGE


ADMIN_TOKEN = "test-admin-token"


def compose_env(**extra: str) -> dict[str, str]:
    """Environment for `docker compose` with throwaway secrets, on top of compose/.env.example."""
    return {
        **os.environ,
        "POSTGRES_PASSWORD": "test-pg-password",
        "FLAGMETER_ADMIN_TOKEN": ADMIN_TOKEN,
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


def call_json(url: str, method: str, token: str, body: Any = None) -> tuple[int, Any]:
    """One JSON request with a bearer token: the status and the decoded answer, errors included."""
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@dataclass
class ComposeStack:
    """A compose project started by `running_stack`: the FlagMeter containers, reached on 127.0.0.1."""

    project: str
    env: dict[str, str]
    files: tuple[str, ...]
    api_ports: list[int]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_ports[0]}"

    def compose(self, *args: str, check: bool = True) -> str:
        return compose("-p", self.project, *args, files=self.files, env=self.env, check=check).stdout

    def call(self, method: str, path: str, body: Any = None, port: int | None = None) -> tuple[int, Any]:
        """One API request as the admin, to the first published port unless told."""
        return call_json(f"http://127.0.0.1:{port or self.api_ports[0]}{path}", method, ADMIN_TOKEN, body)

    def ready(self, port: int) -> bool:
        return self.call("GET", "/ready", port=port)[0] == 200

    def sql(self, query: str) -> str:
        return self.compose(
            "exec", "-T", "postgres", "psql", "-U", "flagmeter", "-d", "flagmeter", "-At", "-c", query
        ).strip()


def free_port_range(count: int) -> list[int]:
    """`count` consecutive ports free on 127.0.0.1, for a published range (one host port per replica)."""
    for _ in range(50):
        first = free_port()
        ports = list(range(first, first + count))
        try:
            for port in ports[1:]:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return ports
        except OSError:
            continue
    raise AssertionError(f"no {count} consecutive free ports")


@contextmanager
def running_stack(
    files: tuple[str, ...], workdir: Path, *, api_replicas: int = 1, extra_env: dict[str, str] | None = None
) -> Iterator[ComposeStack]:
    """The compose stack of `files` under a unique project name, with the local postgres/valkey images,
    PostgreSQL data under `workdir`, each API replica on a free 127.0.0.1 port; ready on entry, removed on
    exit (its logs kept in tests/artifacts/)."""
    project = f"fmdeploy{secrets.token_hex(4)}"
    ports = free_port_range(api_replicas)
    pg_data = workdir / "flagmeter-pg"
    pg_data.mkdir()
    pg_data.chmod(0o755)  # as a freshly mounted volume's root: the postgres user must traverse it
    env = compose_env(
        FLAGMETER_POSTGRES_IMAGE=POSTGRES_IMAGE,
        FLAGMETER_VALKEY_IMAGE=VALKEY_IMAGE,
        FLAGMETER_IMAGE=APP_IMAGE,
        FLAGMETER_PG_DATA_DIR=str(pg_data),
        FLAGMETER_NETWORK=project,
        FLAGMETER_API_PORTS=f"{ports[0]}-{ports[-1]}" if api_replicas > 1 else str(ports[0]),
        FLAGMETER_API_REPLICAS=str(api_replicas),
        **(extra_env or {}),
    )
    stack = ComposeStack(project, env, files, ports)
    try:
        stack.compose("up", "-d", "--no-build", "--quiet-pull")
        for port in ports:
            wait_until(partial(stack.ready, port), 180, f"GET :{port}/ready = 200", **DEPLOYED)
        yield stack
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{project}.log").write_text(stack.compose("logs", "--no-color", check=False))
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
