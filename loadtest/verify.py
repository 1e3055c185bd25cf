#!/usr/bin/env python3
"""Check that every event a k6 run (load.js or batch.js) was told was accepted is counted, exactly once.

The k6 scripts record, in their JSON summary, the tenants they posted for with each tenant's usage before
the run, and how many events and tokens the API answered as accepted. This script reads the tenants'
usage (`GET /v1/usage/{tenant}` for tokens, `/series` for event counts) until the growth since the run
began equals what was accepted, and fails if it falls short after the timeout or ever goes beyond it.

    python loadtest/verify.py load-summary.json [--timeout 60]

Only the Python standard library is used, so it runs wherever k6 runs. Nothing else may post for those
tenants while the run is checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Counts:
    tokens: int
    events: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tokens + other.tokens, self.events + other.events)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.tokens - other.tokens, self.events - other.events)

    def covers(self, other: Counts) -> bool:
        return self.tokens >= other.tokens and self.events >= other.events


ZERO = Counts(0, 0)


@dataclass(frozen=True)
class Tenant:
    id: str
    key: str
    baseline: Counts


@dataclass(frozen=True)
class Run:
    """What one k6 run posted: where, for whom, and what the API said it accepted."""

    base_url: str
    tenants: list[Tenant]
    accepted: Counts
    # Requests that timed out or failed with a 5xx other than 503 may have been accepted or not.
    uncertain: Counts


@dataclass(frozen=True)
class Verdict:
    ok: bool
    accepted: Counts
    counted: Counts
    uncertain: Counts
    waited_s: float

    def describe(self) -> str:
        if self.ok:
            head = "OK"
        elif self.counted.covers(self.accepted):
            head = "MISMATCH (counted more than was accepted)"
        else:
            head = "MISMATCH (not all counted in time: lost, or the worker is behind)"
        text = (
            f"{head}: accepted {self.accepted.events} events / {self.accepted.tokens} tokens, "
            f"counted {self.counted.events} events / {self.counted.tokens} tokens after {self.waited_s:.1f}s"
        )
        if self.uncertain != ZERO:
            text += f" ({self.uncertain.events} events of unknown outcome)"
        return text


def _metric_count(summary: dict[str, object], name: str) -> int:
    metrics = summary["metrics"]
    assert isinstance(metrics, dict)
    metric = metrics.get(name)
    return int(metric["values"]["count"]) if metric else 0


def load_run(summary_path: Path) -> Run:
    summary = json.loads(summary_path.read_text())
    setup = summary.get("setup_data")
    if not setup:
        raise SystemExit(f"{summary_path}: no setup_data; was it written by loadtest/load.js or batch.js?")
    tenants = [
        Tenant(t["id"], t["key"], Counts(int(t["baseline"]["used"]), int(t["baseline"]["events"])))
        for t in setup["tenants"]
    ]
    return Run(
        base_url=setup["base_url"],
        tenants=tenants,
        accepted=Counts(
            _metric_count(summary, "flagmeter_accepted_tokens"),
            _metric_count(summary, "flagmeter_accepted_events"),
        ),
        uncertain=Counts(
            _metric_count(summary, "flagmeter_uncertain_tokens"),
            _metric_count(summary, "flagmeter_uncertain_events"),
        ),
    )


def _get_json(url: str, key: str) -> dict[str, object]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.load(response)
    assert isinstance(body, dict)
    return body


def read_counts(base_url: str, tenant: Tenant) -> Counts:
    """Tokens used and events counted in the tenant's current period, as the API reports them."""
    usage = _get_json(f"{base_url}/v1/usage/{tenant.id}", tenant.key)
    series = _get_json(f"{base_url}/v1/usage/{tenant.id}/series?window=day", tenant.key)
    rows = series["rows"]
    assert isinstance(rows, list)
    return Counts(int(usage["used"]), sum(int(row["events"]) for row in rows))  # type: ignore[call-overload]


def counted_since_baseline(run: Run) -> Counts:
    total = ZERO
    for tenant in run.tenants:
        total = total + (read_counts(run.base_url, tenant) - tenant.baseline)
    return total


def wait_until_counted(run: Run, timeout_s: float = 60.0, poll_s: float = 0.25) -> Verdict:
    """Poll until the counted growth equals what was accepted (exact unless some outcomes are unknown)."""
    ceiling = run.accepted + run.uncertain
    started = time.monotonic()
    while True:
        counted = counted_since_baseline(run)
        waited = time.monotonic() - started
        if not ceiling.covers(counted):
            return Verdict(False, run.accepted, counted, run.uncertain, waited)
        if counted.covers(run.accepted) and (run.uncertain == ZERO or waited >= min(timeout_s, 5.0)):
            return Verdict(True, run.accepted, counted, run.uncertain, waited)
        if waited >= timeout_s:
            return Verdict(False, run.accepted, counted, run.uncertain, waited)
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", type=Path, help="JSON summary written by load.js or batch.js")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the worker (60)")
    args = parser.parse_args(argv)
    verdict = wait_until_counted(load_run(args.summary), args.timeout)
    print(verdict.describe())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
