#!/usr/bin/env python3
"""FlagMeter's benchmark: a warm-up, then fixed steps of k6 load against a local stack, one table.

    .venv/bin/python bench/run.py                 # the full plan, about 6 minutes, never more than 10
    .venv/bin/python bench/run.py --quick         # 5-second steps, to check the harness itself
    .venv/bin/python bench/run.py --profile mix-500,batch-20    # also py-spy those steps
    .venv/bin/python bench/run.py --only warm-up,mix-500 --profile mix-500    # just those steps
    .venv/bin/python bench/run.py --only quota-1000 --step-seconds 10         # quota check + reserve only

For each step it reports offered and achieved rate, p50/p95/p99 latency, error rate, events per second
durably counted (accepted events over the step plus the time the worker needed to count them all, checked
exactly against /v1/usage), ingest-to-usage lag p99 from a probe tenant, peak RSS of the API processes
(summed) and the worker, and CPU time per event. Results go to bench/results/<UTC time>.json; logs and
py-spy profiles to .run/bench-<UTC time>/.
Everything listens on 127.0.0.1 only. Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # import bench.* and loadtest.* as packages, never bench/ modules as top-level ones

from bench import pyspy  # noqa: E402
from bench.lag import LagProbe, create_tenant  # noqa: E402
from bench.procs import ResourceSampler  # noqa: E402
from bench.stack import running_stack, wait_port  # noqa: E402
from loadtest.run import K6Run, k6_binary, run_script  # noqa: E402

from flagmeter.localstack import free_port  # noqa: E402
from loadtest import verify  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BUDGET_S = 570  # the whole run, stack start to teardown, stays under 10 minutes
MEAN_BATCH = 550  # batch.js draws 100..1000 events per request
MB = 1024 * 1024

MIX_RATES = (250, 500, 1000, 2000, 3000, 4000)  # requests/s; 3000 is the target
# requests/s of ~550 events: ~5k to ~66k events/s; 100 (~55k events/s) is just past the target
BATCH_RATES = (10, 20, 40, 100, 120)
SCALE_RATE = 3000
FLOOR_RATE = 3000
DRAIN_TIMEOUT_S = 30  # a step whose events are not all counted by then saturated the worker

# Issue 6's targets on this 2-core machine; reported against, never asserted.
TARGET_MIX_RPS, TARGET_MIX_P99_MS, TARGET_ERROR_RATE = 3000, 50.0, 0.001
TARGET_BATCH_EPS, TARGET_LAG_P99_MS, TARGET_RSS_MB = 50_000, 2000.0, 150.0
# Issue 12: quota checks and reservations, p99 <= 5 ms at 1,000 requests/s (half each).
QUOTA_STEP, QUOTA_RATE, TARGET_QUOTA_P99_MS = "quota-1000", 1000, 5.0


@dataclass(frozen=True)
class Step:
    name: str
    script: str  # "load" (80/20 single-event mix) or "batch" (100-1000 events per request)
    rate: int  # requests per second offered
    api_processes: int
    seconds: int
    vus: int
    max_vus: int
    reported: bool = True  # False for the warm-up


def plan(step_s: int, processes: int) -> list[Step]:
    """Single-event steps first; batch steps last and rising, since an overloaded one leaves a backlog."""
    warmup = Step("warm-up", "load", 300, processes, max(5, step_s // 2), 50, 200, reported=False)
    mix = [Step(f"mix-{rate}", "load", rate, processes, step_s, 100, 300) for rate in MIX_RATES]
    # Offered well above capacity, so the achieved rate is what N processes can serve.
    scaling = [Step(f"scale-{n}proc", "load", SCALE_RATE, n, step_s, 100, 200) for n in (1, processes)]
    batch = [Step(f"batch-{rate}", "batch", rate, processes, step_s, 30, 150) for rate in BATCH_RATES]
    return [warmup, *mix, *scaling, *batch]


def k6_with_cpu(
    script: str | Path, settings: dict[str, str], summary_dir: Path, seconds: int
) -> tuple[K6Run, float]:
    """The k6 run and the CPU seconds k6 itself used (it shares the cores with the service)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = run_script(script, settings, summary_dir, timeout_s=seconds + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return run, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run_k6(step: Step, api_url: str, admin_token: str, summary_dir: Path) -> tuple[K6Run, float]:
    settings = {
        "BASE_URL": api_url,
        "ADMIN_TOKEN": admin_token,
        "RATE": str(step.rate),
        "DURATION": f"{step.seconds}s",
        "VUS": str(step.vus),
        "MAX_VUS": str(step.max_vus),
    }
    return k6_with_cpu(step.script, settings, summary_dir, step.seconds)


def measure_floor(seconds: int, rate: int) -> dict[str, Any]:
    """bench/floor.py (aiohttp answering 202, nothing else) under k6: the least a request can cost here."""
    port = free_port()
    app = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor.py"), str(port)])
    try:
        wait_port(port, 30)
        with tempfile.TemporaryDirectory() as tmp, ResourceSampler({"floor": app.pid}) as sampler:
            settings = {"BASE_URL": f"http://127.0.0.1:{port}", "RATE": str(rate), "DURATION": f"{seconds}s"}
            k6, k6_cpu_s = k6_with_cpu(ROOT / "bench" / "floor.js", settings, Path(tmp), seconds)
            summary = json.loads(k6.summary_path.read_text())
    finally:
        app.terminate()
        app.wait(10)
    requests = _values(summary, "http_reqs").get("count", 0) or 1
    latency = _values(summary, "http_req_duration")
    return {
        "offered_rps": rate,
        "achieved_rps": _round(requests / seconds),
        "latency_ms": {"p50": _round(latency.get("med"), 2), "p99": _round(latency.get("p(99)"), 2)},
        "dropped_iterations": int(_values(summary, "dropped_iterations").get("count", 0)),
        "server_cpu_us_per_request": _round(1e6 * sampler.usage["floor"].cpu_seconds / requests),
        "k6_cpu_us_per_request": _round(1e6 * k6_cpu_s / requests),
        "machine_cpu_s": _round(sampler.machine_busy_s, 2),
    }


def measure_quota(stack: Any, seconds: int, rate: int, summary_dir: Path) -> dict[str, Any]:
    """bench/quota.js against the stack: p99 of check and of POST /v1/reservations, each on its own."""
    tenant = f"bench-quota-{os.urandom(4).hex()}"
    key = create_tenant(stack.api_url, stack.admin_token, tenant)
    settings = {
        "BASE_URL": stack.api_url, "KEY": key, "TENANT": tenant, "RATE": str(rate), "DURATION": f"{seconds}s",
    }  # fmt: skip
    k6, _ = k6_with_cpu(ROOT / "bench" / "quota.js", settings, summary_dir, seconds)
    summary = json.loads(k6.summary_path.read_text())
    result: dict[str, Any] = {"step": QUOTA_STEP, "offered_rps": rate, "seconds": seconds}
    for name in ("check", "reserve"):
        latency = _values(summary, f"http_req_duration{{name:{name}}}")
        result[f"{name}_latency_ms"] = {
            k: _round(latency.get(s), 2) for k, s in (("p50", "med"), ("p95", "p(95)"), ("p99", "p(99)"))
        }
    result["achieved_rps"] = _round(_values(summary, "iterations").get("count", 0) / seconds)
    result["error_rate"] = _round(_values(summary, "http_req_failed").get("rate", 0.0), 5)
    result["dropped_iterations"] = int(_values(summary, "dropped_iterations").get("count", 0))
    p99s = [result[f"{n}_latency_ms"]["p99"] for n in ("check", "reserve")]
    result["p99_within_target"] = all(p is not None and p <= TARGET_QUOTA_P99_MS for p in p99s)
    return result


def _values(summary: dict[str, Any], name: str) -> dict[str, float]:
    metric = summary["metrics"].get(name)
    return dict(metric["values"]) if metric else {}


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def cpu_breakdown(sampler: ResourceSampler, k6_s: float, harness_s: float) -> dict[str, float | None]:
    """CPU seconds per role, of the load generator, and of everything else that ran on the machine."""
    roles = {role: usage.cpu_seconds for role, usage in sampler.usage.items()}
    other = sampler.machine_busy_s - k6_s - harness_s - sum(roles.values())
    seconds = roles | {"k6": k6_s, "harness": harness_s, "other": other, "machine": sampler.machine_busy_s}
    return {name: _round(value, 2) for name, value in seconds.items()}


def measure_step(
    step: Step, stack: Any, probe_tenant: tuple[str, str], profile_dir: Path | None
) -> dict[str, Any]:
    scenario = "mix" if step.script == "load" else "batch"
    probe = LagProbe(stack.api_url, *probe_tenant)
    recordings = []
    with tempfile.TemporaryDirectory() as tmp, ResourceSampler(stack.roles()) as sampler:
        if profile_dir is not None:
            for role in ("api", "worker"):
                out = profile_dir / f"{step.name}-{role}.txt"
                recordings.append(pyspy.record(role, stack.roles()[role], step.seconds, out))
        probe.start()
        own_cpu = time.process_time()
        k6, k6_cpu_s = run_k6(step, stack.api_url, stack.admin_token, Path(tmp))
        k6_done = time.monotonic()
        verdict = verify.wait_until_counted(verify.load_run(k6.summary_path), timeout_s=DRAIN_TIMEOUT_S)
        drain_s = time.monotonic() - k6_done
        probe.stop()
        own_cpu = time.process_time() - own_cpu
        for recording in recordings:
            recording.finish(30)
        summary = json.loads(k6.summary_path.read_text())
    latency = _values(summary, f"http_req_duration{{scenario:{scenario}}}")
    failed = _values(summary, f"http_req_failed{{scenario:{scenario}}}")
    accepted = verdict.accepted.events
    usage = sampler.usage
    cpu_us = {role: _round(1e6 * usage[role].cpu_seconds / accepted) if accepted else None for role in usage}
    return {
        "step": step.name,
        "script": step.script,
        "api_processes": step.api_processes,
        "seconds": step.seconds,
        "offered_rps": step.rate,
        "achieved_rps": _round(_values(summary, "iterations").get("count", 0) / step.seconds),
        "offered_events_per_s": step.rate * (MEAN_BATCH if step.script == "batch" else 0.8),
        "accepted_events_per_s": _round(accepted / step.seconds),
        "latency_ms": {
            k: _round(latency.get(s), 2) for k, s in (("p50", "med"), ("p95", "p(95)"), ("p99", "p(99)"))
        }
        | {"max": _round(latency.get("max"), 2)},
        "error_rate": _round(failed.get("rate", 0.0), 5),
        "dropped_iterations": int(_values(summary, "dropped_iterations").get("count", 0)),
        "events_accepted": accepted,
        "all_counted": verdict.ok,
        "count_check": verdict.describe(),
        "drain_s": _round(drain_s, 2),
        # Counted by the end of the drain over the step plus the drain: the worker's sustained rate.
        "counted_events_per_s": _round(verdict.counted.events / (step.seconds + drain_s)),
        "lag": probe.summary(),
        "peak_rss_mb": {role: _round(u.peak_rss_bytes / MB) for role, u in usage.items()}
        | {"api_plus_worker": _round(sampler.peak_service_rss_bytes / MB)},
        "peak_pss_mb": {role: _round(u.peak_pss_bytes / MB) for role, u in usage.items()},
        "cpu_s": cpu_breakdown(sampler, k6_cpu_s, own_cpu),
        "cpu_us_per_event": cpu_us,
        "k6_thresholds_ok": k6.thresholds_ok,
        "profiles": [str(r.output.relative_to(ROOT)) for r in recordings],
        "load_average_after": os.getloadavg()[0],
    }


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "?"
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    k6_version = subprocess.run([k6_binary(), "version"], capture_output=True, text=True, check=False).stdout
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gb": round(int(meminfo[1]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.freedesktop_os_release().get("PRETTY_NAME", "?"),
        "python": platform.python_version(),
        "k6": k6_version.strip(),
        "commit": commit.stdout.strip(),
        "load_average_at_start": os.getloadavg(),
        "note": "load generator (k6), API, worker, PostgreSQL and Redis share these cores",
    }


COLUMNS = (
    ("step", "{step}", 12),
    ("procs", "{api_processes}", 5),
    ("offered/s", "{offered_rps}", 9),
    ("achieved/s", "{achieved_rps}", 10),
    ("p50 ms", "{latency_ms[p50]}", 7),
    ("p95 ms", "{latency_ms[p95]}", 7),
    ("p99 ms", "{latency_ms[p99]}", 7),
    ("err %", "{error_pct}", 6),
    ("dropped", "{dropped_iterations}", 7),
    ("counted ev/s", "{counted_events_per_s}", 12),
    ("all counted", "{all_counted}", 11),
    ("lag p99 ms", "{lag[p99_ms]}", 10),
    ("RSS api+wkr MB", "{peak_rss_mb[api_plus_worker]}", 14),
    ("us/event api", "{cpu_us_per_event[api]}", 12),
    ("us/event wkr", "{cpu_us_per_event[worker]}", 12),
)


def table(steps: list[dict[str, Any]]) -> str:
    lines = ["  ".join(title.rjust(width) for title, _, width in COLUMNS)]
    for step in steps:
        values = step | {"error_pct": round(100 * step["error_rate"], 3)}
        lines.append("  ".join(fmt.format(**values).rjust(width) for _, fmt, width in COLUMNS))
    return "\n".join(lines)


def against_targets(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Which steps meet issue 6's targets (the best step of each kind is what counts)."""
    mix_ok = [
        s for s in steps
        if s["script"] == "load" and not s["step"].startswith("scale")
        and s["achieved_rps"] >= TARGET_MIX_RPS and (s["latency_ms"]["p99"] or 1e9) <= TARGET_MIX_P99_MS
        and s["error_rate"] < TARGET_ERROR_RATE and s["dropped_iterations"] == 0 and s["all_counted"]
    ]  # fmt: skip
    batch_ok = [
        s for s in steps
        if s["script"] == "batch" and (s["counted_events_per_s"] or 0) >= TARGET_BATCH_EPS
        and (s["lag"]["p99_ms"] or 1e9) <= TARGET_LAG_P99_MS and s["all_counted"]
    ]  # fmt: skip
    at_target = mix_ok + batch_ok
    scale = {s["api_processes"]: s["achieved_rps"] for s in steps if s["step"].startswith("scale")}
    return {
        "mix_3000_rps_p99_50ms": [s["step"] for s in mix_ok],
        "batch_50k_counted_lag_2s": [s["step"] for s in batch_ok],
        "rss_150mb_at_target_steps": bool(at_target)
        and all(s["peak_rss_mb"]["api_plus_worker"] <= TARGET_RSS_MB for s in at_target),
        "scaling_achieved_rps_by_processes": scale,
        "all_steps_counted_exactly": all(s["all_counted"] for s in steps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s steps: checks the harness, not the service")
    parser.add_argument("--step-seconds", type=int, default=20)
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="API processes (CPU count)"
    )
    parser.add_argument("--profile", default="", help="comma-separated step names to record with py-spy")
    parser.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    parser.add_argument("--output", type=Path, help="result JSON (default bench/results/<UTC time>.json)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = args.output or RESULTS / f"{stamp}.json"
    profiled = {name for name in args.profile.split(",") if name}
    steps = plan(5 if args.quick else args.step_seconds, args.processes)
    chosen = set(args.only.split(",")) if args.only else set()
    run_quota = not chosen or QUOTA_STEP in chosen
    chosen.discard(QUOTA_STEP)
    if chosen:
        unknown = chosen - {step.name for step in steps}
        if unknown:
            parser.error(f"no such step: {', '.join(sorted(unknown))}")
        steps = [step for step in steps if step.name in chosen]
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    if args.only and not chosen:
        steps = []  # --only quota-1000
    print(f"[bench] floor: bench/floor.py at {FLOOR_RATE}/s", file=sys.stderr)
    floor = measure_floor(10 if args.quick else args.step_seconds, FLOOR_RATE)
    quota: dict[str, Any] | None = None
    run_dir = ROOT / ".run" / f"bench-{stamp}"
    with running_stack(run_dir, args.processes) as stack:
        probe_tenant = f"bench-probe-{stamp.lower()}"
        probe_key = create_tenant(stack.api_url, stack.admin_token, probe_tenant)
        for step in steps:
            if time.monotonic() - started + step.seconds + 60 > BUDGET_S:
                skipped.append({"step": step.name, "reason": "would overrun the 10-minute budget"})
                continue
            if step.script == "batch" and any(
                r["script"] == "batch" and not r["all_counted"] for r in results
            ):
                skipped.append({"step": step.name, "reason": "a lower batch rate already outran the worker"})
                continue
            if step.api_processes != stack.api_processes:
                stack.start_api(step.api_processes)
            print(f"[bench] {step.name}: {step.script} {step.rate}/s x {step.seconds}s", file=sys.stderr)
            profile_dir = run_dir / "profiles" if step.name in profiled else None
            if profile_dir:
                profile_dir.mkdir(exist_ok=True)
            result = measure_step(step, stack, (probe_tenant, probe_key), profile_dir)
            if step.reported:
                results.append(result)
        quota_s = 5 if args.quick else args.step_seconds
        if run_quota and time.monotonic() - started + quota_s + 60 <= BUDGET_S:
            if stack.api_processes != args.processes:
                stack.start_api(args.processes)
            print(f"[bench] {QUOTA_STEP}: check + reserve {QUOTA_RATE}/s x {quota_s}s", file=sys.stderr)
            quota = measure_quota(stack, quota_s, QUOTA_RATE, run_dir / "quota")
        elif run_quota:
            skipped.append({"step": QUOTA_STEP, "reason": "would overrun the 10-minute budget"})
    report = {
        "started_at": stamp,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "plan": [asdict(step) for step in steps],
        "floor": floor,
        "skipped": skipped,
        "steps": results,
        "quota": quota,
        "targets": against_targets(results),
    }
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"floor (aiohttp 202, nothing else): {floor['achieved_rps']}/s of {floor['offered_rps']}/s offered, "
        f"p99 {floor['latency_ms']['p99']} ms, {floor['server_cpu_us_per_request']} us server CPU and "
        f"{floor['k6_cpu_us_per_request']} us k6 CPU per request"
    )
    print(table(results))
    if quota is not None:
        print(
            f"{QUOTA_STEP}: {quota['achieved_rps']}/s of {quota['offered_rps']}/s, check p99"
            f" {quota['check_latency_ms']['p99']} ms, reserve p99 {quota['reserve_latency_ms']['p99']} ms"
            f" (target <= {TARGET_QUOTA_P99_MS} ms), errors {quota['error_rate']}"
        )
    for skip in skipped:
        print(f"skipped {skip['step']}: {skip['reason']}")
    print(json.dumps(report["targets"], indent=1))
    for name in sorted(profiled):
        for role in ("api", "worker"):
            path = run_dir / "profiles" / f"{name}-{role}.txt"
            if path.exists():
                spots = pyspy.hotspots(path)
                print(f"\n{name} {role}: {spots.samples} samples; self time:")
                for frame, pct in spots.self_pct:
                    print(f"  {pct:5.1f}%  {frame}")
    print(f"\nwritten {output} in {report['duration_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
