"""The service under test as it is deployed: the production compose stack (compose/docker-compose.yml,
its memory and CPU limits, `flagmeter:local` built through the Dockerfile) on this machine's engine,
started the way the deploy tests start it (tests/deploy/deploy_support.py).

Each role is a container: its processes are the tree under the container's init, seen from the host, so
CPU and PSS are read from /proc as for the local stack; the container's cgroup adds the figure a
container is limited by: what the kernel charges it (anonymous memory plus the page cache it brought in)
and that less its inactive page cache, the working set `docker stats` shows.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.procs import MemoryCgroup, pid_of_command
from bench.stack import COLLATION_SQL, warm_wal

ROOT = Path(__file__).resolve().parents[1]
sys.path[1:1] = [str(ROOT / "tests"), str(ROOT / "tests" / "deploy")]  # the deploy tests' harness

import deploy_support  # noqa: E402
from deploy_support import PRODUCTION_FILE, ComposeStack  # noqa: E402

SERVICES = {"api": "api", "worker": "worker", "postgres": "postgres", "redis": "valkey"}  # role: service


def prepare_images(workdir: Path) -> None:
    """The engine, the local base images and `flagmeter:local` of this checkout, made as the deploy
    tests' fixtures make them (each step does nothing when already done)."""
    deploy_support.ensure_docker_engine()
    deploy_support.ensure_local_images()
    workdir.mkdir(parents=True, exist_ok=True)
    deploy_support.ensure_app_image(workdir)


@dataclass
class DeployedStack:
    """The compose stack, shaped like bench/stack.Stack for the steps: api_url, admin_token, roles()."""

    compose: ComposeStack
    api_processes: int
    container_pids: dict[str, int]

    @property
    def api_url(self) -> str:
        return self.compose.base_url

    @property
    def admin_token(self) -> str:
        return deploy_support.ADMIN_TOKEN

    def roles(self) -> dict[str, int]:
        """Each container's init, and docker-proxy when there is one (its CPU is not the service's)."""
        proxy = self.proxy_pid()
        return self.container_pids | ({"docker-proxy": proxy} if proxy else {})

    def cgroups(self) -> dict[str, MemoryCgroup]:
        return {role: MemoryCgroup.of(pid) for role, pid in self.container_pids.items()}

    def proxy_pid(self) -> int | None:
        """docker-proxy, which carries each published connection when the engine uses its userland proxy."""
        try:
            return pid_of_command("docker-proxy", f"-host-port {self.compose.api_ports[0]}")
        except RuntimeError:
            return None

    def start_api(self, processes: int) -> None:
        raise SystemExit("--compose runs every step with --processes API processes")

    def database_collation(self) -> str:
        return self.compose.sql(COLLATION_SQL)

    def warm_wal(self) -> int:
        return warm_wal(self.compose.sql)  # psql in the postgres container


def _container_pid(stack: ComposeStack, service: str) -> int:
    container = stack.compose("ps", "-q", service).split()[0]
    return int(deploy_support.run("docker", "inspect", "-f", "{{.State.Pid}}", container).stdout)


@contextlib.contextmanager
def running_compose_stack(run_dir: Path, api_processes: int) -> Iterator[DeployedStack]:
    prepare_images(run_dir / "build")
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = {"FLAGMETER_API_PROCESSES": str(api_processes)}
    try:
        with deploy_support.running_stack((PRODUCTION_FILE,), run_dir, extra_env=extra) as stack:
            pids = {role: _container_pid(stack, service) for role, service in SERVICES.items()}
            yield DeployedStack(stack, api_processes, pids)
    finally:
        # The cluster is throwaway, as the local stack's is (~4 GB after a full run); its files belong to
        # the container's postgres user, which only root may delete.
        pg_data = run_dir / "flagmeter-pg"
        try:
            shutil.rmtree(pg_data)
        except FileNotFoundError:
            pass
        except PermissionError:
            print(f"[bench] the compose stack's cluster is left in {pg_data}", file=sys.stderr)
