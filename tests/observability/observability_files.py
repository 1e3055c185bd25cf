"""Where the observability bundle lives, and small helpers the observability tests share."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose" / "observability.yml"
OBS = REPO / "compose" / "observability"
RULE_FILES = sorted((OBS / "rules").glob("*.yml"))
RULE_TESTS = sorted((OBS / "rules-tests").glob("*.test.yml"))
DASHBOARDS = sorted((OBS / "grafana" / "dashboards").glob("*.json"))
PROVISIONING = OBS / "grafana" / "provisioning"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in load_yaml(path)["groups"] for rule in group["rules"]]


def datasources() -> dict[str, dict[str, Any]]:
    docs = [load_yaml(p) for p in sorted((PROVISIONING / "datasources").glob("*.yml"))]
    return {ds["uid"]: ds for doc in docs for ds in doc["datasources"]}


def dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def prometheus_queries() -> list[tuple[str, str]]:
    """(where, expr) for every Prometheus query of every dashboard: panel targets and variables."""
    prometheus_uids = {uid for uid, ds in datasources().items() if ds["type"] == "prometheus"}
    queries = []
    for path in DASHBOARDS:
        board = dashboard(path)
        for panel in panels(board):
            for target in panel.get("targets", []):
                if target.get("datasource", panel.get("datasource", {})).get("uid") in prometheus_uids:
                    queries.append((f"{path.name}: {panel['title']} {target['refId']}", target["expr"]))
        for variable in board.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                query = variable["query"]
                queries.append((f"{path.name}: ${variable['name']}", query.get("query", query)))
    return queries


def _apt_install(*packages: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)


def debian_binary(binary: str, package: str) -> str:
    """Path of a binary from a Debian package, installing the package when missing and running as root."""
    found = shutil.which(binary) or (binary if Path(binary).is_file() else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{binary} missing and cannot install it (needs root and apt): apt-get install {package}")
    _apt_install(package)
    found = shutil.which(binary) or (binary if Path(binary).is_file() else None)
    if not found:
        pytest.fail(f"installed {package} but {binary} is still missing")
    return found


def run_promtool(promtool: str, *args: str | Path, cwd: Path = OBS) -> str:
    result = subprocess.run([promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output
