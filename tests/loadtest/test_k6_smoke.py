"""`make loadtest` against the real service: load.js and batch.js run at a low rate, keep their error and
drop thresholds, and every event the API answered as accepted is counted exactly once (loadtest/verify.py).

Latency limits are relaxed here: the machine is shared with the rest of the suite, and speed is
bench/run.py's business, not a test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VERIFY = ROOT / "loadtest" / "verify.py"


@dataclass(frozen=True)
class LoadtestRun:
    done: subprocess.CompletedProcess[str]
    summary_dir: Path

    def summary(self, script: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.summary_dir / f"{script}-summary.json").read_text())
        return loaded


def accepted_events(summary: dict[str, Any]) -> int:
    return int(summary["metrics"]["flagmeter_accepted_events"]["values"]["count"])


def verify(summary_path: Path, timeout_s: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(VERIFY), str(summary_path), "--timeout", str(timeout_s)],
        capture_output=True,
        text=True,
        timeout=timeout_s + 30,
        check=False,
    )


@pytest.fixture(scope="module")
def loadtest_run(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> LoadtestRun:
    summary_dir = tmp_path_factory.mktemp("k6")
    command = [
        sys.executable, str(ROOT / "loadtest" / "run.py"), "--rate", "40", "--batch-rate", "4",
        "--duration", "5s", "--summary-dir", str(summary_dir), "--latency-ms", "2000", "3000",
    ]  # fmt: skip
    env = {**os.environ, "BASE_URL": stack.api_url, "ADMIN_TOKEN": stack.admin_token}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
    return LoadtestRun(done, summary_dir)


def test_loadtest_passes_its_thresholds_and_counts_every_accepted_event(loadtest_run: LoadtestRun) -> None:
    done = loadtest_run.done
    assert done.returncode == 0, done.stdout + done.stderr
    checks = [line for line in done.stdout.splitlines() if line.startswith("count check:")]
    assert len(checks) == 2 and all(line.startswith("count check: OK") for line in checks), done.stdout


@pytest.mark.parametrize(("script", "minimum_events"), [("load", 100), ("batch", 1000)])
def test_each_script_had_events_accepted_and_none_rejected(
    loadtest_run: LoadtestRun, script: str, minimum_events: int
) -> None:
    summary = loadtest_run.summary(script)
    # load: ~200 requests, 80 % single events; batch: ~20 requests of 100-1000 events.
    assert accepted_events(summary) >= minimum_events
    assert "flagmeter_rejected_events" not in summary["metrics"] or (
        summary["metrics"]["flagmeter_rejected_events"]["values"]["count"] == 0
    )


def test_count_check_fails_when_an_accepted_event_is_missing(
    loadtest_run: LoadtestRun, tmp_path: Path
) -> None:
    summary = loadtest_run.summary("load")
    # Claim one more accepted event than the API took: what is counted can then never satisfy the check.
    summary["metrics"]["flagmeter_accepted_events"]["values"]["count"] += 1
    tampered = tmp_path / "tampered-summary.json"
    tampered.write_text(json.dumps(summary))

    check = verify(tampered, timeout_s=3)

    assert check.returncode == 1
    assert check.stdout.startswith("MISMATCH")
