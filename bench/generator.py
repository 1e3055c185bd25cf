"""The bench's load generator: wrk (Debian's package) with bench/load.lua, and what it cost.

wrk with a Lua script costs ~80 us of CPU per request here against k6's ~410 us with
loadtest/load.js (see docs/performance.md), so the service, not the generator, fills the cores.
load.lua paces a constant arrival rate and drops a send time it cannot meet, as k6's
constant-arrival-rate executor does; `loadtest/` keeps the k6 scripts for maintainers.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import verify

SCRIPT = Path(__file__).resolve().parent / "load.lua"
MARKER = "FLAGMETER_WRK "
GRACE_S = 2  # wrk runs this much past the paced window, so the last requests are answered, not cut off


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    return found


@dataclass(frozen=True)
class Load:
    kind: str  # mix | batch | post | check | reserve (see load.lua)
    rate: int  # requests per second
    seconds: int  # the paced window
    connections: int
    threads: int = 1
    batch: int = 550
    ids: str = "sequential"  # or "random" (see load.lua's IDS)


@dataclass(frozen=True)
class LoadResult:
    load: Load
    stats: dict[str, Any]  # load.lua's done() line
    cpu_s: float  # the generator's own CPU time (user + system); see run_together

    @property
    def completed(self) -> int:
        return int(self.stats["completed"])

    @property
    def achieved_rps(self) -> float:
        return self.completed / self.load.seconds

    @property
    def failed(self) -> int:
        s = self.stats
        return int(s["refused"] + s["other"] + s["socket_errors"] + s["timeouts"])

    @property
    def error_rate(self) -> float:
        return self.failed / max(int(self.stats["sent"]), 1)

    def latency_ms(self) -> dict[str, float]:
        return {name: round(us / 1000, 2) for name, us in self.stats["latency_us"].items()}

    def accepted(self) -> verify.Counts:
        """What the API answered 202 to (a single event's 202, or a whole batch's: load.lua's
        events are all valid, so a 202 means every event of the request was taken)."""
        n = int(self.stats["accepted"])
        return verify.Counts(n * self.stats["tokens_per_post"], n * self.stats["events_per_post"])

    def uncertain(self) -> verify.Counts:
        """POSTs sent without a 202 seen: refused ones are in here too, so this is only a ceiling."""
        n = int(self.stats["posts"]) - int(self.stats["accepted"])
        return verify.Counts(n * self.stats["tokens_per_post"], n * self.stats["events_per_post"])


def run(load: Load, base_url: str, tenants: list[verify.Tenant], run_id: str) -> LoadResult:
    return run_together([load], base_url, tenants, run_id)[0]


def run_together(
    loads: list[Load], base_url: str, tenants: list[verify.Tenant], run_id: str
) -> list[LoadResult]:
    """Each load from a wrk of its own, all at once (each keeps its own latencies: wrk's are one
    histogram per run). The CPU the wrk processes took cannot be told apart: each result's `cpu_s` is
    theirs together."""
    started: list[subprocess.Popen[str]] = []
    deadline = time.monotonic() + max(load.seconds for load in loads) + 60
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    outputs = []
    try:
        for index, load in enumerate(loads):
            env = {
                **os.environ,
                "KIND": load.kind,
                "RATE": str(load.rate),
                "SECONDS": str(load.seconds),
                "THREADS": str(load.threads),
                "BATCH": str(load.batch),
                "IDS": load.ids,
                "RUN": f"{run_id}-{index}" if len(loads) > 1 else run_id,
                "TENANTS": ",".join(f"{t.id}={t.key}" for t in tenants),
            }
            command = [
                wrk_binary(), f"-t{load.threads}", f"-c{load.connections}", f"-d{load.seconds + GRACE_S}s",
                "--timeout", "10s", "-s", str(SCRIPT), base_url,
            ]  # fmt: skip
            started.append(
                subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        for process in started:
            stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            outputs.append((process.returncode, stdout, stderr))
    finally:
        for process in started:  # on a timeout or an interrupt: no wrk outlives the call
            if process.poll() is None:
                process.kill()
                process.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    results = []
    for load, (returncode, stdout, stderr) in zip(loads, outputs, strict=True):
        line = next((ln for ln in stdout.splitlines() if ln.startswith(MARKER)), None)
        if returncode != 0 or line is None:
            raise RuntimeError(f"wrk exited {returncode}:\n{stdout}\n{stderr[-3000:]}")
        results.append(LoadResult(load, json.loads(line.removeprefix(MARKER)), cpu_s))
    return results
