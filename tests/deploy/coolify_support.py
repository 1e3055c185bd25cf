"""The Coolify stand-in (tests/coolify_standin/standin.py) as a running server on 127.0.0.1, and the calls
the tests make to it and to coolify/setup_coolify.py."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy_support import (
    APP_IMAGE,
    DEPLOYED,
    POSTGRES_IMAGE,
    REPO,
    VALKEY_IMAGE,
    call_json,
    free_port,
    wait_until,
)

STANDIN = REPO / "tests/coolify_standin/standin.py"
SETUP = REPO / "coolify/setup_coolify.py"
TOKEN = "standin-token-with-write"
READ_ONLY_TOKEN = "standin-token-read-only"
GIT_URL = "https://github.com/acme/flagmeter"
DOMAIN = "https://meter.example.com"


@dataclass
class StandIn:
    url: str
    host_root: Path

    def api(self, path: str, token: str = TOKEN) -> Any:
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def writes(self) -> list[dict[str, str]]:
        with urllib.request.urlopen(f"{self.url}/standin/writes", timeout=10) as response:
            return list(json.loads(response.read()))

    def application(self, name: str = "flagmeter") -> dict[str, Any]:
        [application] = [a for a in self.api("/applications") if a["name"] == name]
        return dict(application)

    def envs(self, uuid: str) -> dict[tuple[str, bool], str]:
        return {(e["key"], e["is_preview"]): e["value"] for e in self.api(f"/applications/{uuid}/envs")}

    def deploy(self, uuid: str, pr: int = 0) -> dict[str, Any]:
        """Queue a deployment the way the API does, and wait for the build pack to finish it."""
        [queued] = self.api(f"/deploy?uuid={uuid}" + (f"&pr={pr}" if pr else ""))["deployments"]
        path = f"/deployments/{queued['deployment_uuid']}"
        wait_until(
            lambda: self.api(path)["status"] != "in_progress", 600, "the deployment to end", **DEPLOYED
        )
        deployment: dict[str, Any] = self.api(path)
        assert deployment["status"] == "finished", deployment["logs"]
        return deployment


@contextmanager
def running_standin(tmp: Path) -> Iterator[StandIn]:
    """The stand-in with a write token and a read-only one, this checkout as GIT_URL, the local images for
    the registry ones, and bind sources under tmp/root (the stand-in server's filesystem)."""
    port = free_port()
    host_root = tmp / "root"
    host_root.mkdir()
    log = (tmp / "standin.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(STANDIN), "--port", str(port), "--state-dir", str(tmp / "state"),
         "--token", f"{TOKEN}=read,write,deploy", "--token", f"{READ_ONLY_TOKEN}=read",
         "--repository", f"{GIT_URL}={REPO}", "--host-root", str(host_root),
         "--image", f"postgres:17={POSTGRES_IMAGE}", "--image", f"valkey/valkey:8.1={VALKEY_IMAGE}",
         "--prebuilt-image", APP_IMAGE],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"{url}/api/health"), 30, "the stand-in to answer", **DEPLOYED
        )
        yield StandIn(url, host_root)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def setup_coolify(
    standin_url: str, *args: str, token: str = TOKEN, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """coolify/setup_coolify.py as an operator runs it, against the stand-in."""
    env = {"PATH": "/usr/bin:/bin", "COOLIFY_URL": standin_url, "COOLIFY_TOKEN": token}
    return subprocess.run(
        [sys.executable, str(SETUP), "--repo", GIT_URL, "--domain", DOMAIN, *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def api_call(base: str, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    return call_json(f"{base}{path}", method, token, body)
