#!/usr/bin/env python3
"""FlagMeter's benchmark: a calibration loop, the framework floor, then fixed steps of load against a
local stack, one table.

    .venv/bin/python bench/run.py                 # the full plan, about 5 minutes, never more than 10
    .venv/bin/python bench/run.py --quick         # 5-second steps, to check the harness itself
    .venv/bin/python bench/run.py --profile mix-1500,batch-182    # also py-spy those steps
    .venv/bin/python bench/run.py --only warm-up,mix-1500 --profile mix-1500    # just those steps
    .venv/bin/python bench/run.py --only quota-1000 --step-seconds 10         # quota check + reserve only

The load comes from wrk with bench/load.lua (bench/generator.py): a constant arrival rate at a small
fraction of k6's CPU per request. For each step it reports offered and achieved rate, latency, errors,
dropped send times, events per second durably counted (checked exactly against /v1/usage), the
ingest-to-usage lag of a probe tenant, peak RSS and PSS of the API (supervisor and processes) and the
worker, and the CPU time of every process from /proc: the service's (API, worker, PostgreSQL, Redis)
per request and per event, beside the generator's own. Results go to bench/results/<UTC time>.json;
logs and py-spy profiles to .run/bench-<UTC time>/.
Everything listens on 127.0.0.1 only. Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # import bench.* and loadtest.* as packages, never bench/ modules as top-level ones

from bench import generator, pyspy  # noqa: E402
from bench.calibrate import calibrate, describe  # noqa: E402
from bench.lag import LagProbe, create_tenant  # noqa: E402
from bench.procs import ResourceSampler  # noqa: E402
from bench.stack import DATABASE_LOCALE, production_postgres_settings, running_stack  # noqa: E402

from flagmeter.localstack import free_port, wait_port  # noqa: E402
from loadtest import verify  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BUDGET_S = 570  # the whole run, stack start to teardown, stays under 10 minutes
BATCH = 550  # events per batch request
MB = 1024 * 1024
SERVICE_ROLES = ("api", "worker", "postgres", "redis")
TENANTS_PER_STEP = 3

# requests/s of the 80/20 mix: 1,500 is the CPU step, 2,500 the capacity step
MIX_RATES = (500, 1500, 2500, 3000)
# requests/s of 550 events: ~22k, ~83k and ~100k events/s
BATCH_RATES = (40, 150, 182)
FLOOR_RATE = 3000
FLOOR_MODES = ("server", "app", "middleware")  # see bench/floor.py
DRAIN_TIMEOUT_S = 30  # a step whose events are not all counted by then saturated the worker

# Issue 15's targets; reported against, never asserted.
TARGET_CPU_RPS, TARGET_SERVICE_US_PER_REQUEST = 1500, 490.0
TARGET_MIX_RPS, TARGET_MIX_P99_MS, TARGET_ERROR_RATE = 2500, 50.0, 0.001
TARGET_BATCH_EPS, TARGET_LAG_P99_MS, TARGET_SERVICE_US_PER_EVENT = 100_000, 2000.0, 14.0
TARGET_PSS_MB = 150.0
# Issue 12: quota checks and reservations, p99 <= 5 ms at 1,000 requests/s (half each).
QUOTA_STEP, QUOTA_RATE, TARGET_QUOTA_P99_MS = "quota-1000", 1000, 5.0
QUOTA_CONNECTIONS = 50  # per wrk process (one for checks, one for reservations)


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # "mix" (80 % single-event POST, 20 % usage read) or "batch" (BATCH events per request)
    rate: int  # requests per second offered
    api_processes: int
    seconds: int
    connections: int
    reported: bool = True  # False for the warm-up
    ids: str = "sequential"  # a batch's event ids (load.lua's IDS); the targets are judged on sequential


def plan(step_s: int, processes: int) -> list[Step]:
    """Single-event steps first; batch steps last and rising, since an overloaded one leaves a backlog."""
    warmup = Step("warm-up", "mix", 500, processes, max(5, step_s // 2), 50, reported=False)
    mix = [Step(f"mix-{rate}", "mix", rate, processes, step_s, 200) for rate in MIX_RATES]
    batch = [Step(f"batch-{rate}", "batch", rate, processes, step_s, 64) for rate in BATCH_RATES]
    # The top rate again with random ids, as many clients send them: what the ledger's B-tree and the
    # WAL's full-page images cost when new keys do not land side by side (reported beside the targets).
    top = BATCH_RATES[-1]
    random_ids = Step(f"batch-{top}-random", "batch", top, processes, step_s, 64, ids="random")
    return [warmup, *mix, *batch, random_ids]


def measure_floor(seconds: int, rate: int, mode: str) -> dict[str, Any]:
    """bench/floor.py (aiohttp answering 202, nothing else) under wrk: the least a request can cost here."""
    port = free_port()
    app = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor.py"), str(port), mode])
    try:
        wait_port(port, 30, "bench/floor.py")
        with ResourceSampler({"floor": app.pid}) as sampler:
            load = generator.run(
                generator.Load("post", rate, seconds, 200), f"http://127.0.0.1:{port}", [], "floor"
            )
    finally:
        app.terminate()
        app.wait(10)
    requests = load.completed or 1
    return {
        "mode": mode,
        "offered_rps": rate,
        "achieved_rps": _round(load.achieved_rps),
        "latency_ms": load.latency_ms(),
        "dropped_iterations": int(load.stats["dropped"]),
        "error_rate": _round(load.error_rate, 5),  # not 202: the floor itself is broken
        "server_cpu_us_per_request": _round(1e6 * sampler.usage["floor"].cpu_seconds / requests),
        "generator_cpu_us_per_request": _round(1e6 * load.cpu_s / requests),
        "machine_cpu_s": _round(sampler.machine_busy_s, 2),
    }


def measure_quota(stack: Any, seconds: int, rate: int, stamp: str) -> dict[str, Any]:
    """Quota checks and reservations (issue 12), half the rate each, from two wrk processes at once
    (bench/load.lua's check and reserve): the p99 of each on its own, and what the service's processes
    and the generator spent per request."""
    speed = calibrate(5_000, 3)
    tenant = f"bench-quota-{os.urandom(4).hex()}"
    tenants = [verify.Tenant(tenant, create_tenant(stack.api_url, stack.admin_token, tenant), verify.ZERO)]
    loads = [generator.Load(kind, rate // 2, seconds, QUOTA_CONNECTIONS) for kind in ("check", "reserve")]
    with ResourceSampler(stack.roles(), stack.cgroups()) as sampler:
        own_cpu = time.process_time()
        check, reserve = generator.run_together(loads, stack.api_url, tenants, f"{stamp.lower()}-quota")
        own_cpu = time.process_time() - own_cpu
    completed = check.completed + reserve.completed
    cpu_s = cpu_breakdown(sampler, check.cpu_s, own_cpu)  # both wrk processes' CPU: see run_together
    result: dict[str, Any] = {
        "step": QUOTA_STEP,
        "offered_rps": rate,
        "seconds": seconds,
        "calibration_us": speed["min_us"],
        "connections": QUOTA_CONNECTIONS,
        "check_latency_ms": check.latency_ms(),
        "reserve_latency_ms": reserve.latency_ms(),
        "achieved_rps": _round(completed / seconds),
        # a check answers 200, a reservation 201: anything else (a 402, a 429) is an error here
        "error_rate": _round(
            (check.failed + reserve.failed + int(check.stats["created"]) + int(reserve.stats["reads_ok"]))
            / max(int(check.stats["sent"]) + int(reserve.stats["sent"]), 1),
            5,
        ),
        "dropped_iterations": int(check.stats["dropped"]) + int(reserve.stats["dropped"]),
        "generator": {"check": check.stats, "reserve": reserve.stats},
        "cpu_s": cpu_s,
        "cpu_us_per_request": per_unit(cpu_s, completed),
    }
    p99s = [result[f"{name}_latency_ms"]["p99"] for name in ("check", "reserve")]
    # wrk's p99 of no answers, or of fast errors, is no result: every request must have been answered
    answered = check.completed > 0 and reserve.completed > 0 and result["error_rate"] == 0
    result["p99_within_target"] = answered and all(p <= TARGET_QUOTA_P99_MS for p in p99s)
    return result


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def cpu_breakdown(sampler: ResourceSampler, generator_s: float, harness_s: float) -> dict[str, float | None]:
    """CPU seconds per role, the service's sum, the generator's, and everything else on the machine."""
    roles = {role: usage.cpu_seconds for role, usage in sampler.usage.items()}
    service = sum(roles.get(role, 0.0) for role in SERVICE_ROLES)
    other = sampler.machine_busy_s - generator_s - harness_s - sum(roles.values())
    seconds = roles | {
        "service": service, "generator": generator_s, "harness": harness_s, "other": other,
        "machine": sampler.machine_busy_s,
    }  # fmt: skip
    return {name: _round(value, 2) for name, value in seconds.items()}


def _peaks(by_role: dict[str, int], service: int | None) -> dict[str, float | None]:
    """Peak bytes per role and of API + worker at one instant, in MB."""
    return {role: _round(size / MB) for role, size in by_role.items()} | {
        "api_plus_worker": None if service is None else _round(service / MB)
    }


def per_unit(cpu_s: dict[str, float | None], units: int, digits: int = 1) -> dict[str, float | None]:
    """Microseconds of CPU per request (or event) of the service's roles, their sum and the generator."""
    names = (*SERVICE_ROLES, "service", "generator")
    return {n: _round(1e6 * (cpu_s.get(n) or 0.0) / units, digits) if units else None for n in names}


def worker_batches(stack: Any) -> tuple[float, float] | None:
    """(transactions, events in them) the worker has counted since it started, from its /metrics
    (flagmeter_worker_batch_size); None for a stack whose worker's metrics are not published here."""
    url = getattr(stack, "worker_metrics_url", "")
    if not url:
        return None
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    sums = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "flagmeter_worker_batch_size"
        for sample in family.samples
    }
    return sums["flagmeter_worker_batch_size_count"], sums["flagmeter_worker_batch_size_sum"]


def transactions(before: tuple[float, float] | None, after: tuple[float, float] | None) -> dict[str, Any]:
    """The worker's transactions over a step and the events each held on average (per_transaction):
    what the per-transaction cost is spread over."""
    if before is None or after is None:
        return {"count": None, "events_per_transaction": None}
    count, events = after[0] - before[0], after[1] - before[1]
    return {"count": int(count), "events_per_transaction": _round(events / count) if count else None}


def fresh_tenants(stack: Any, step: str, stamp: str) -> list[verify.Tenant]:
    ids = [f"bench-{stamp.lower()}-{step}-{i}" for i in range(TENANTS_PER_STEP)]
    return [verify.Tenant(t, create_tenant(stack.api_url, stack.admin_token, t), verify.ZERO) for t in ids]


def measure_step(
    step: Step, stack: Any, probe_tenant: tuple[str, str], profile_dir: Path | None, stamp: str
) -> dict[str, Any]:
    speed = calibrate(5_000, 3)  # ~0.3 s: how fast the VM ran just before this step
    probe = LagProbe(stack.api_url, *probe_tenant)
    tenants = fresh_tenants(stack, step.name, stamp)
    recordings = []
    load = generator.Load(step.kind, step.rate, step.seconds, step.connections, batch=BATCH, ids=step.ids)
    batches_before = worker_batches(stack)
    with ResourceSampler(stack.roles(), stack.cgroups()) as sampler:
        if profile_dir is not None:
            for role in ("api", "worker"):
                out = profile_dir / f"{step.name}-{role}.txt"
                recordings.append(pyspy.record(role, stack.roles()[role], step.seconds, out))
        probe.start()
        own_cpu = time.process_time()
        result = generator.run(load, stack.api_url, tenants, f"{stamp.lower()}-{step.name}")
        wrk_done = time.monotonic()
        run = verify.Run(stack.api_url, tenants, result.accepted(), result.uncertain())
        verdict = verify.wait_until_counted(run, timeout_s=DRAIN_TIMEOUT_S)
        drain_s = time.monotonic() - wrk_done - generator.GRACE_S
        probe.stop()
        own_cpu = time.process_time() - own_cpu
        for recording in recordings:
            recording.finish(30)
    batches = transactions(batches_before, worker_batches(stack))
    accepted = verdict.accepted.events
    usage = sampler.usage
    cpu_s = cpu_breakdown(sampler, result.cpu_s, own_cpu)
    return {
        "step": step.name,
        "kind": step.kind,
        "ids": step.ids,
        "api_processes": step.api_processes,
        "seconds": step.seconds,
        "calibration_us": speed["min_us"],
        "connections": step.connections,
        "offered_rps": step.rate,
        "achieved_rps": _round(result.achieved_rps),
        "offered_events_per_s": step.rate * (BATCH if step.kind == "batch" else 0.8),
        "accepted_events_per_s": _round(accepted / step.seconds),
        "latency_ms": result.latency_ms(),
        "error_rate": _round(result.error_rate, 5),
        "dropped_iterations": int(result.stats["dropped"]),
        "generator": result.stats,
        "events_accepted": accepted,
        "all_counted": verdict.ok,
        "count_check": verdict.describe(),
        # from the end of the paced window (wrk's grace included) to the last event counted
        "drain_s": _round(max(drain_s, 0.0), 2),
        # Counted by the end of the drain over the step plus the drain: the worker's sustained rate.
        "counted_events_per_s": _round(verdict.counted.events / (step.seconds + max(drain_s, 0.0))),
        "lag": probe.summary(),
        "transactions": batches,
        "peak_rss_mb": _peaks(
            {r: u.peak_rss_bytes for r, u in usage.items()}, sampler.peak_service_rss_bytes
        ),
        "peak_pss_mb": _peaks(
            {r: u.peak_pss_bytes for r, u in usage.items()}, sampler.peak_service_pss_bytes
        ),
        # only roles with a cgroup of their own (the compose stack's containers); None for local processes
        "peak_cgroup_mb": _peaks(
            {r: usage[r].peak_cgroup_bytes for r in sampler.cgroups},
            sampler.peak_service_cgroup_bytes if sampler.cgroups else None,
        ),
        "peak_working_set_mb": _peaks(
            {r: usage[r].peak_working_set_bytes for r in sampler.cgroups},
            sampler.peak_service_working_set_bytes if sampler.cgroups else None,
        ),
        "cpu_s": cpu_s,
        "cpu_us_per_request": per_unit(cpu_s, result.completed),
        # per event counted by the end of the drain: a step that outran the worker did only their work
        "cpu_us_per_event": per_unit(cpu_s, min(accepted, verdict.counted.events), 2),
        "cpu_s_by_process": sampler.processes(),
        "profiles": [str(r.output.relative_to(ROOT)) for r in recordings],
        "load_average_after": os.getloadavg()[0],
    }


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "?"
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    wrk_version = subprocess.run([generator.wrk_binary(), "-v"], capture_output=True, text=True, check=False)
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
        "generator": (wrk_version.stdout or wrk_version.stderr).splitlines()[0],
        "commit": commit.stdout.strip(),
        "load_average_at_start": os.getloadavg(),
        "note": "load generator (wrk), API, worker, PostgreSQL and Redis share these cores",
    }


COLUMNS = (
    ("step", "{step}", 10),
    ("offered/s", "{offered_rps}", 9),
    ("achieved/s", "{achieved_rps}", 10),
    ("p50 ms", "{latency_ms[p50]}", 7),
    ("p99 ms", "{latency_ms[p99]}", 7),
    ("err %", "{error_pct}", 6),
    ("dropped", "{dropped_iterations}", 7),
    ("counted ev/s", "{counted_events_per_s}", 12),
    ("all counted", "{all_counted}", 11),
    ("drain s", "{drain_s}", 7),
    ("lag p99 ms", "{lag[p99_ms]}", 10),
    ("PSS api+wkr MB", "{peak_pss_mb[api_plus_worker]}", 14),
    ("RSS api+wkr MB", "{peak_rss_mb[api_plus_worker]}", 14),
    ("cgroup api+wkr MB", "{peak_cgroup_mb[api_plus_worker]}", 17),
    ("wset api+wkr MB", "{peak_working_set_mb[api_plus_worker]}", 15),
)
# CPU per request (mix) or per event (batch): the service's roles, their sum, and the generator's
CPU_COLUMNS = (
    ("step", "{step}", 10),
    ("per", "{unit}", 7),
    ("api", "{cpu[api]}", 7),
    ("worker", "{cpu[worker]}", 7),
    ("postgres", "{cpu[postgres]}", 8),
    ("redis", "{cpu[redis]}", 7),
    ("service", "{cpu[service]}", 8),
    ("generator", "{cpu[generator]}", 9),
    ("other cpu s", "{cpu_s[other]}", 11),
    ("calib us", "{calibration_us}", 8),
    ("ev/txn", "{transactions[events_per_transaction]}", 7),
)


def _rows(columns: tuple[tuple[str, str, int], ...], rows: list[dict[str, Any]]) -> str:
    lines = ["  ".join(title.rjust(width) for title, _, width in columns)]
    lines += ["  ".join(fmt.format(**row).rjust(width) for _, fmt, width in columns) for row in rows]
    return "\n".join(lines)


def table(steps: list[dict[str, Any]]) -> str:
    rows = [step | {"error_pct": round(100 * step["error_rate"], 3)} for step in steps]
    cpu_rows = [
        step | {"unit": "req us", "cpu": step["cpu_us_per_request"]}
        if step["kind"] == "mix"
        else step | {"unit": "event us", "cpu": step["cpu_us_per_event"]}
        for step in steps
    ]
    return _rows(COLUMNS, rows) + "\n\nCPU from /proc over the step\n" + _rows(CPU_COLUMNS, cpu_rows)


def against_targets(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Which steps meet issue 15's targets (the best step of each kind is what counts). Batches' rate, lag
    and CPU are judged with the ids the targets were set with (sequential); the random-id step is
    reported beside them, and its memory counts like any step's."""
    mix = [s for s in steps if s["kind"] == "mix"]
    batches = [s for s in steps if s["kind"] == "batch" and s["ids"] == "sequential"]
    at_100k = [
        s for s in steps if s["kind"] == "batch" and s["offered_events_per_s"] >= 0.99 * TARGET_BATCH_EPS
    ]
    cpu_steps = {
        s["step"]: s["cpu_us_per_request"]["service"] for s in mix if s["offered_rps"] == TARGET_CPU_RPS
    }
    capacity_ok = [
        s for s in mix
        if s["achieved_rps"] >= TARGET_MIX_RPS * 0.99 and (s["latency_ms"]["p99"] or 1e9) <= TARGET_MIX_P99_MS
        and s["error_rate"] < TARGET_ERROR_RATE and s["dropped_iterations"] == 0 and s["all_counted"]
    ]  # fmt: skip
    batch_ok = [
        s for s in batches
        if (s["counted_events_per_s"] or 0) >= TARGET_BATCH_EPS
        and (s["lag"]["p99_ms"] or 1e9) <= TARGET_LAG_P99_MS and s["all_counted"]
    ]  # fmt: skip
    batch_cpu = {s["step"]: s["cpu_us_per_event"]["service"] for s in at_100k if s["ids"] == "sequential"}
    # memory counts at the target rates, met or not, whatever the ids: the mix from the CPU step up,
    # batches from ~100k/s
    at_target = [s for s in mix if s["offered_rps"] >= TARGET_CPU_RPS] + at_100k
    return {
        "service_us_per_request_at_1500": cpu_steps,
        "service_490us_per_request_at_1500": bool(cpu_steps)
        and all((v or 1e9) <= TARGET_SERVICE_US_PER_REQUEST for v in cpu_steps.values()),
        "mix_2500_rps_p99_50ms": [s["step"] for s in capacity_ok],
        "batch_100k_counted_lag_2s": [s["step"] for s in batch_ok],
        "service_us_per_event_at_100k": batch_cpu,
        "service_14us_per_event_at_100k": bool(batch_cpu)
        and all((v or 1e9) <= TARGET_SERVICE_US_PER_EVENT for v in batch_cpu.values()),
        "pss_150mb_at_target_steps": {s["step"]: s["peak_pss_mb"]["api_plus_worker"] for s in at_target},
        "pss_150mb_met": bool(at_target)
        and all(s["peak_pss_mb"]["api_plus_worker"] <= TARGET_PSS_MB for s in at_target),
        # only the compose stack (--compose) gives each role a cgroup of its own
        "cgroup_150mb_at_target_steps": {
            s["step"]: s["peak_cgroup_mb"]["api_plus_worker"]
            for s in at_target
            if s["peak_cgroup_mb"]["api_plus_worker"] is not None
        },
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
    parser.add_argument("--no-floor", action="store_true", help="skip the aiohttp floors (saves ~40 s)")
    parser.add_argument(
        "--compose", action="store_true", help="the service in the production compose stack (containers)"
    )
    parser.add_argument(
        "--locale",
        default=DATABASE_LOCALE,
        help="the local cluster's locale (default: %(default)s, the postgres image's; not with --compose)",
    )
    parser.add_argument(
        "--cold-wal",
        action="store_true",
        help="leave the new cluster's WAL as it is (every segment written full of zeros in the steps)",
    )
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
    calibration = {"before": calibrate()}
    print(f"[bench] {describe(calibration['before'])}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    if args.only and not chosen:
        steps = []  # --only quota-1000
    floors = []
    if not args.no_floor:
        for mode in FLOOR_MODES:
            print(f"[bench] floor: bench/floor.py {mode} at {FLOOR_RATE}/s", file=sys.stderr)
            floors.append(measure_floor(5 if args.quick else 10, FLOOR_RATE, mode))
    quota: dict[str, Any] | None = None
    run_dir = ROOT / ".run" / f"bench-{stamp}"
    if args.compose:
        from bench.compose import running_compose_stack as deployed
    else:
        deployed = partial(running_stack, locale=args.locale)
    with deployed(run_dir, args.processes) as stack:
        database_locale = stack.database_collation()
        wal_segments = None if args.cold_wal else stack.warm_wal()
        if wal_segments is not None:
            print(f"[bench] WAL: {wal_segments} segments ready for reuse", file=sys.stderr)
        probe_tenant = f"bench-probe-{stamp.lower()}"
        probe_key = create_tenant(stack.api_url, stack.admin_token, probe_tenant)
        quota_s = 5 if args.quick else args.step_seconds

        def quota_step() -> dict[str, Any] | None:
            if time.monotonic() - started + quota_s + 60 > BUDGET_S:
                skipped.append({"step": QUOTA_STEP, "reason": "would overrun the 10-minute budget"})
                return None
            if stack.api_processes != args.processes:
                stack.start_api(args.processes)
            print(f"[bench] {QUOTA_STEP}: check + reserve {QUOTA_RATE}/s x {quota_s}s", file=sys.stderr)
            return measure_quota(stack, quota_s, QUOTA_RATE, stamp)

        for step in steps:
            if run_quota and step.kind == "batch":
                # Before the batches: what they leave PostgreSQL to do after their last event is
                # counted (the ledger's vacuum, a checkpoint) would be charged to the checks.
                quota, run_quota = quota_step(), False
            if time.monotonic() - started + step.seconds + 60 > BUDGET_S:
                skipped.append({"step": step.name, "reason": "would overrun the 10-minute budget"})
                continue
            if step.kind == "batch" and any(r["kind"] == "batch" and not r["all_counted"] for r in results):
                skipped.append({"step": step.name, "reason": "a lower batch rate already outran the worker"})
                continue
            if step.api_processes != stack.api_processes:
                stack.start_api(step.api_processes)
            print(f"[bench] {step.name}: {step.kind} {step.rate}/s x {step.seconds}s", file=sys.stderr)
            profile_dir = run_dir / "profiles" if step.name in profiled else None
            if profile_dir:
                profile_dir.mkdir(exist_ok=True)
            result = measure_step(step, stack, (probe_tenant, probe_key), profile_dir, stamp)
            if step.reported:
                results.append(result)
        if run_quota:  # no batch step ran after the single-event ones
            quota = quota_step()
    calibration["after"] = calibrate()
    report = {
        "started_at": stamp,
        "duration_s": round(time.monotonic() - started, 1),
        "calibration": calibration,
        "machine": machine(),
        "deployment": "compose/docker-compose.yml" if args.compose else "local processes (bench/stack.py)",
        "database_locale": database_locale,
        "database_settings": production_postgres_settings(),
        # segments in pg_wal before the first step (stack.WARM_WAL_SQL); null: --cold-wal
        "wal_segments_ready": wal_segments,
        "plan": [asdict(step) for step in steps],
        "floor": floors,
        "skipped": skipped,
        "steps": results,
        "quota": quota,
        "targets": against_targets(results),
    }
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{describe(calibration['before'])}; after the run: {calibration['after']['min_us']} us")
    for floor in floors:
        print(
            f"floor {floor['mode']:>10} (aiohttp 202, nothing else): {floor['achieved_rps']}/s of"
            f" {floor['offered_rps']}/s, p99 {floor['latency_ms']['p99']} ms, errors {floor['error_rate']},"
            f" {floor['server_cpu_us_per_request']} us server CPU and"
            f" {floor['generator_cpu_us_per_request']} us generator CPU per request"
        )
    print(table(results))
    if quota is not None:
        per = quota["cpu_us_per_request"]
        print(
            f"{QUOTA_STEP}: {quota['achieved_rps']}/s of {quota['offered_rps']}/s, check p99"
            f" {quota['check_latency_ms']['p99']} ms, reserve p99 {quota['reserve_latency_ms']['p99']} ms"
            f" (target <= {TARGET_QUOTA_P99_MS} ms), errors {quota['error_rate']}, dropped"
            f" {quota['dropped_iterations']}; CPU per request: service {per['service']} us (API {per['api']},"
            f" Redis {per['redis']}, PostgreSQL {per['postgres']}), generator {per['generator']} us"
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
