"""The benchmark harness's own measuring: percentiles, process-tree CPU and memory, py-spy hotspots, the
throwaway cluster's settings and its WAL.

bench/run.py's numbers are only as good as these pieces, so they are checked against real processes and
known inputs (the harness itself is run by `make bench`, never by the test suite: it takes minutes).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import generator  # noqa: E402
from bench.lag import GIVE_UP_S, LagProbe, percentile  # noqa: E402
from bench.procs import CGROUP_ROOT, MemoryCgroup, ResourceSampler, process_tree  # noqa: E402
from bench.pyspy import hotspots  # noqa: E402
from bench.run import FLOOR_MODES, against_targets, transactions, worker_batches  # noqa: E402
from bench.stack import DATABASE_LOCALE, production_postgres_settings, sql_value, warm_wal  # noqa: E402

from flagmeter.localstack import LocalStack, free_port  # noqa: E402
from loadtest import verify  # noqa: E402
from stacklib import Stack, wait_until  # noqa: E402

BURN_CPU = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"
HOLD_MEMORY = (
    "import time\nblock = bytearray({size})\nblock[::4096] = b'x' * len(block[::4096])\ntime.sleep(30)\n"
)


def test_percentile_is_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 99) is None


def test_a_lost_probe_counts_in_the_lag_as_long_as_it_was_waited_for() -> None:
    """Probes given up on after GIVE_UP_S are the slowest: leaving them out showed a backlogged step's
    lag p99 as 4.6 s when 4 of its 14 probes had waited over 10 s."""
    probe = LagProbe("http://127.0.0.1:1", "t", "k", lags_s=[0.2] * 10, lost=4)
    summary = probe.summary()
    assert summary["samples"] == 10 and summary["lost"] == 4
    assert summary["p50_ms"] == 200.0
    assert summary["p99_ms"] == summary["max_ms"] == GIVE_UP_S * 1000


def batch_step(name: str, ids: str, *, service_us: float, pss_mb: float) -> dict[str, object]:
    """A batch step's result as bench/run.py writes it, at ~100,000 events/s, all counted in time."""
    return {
        "step": name, "kind": "batch", "ids": ids, "offered_events_per_s": 100_100,
        "counted_events_per_s": 100_100.0, "lag": {"p99_ms": 900.0}, "all_counted": True,
        "cpu_us_per_event": {"service": service_us}, "peak_pss_mb": {"api_plus_worker": pss_mb},
        "peak_cgroup_mb": {"api_plus_worker": None},
    }  # fmt: skip


def test_batch_targets_are_judged_on_sequential_ids_and_memory_on_every_step() -> None:
    """The random-id step is reported beside the rate, lag and CPU targets (set with sequential ids),
    but memory at 100,000 events/s counts whatever the ids."""
    steps = [
        batch_step("batch-182", "sequential", service_us=13.5, pss_mb=149.0),
        batch_step("batch-182-random", "random", service_us=22.0, pss_mb=153.4),
    ]
    verdict = against_targets(steps)
    assert verdict["service_us_per_event_at_100k"] == {"batch-182": 13.5}
    assert verdict["service_14us_per_event_at_100k"] is True
    assert verdict["batch_100k_counted_lag_2s"] == ["batch-182"]
    assert verdict["pss_150mb_at_target_steps"] == {"batch-182": 149.0, "batch-182-random": 153.4}
    assert verdict["pss_150mb_met"] is False


def test_process_tree_follows_grandchildren() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '20'])"],
    )
    try:
        deadline = time.monotonic() + 10
        while len(process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = process_tree(parent.pid)
        assert tree[0] == parent.pid
        assert len(tree) == 2
    finally:
        for pid in process_tree(parent.pid)[::-1]:
            subprocess.run(["kill", str(pid)], check=False)
        parent.wait(10)


def _new_memory_cgroup() -> Path:
    """A fresh memory cgroup of our own, as Docker makes one per container (v1 or v2)."""
    name = f"flagmeter-test-{time.monotonic_ns()}"
    v1 = CGROUP_ROOT / "memory"
    if (v1 / "cgroup.procs").exists():
        path = v1 / name
    elif "memory" in (CGROUP_ROOT / "cgroup.subtree_control").read_text(errors="replace").split():
        path = CGROUP_ROOT / name
    else:
        pytest.skip("no memory cgroup hierarchy this process may create cgroups in")
    path.mkdir()
    return path


def test_sampler_reads_a_containers_memory_from_its_cgroup() -> None:
    size = 64 * 1024 * 1024
    cgroup = _new_memory_cgroup()
    # The holder allocates only once it is in the cgroup: pages are charged where they are first touched.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.readline()\n" + HOLD_MEMORY.format(size=size)],
        stdin=subprocess.PIPE,
    )
    try:
        (cgroup / "cgroup.procs").write_text(str(holder.pid))
        found = MemoryCgroup.of(holder.pid)
        assert found.path == cgroup
        assert holder.stdin is not None
        holder.stdin.write(b"go\n")
        holder.stdin.flush()
        with ResourceSampler({"holder": holder.pid}, {"holder": found}, interval_s=0.05) as sampler:
            wait_until(lambda: found.read()[0] >= size, 20, "the holder's pages charged to its cgroup")
        usage = sampler.usage["holder"]
        assert size <= usage.peak_cgroup_bytes < 2 * size
        assert size <= usage.peak_working_set_bytes <= usage.peak_cgroup_bytes
        assert sampler.peak_service_cgroup_bytes == 0  # only api and worker count as the service
    finally:
        holder.kill()
        holder.wait(10)
        wait_until(lambda: not (cgroup / "cgroup.procs").read_text().strip(), 10, "the cgroup emptied")
        cgroup.rmdir()


def test_sampler_charges_a_roles_cpu_and_peak_memory_to_it() -> None:
    size = 64 * 1024 * 1024
    burner = subprocess.Popen([sys.executable, "-c", BURN_CPU.format(seconds=0.6)])
    holder = subprocess.Popen([sys.executable, "-c", HOLD_MEMORY.format(size=size)])
    try:
        with ResourceSampler({"burner": burner.pid, "holder": holder.pid}, interval_s=0.05) as sampler:
            burner.wait(20)
            time.sleep(0.5)  # the holder has touched its pages by now
        burner_usage, holder_usage = sampler.usage["burner"], sampler.usage["holder"]
        assert 0.4 <= burner_usage.cpu_seconds <= 1.5
        assert holder_usage.cpu_seconds < burner_usage.cpu_seconds
        assert holder_usage.peak_rss_bytes >= size
        assert holder_usage.peak_pss_bytes >= size * 0.9
        assert sampler.machine_busy_s >= burner_usage.cpu_seconds * 0.9
    finally:
        holder.kill()
        holder.wait(10)


def test_hotspots_split_self_and_inclusive_time(tmp_path: Path) -> None:
    collapsed = tmp_path / "api.txt"
    collapsed.write_text(
        "process 11:python;main (app.py:3);handle (app.py:10);parse (json.py:5) 60\n"
        "process 12:python;main (app.py:3);handle (app.py:12);send (net.py:7) 30\n"
        "process 11:python;main (app.py:3) 10\n"
    )

    spots = hotspots(collapsed)

    assert spots.samples == 100
    assert spots.self_pct[:3] == [("parse (json.py)", 60.0), ("send (net.py)", 30.0), ("main (app.py)", 10.0)]
    inclusive = dict(spots.inclusive_pct)
    assert inclusive["main (app.py)"] == 100.0
    assert inclusive["handle (app.py)"] == 90.0  # two lines of one function are one frame
    assert not any(name.startswith("process ") for name in inclusive)


@pytest.mark.parametrize("mode", FLOOR_MODES)
def test_every_floor_answers_202(mode: str) -> None:
    """A floor that answers errors measures nothing (the middleware floor once raised on every request)."""
    port = free_port()
    floor = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor.py"), str(port), mode])
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", data=b"{}", method="POST")
        statuses: list[int] = []

        def answered() -> bool:
            with urllib.request.urlopen(request, timeout=2) as response:
                statuses.append(response.status)
            return True

        wait_until(answered, 30, f"the {mode} floor to answer", ignoring=(OSError,))
        assert statuses == [202]
    finally:
        floor.terminate()
        floor.wait(10)


def batches_sent(ids: str) -> list[list[dict[str, object]]]:
    """The bodies bench/load.lua sends for batches of 30 events with `ids`, as a receiver on 127.0.0.1
    that answers 202 to each got them."""
    bodies: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(202)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        load = generator.Load("batch", rate=20, seconds=1, connections=2, batch=30, ids=ids)
        result = generator.run(load, f"http://127.0.0.1:{server.server_port}", [], "idcheck")
    finally:
        server.shutdown()
        server.server_close()
    assert result.stats["accepted"] == len(bodies) >= 10
    return [json.loads(body) for body in bodies]


def test_sequential_ids_keep_a_requests_events_side_by_side() -> None:
    """`<run>-<thread>-<request>-<index>`: one prefix per request, no id repeated in the run (a repeat
    is counted once, and the bench's count check would fail)."""
    batches = batches_sent("sequential")
    every_id = [str(event["id"]) for batch in batches for event in batch]
    assert len(set(every_id)) == len(every_id)
    for batch in batches:
        assert len(batch) == 30
        assert len({str(event["id"]).rsplit("-", 1)[0] for event in batch}) == 1
        assert [event["tokens"] for event in batch] == [i % 1000 + 1 for i in range(30)]


def test_random_ids_lead_each_event_with_hex_digits_of_its_own() -> None:
    """IDS=random: every id led by 8 hex digits drawn for it, so neither a request's ids nor the run's
    sort side by side, and still no id repeats."""
    batches = batches_sent("random")
    every_id = [str(event["id"]) for batch in batches for event in batch]
    leads = [i.split("-", 1)[0] for i in every_id]
    assert len(set(every_id)) == len(every_id)
    assert all(re.fullmatch(r"[0-9a-f]{8}", lead) for lead in leads)
    # ~600 draws of 31 bits: one repeat has odds of ~1 in 12,000, two almost none; a seed drawn again
    # per request would repeat each lead in every batch
    assert len(set(leads)) >= len(leads) - 1
    for batch in batches:
        assert len(batch) == 30
        assert [event["tokens"] for event in batch] == [i % 1000 + 1 for i in range(30)]
        batch_ids = [str(event["id"]) for event in batch]
        assert sorted(batch_ids) != batch_ids


def test_the_quota_loads_check_and_reserve_as_the_tenant_each_from_its_own_wrk() -> None:
    """bench/run.py's quota step: checks (200) and reservations (201) at once from two wrk processes,
    each request with the tenant's key, none counted as an error, and each load's latencies its own."""
    seen: list[tuple[str, str, str, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.path, self.headers["Authorization"], body))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_GET(self) -> None:
            self._answer(200)

        def do_POST(self) -> None:
            self._answer(201)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Thread(target=server.serve_forever, daemon=True).start()
    tenant = verify.Tenant("acme", "fm_key", verify.ZERO)
    loads = [generator.Load(kind, rate=20, seconds=2, connections=2) for kind in ("check", "reserve")]
    try:
        check, reserve = generator.run_together(
            loads, f"http://127.0.0.1:{server.server_port}", [tenant], "q"
        )
    finally:
        server.shutdown()
        server.server_close()
    assert check.failed == reserve.failed == 0
    assert check.stats["reads_ok"] == check.completed >= 10 and check.stats["created"] == 0
    assert reserve.stats["created"] == reserve.completed >= 10 and reserve.stats["reads_ok"] == 0
    assert check.stats["posts"] == reserve.stats["posts"] == 0  # no events: nothing to count
    assert check.cpu_s == reserve.cpu_s > 0  # the two wrk processes' CPU, together
    checks = {(m, p, a, b) for m, p, a, b in seen if m == "GET"}
    reservations = {(m, p, a, b) for m, p, a, b in seen if m == "POST"}
    assert checks == {("GET", "/v1/usage/acme/check?tokens=10", "Bearer fm_key", b"")}
    assert {(m, p, a) for m, p, a, _ in reservations} == {("POST", "/v1/reservations", "Bearer fm_key")}
    assert {b for *_, b in reservations} == {b'{"tokens":1,"ttl_seconds":1}'}


def test_the_benchs_cluster_has_the_locale_of_the_postgres_image_it_stands_for() -> None:
    dockerfile = (ROOT / "tests" / "images" / "postgres" / "Dockerfile").read_text()
    [lang] = re.findall(r"^ENV .*\bLANG=(\S+)", dockerfile, re.MULTILINE)
    normalised = DATABASE_LOCALE.replace("UTF-8", "utf8")  # as glibc names it (locale -a)
    assert lang == normalised


@pytest.mark.parametrize(("variant", "ids"), [(None, "sequential"), ("no-raw-events", "uuid4")])
def test_counting_bench_runs_and_reports_the_backends_cost(variant: str | None, ids: str) -> None:
    """bench/counting.py (PostgreSQL's share of counting, for A/B of the statement) against the store's
    current signatures: it once went stale for a whole issue, unnoticed, because nothing ran it."""
    command = [sys.executable, str(ROOT / "bench" / "counting.py"), "--batches", "10", "--size", "200"]
    command += ["--ledger", "400", "--ids", ids] + (["--variant", variant] if variant else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert (result["variant"], result["ids"]) == (variant, ids)
    assert result["wal_bytes_per_event"] > 100  # a ledger row, a share of the event log's and the totals'
    stored = result["disk_bytes_per_event"]
    assert stored["ledger"] > 40  # a heap tuple and an index entry of the (id, tenant) key at least
    assert stored["event_log"] > 0
    assert result["collation"] == DATABASE_LOCALE  # the postgres image's, as the bench's own cluster
    assert result["backend_us_per_event"] > 0
    assert result["wall_us_per_event"] >= result["backend_us_per_event"] / 2


def test_the_benchs_cluster_runs_production_s_settings_with_its_wal_ready_for_reuse() -> None:
    """The throwaway cluster takes compose/docker-compose.yml's PostgreSQL settings (a later line of
    postgresql.conf wins: max_wal_size is made small here so the test writes 128 MB of WAL, not 2 GB), and
    warm_wal leaves max_wal_size of segments in pg_wal, as a server that has been running holds them."""
    settings = production_postgres_settings()
    assert {"max_wal_size=2GB", "min_wal_size=1GB", "shared_buffers=96MB"} <= set(settings)
    # as tests/conftest.py's cluster: a directory the postgres user can reach when the tests run as root
    root = Path(tempfile.mkdtemp(prefix="flagmeter-bench-wal-", dir=os.environ.get("FLAGMETER_TEST_DIR")))
    root.chmod(0o755)
    servers = LocalStack(root, settings=[*settings, "max_wal_size=128MB", "min_wal_size=64MB"])
    servers.start_postgres()
    try:
        sql = partial(sql_value, servers.database_url)
        for setting in settings:
            name = setting.split("=", 1)[0]
            source = sql(f"SELECT source FROM pg_settings WHERE name = '{name}'")
            assert source == "configuration file", setting
        assert sql("SHOW shared_buffers") == "96MB"
        fresh = int(sql("SELECT count(*) FROM pg_ls_waldir()"))
        assert warm_wal(sql) >= 128 // 16 > fresh
    finally:
        servers.stop_postgres()
        shutil.rmtree(root, ignore_errors=True)


def test_a_steps_transactions_are_read_off_the_workers_metrics(stack: Stack) -> None:
    """The bench spreads per-transaction costs over what the worker's histogram says it counted."""
    before = worker_batches(stack)
    tenant, key = stack.create_tenant()
    batch = [{"id": f"e-{i}", "feature": "chat", "tokens": 3} for i in range(40)]
    status, body, _ = stack.request("POST", "/v1/events", batch, token=key)
    assert status == 202, body
    stack.wait_used(tenant, 120)
    after = worker_batches(stack)
    assert before is not None and after is not None
    assert after[0] > before[0] and after[1] - before[1] >= 40
    counted = transactions(before, after)
    assert counted["count"] == after[0] - before[0]
    assert counted["events_per_transaction"] == round((after[1] - before[1]) / counted["count"], 1)
    assert worker_batches(object()) is None  # a stack without the worker's metrics: nothing to read
    assert transactions(after, after) == {"count": 0, "events_per_transaction": None}
