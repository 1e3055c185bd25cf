"""The `flagmeter` command line against the real database and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import redis

from flagmeter.events import Event
from flagmeter.stream import encode
from stacklib import Process, Stack, wait_until


def flagmeter(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flagmeter.cli", *args],
        env={**stack.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_command_has_help(stack: Stack) -> None:
    for command in ("api", "worker", "migrate", "seed", "tenant", "prune", "dead-letters", "dev"):
        done = flagmeter(stack, command, "--help")
        assert done.returncode == 0 and "usage: flagmeter" in done.stdout


def test_api_refuses_to_start_without_an_admin_token(stack: Stack) -> None:
    env = {k: v for k, v in stack.env.items() if k != "FLAGMETER_ADMIN_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "flagmeter.cli", "api"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "FLAGMETER_ADMIN_TOKEN" in done.stderr


def test_management_commands_without_a_database_url_say_so(stack: Stack, tmp_path: Path) -> None:
    # FLAGMETER_RUN_DIR: no running dev stack to borrow the settings of
    env = {k: v for k, v in stack.env.items() if k != "DATABASE_URL"} | {"FLAGMETER_RUN_DIR": str(tmp_path)}
    for command in (["migrate"], ["tenant", "list"]):
        done = subprocess.run(
            [sys.executable, "-m", "flagmeter.cli", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode != 0 and "missing required environment: DATABASE_URL" in done.stderr, command


def test_tenant_create_list_and_key(stack: Stack) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    created = flagmeter(
        stack, "tenant", "create", "--id", tenant, "--name", "CLI Co", "--quota", "500", "--billing-day", "31"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().rsplit(" ", 1)[-1]
    assert key.startswith("fm_")
    assert stack.request("GET", f"/v1/usage/{tenant}", token=key)[1]["quota"] == 500
    assert f"{tenant}\tCLI Co\tquota=500\tbilling_day=31" in flagmeter(stack, "tenant", "list").stdout
    second = flagmeter(stack, "tenant", "key", "--id", tenant)
    assert second.returncode == 0 and second.stdout.strip().rsplit(" ", 1)[-1].startswith("fm_")
    assert flagmeter(stack, "tenant", "create", "--id", tenant, "--quota", "1").returncode == 1
    assert flagmeter(stack, "tenant", "create", "--id", "Not A Slug", "--quota", "1").returncode == 2
    assert flagmeter(stack, "tenant", "key", "--id", "nobody-here").returncode == 1


def test_seed_creates_three_demo_tenants_and_rotates_their_keys(stack: Stack) -> None:
    first = dict(line.split("\t") for line in flagmeter(stack, "seed").stdout.splitlines())
    second = dict(line.split("\t") for line in flagmeter(stack, "seed").stdout.splitlines())
    assert set(first) == set(second) == {"acme", "globex", "initech"}
    assert stack.request("GET", "/v1/usage/acme", token=second["acme"])[0] == 200
    time.sleep(4.5)  # key cache lifetime
    assert stack.request("GET", "/v1/usage/acme", token=first["acme"])[0] == 401


def test_dead_letters_are_listed_and_replayed_safely(stack: Stack) -> None:
    stream = f"test:{uuid.uuid4().hex[:8]}"
    env = {"FLAGMETER_STREAM": stream}
    tenant = f"late-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(stack.redis_url)
    client.xgroup_create(stream, "flagmeter-workers", id="0", mkstream=True)
    now = int(time.time() * 1000)
    client.xadd(stream, {"e": f'["{tenant}","e1","chat",9,{now},{now}]'})  # tenant not created yet
    api, url = stack.start_api(processes=1, **env)  # reads the count its worker's versions announce
    worker, _ = stack.start_worker(**env)
    try:
        wait_until(lambda: client.xlen(f"{stream}:dead") > 0, 20, "the entry to be dead-lettered")
        assert flagmeter(stack, "dead-letters", **env).stdout.strip() == "unknown_tenant\t1"
        status, _, _ = stack.request(
            "POST", "/v1/tenants", {"id": tenant, "name": "Late", "monthly_quota": 10}
        )
        assert status == 201
        for _ in range(2):  # replaying twice still counts once
            client.xadd(f"{stream}:dead", {"e": f'["{tenant}","e1","chat",9,{now},{now}]', "reason": "test"})
            replay = flagmeter(stack, "dead-letters", "--replay", **env)
            assert replay.returncode == 0 and "replayed" in replay.stdout
        stack.wait_used(tenant, 9, base=url)
        time.sleep(1)
        assert stack.usage(tenant, url)["used"] == 9
        assert client.xlen(f"{stream}:dead") == 0
        # An unreadable entry replayed goes round once and is dead-lettered again
        # (test_exactly_once.py has the replay's bound itself).
        client.xadd(f"{stream}:dead", {"e": b"not json", "reason": "malformed"})
        replay = flagmeter(stack, "dead-letters", "--replay", **env)
        assert replay.stdout.strip() == f"replayed 1 dead letters onto {stream}"
        wait_until(lambda: client.xlen(f"{stream}:dead") == 1, 20, "the entry to be dead-lettered again")
        # --readable: only those dead-lettered as malformed that this version reads (an upgrade's)
        readable = encode([Event(tenant, "e2", "chat", 4, now, now)])
        client.xadd(f"{stream}:dead", {"e": readable, "reason": "malformed"})
        replay = flagmeter(stack, "dead-letters", "--readable", **env)
        assert replay.stdout.strip() == f"replayed 1 readable malformed dead letters onto {stream}"
        stack.wait_used(tenant, 13, base=url)
        assert flagmeter(stack, "dead-letters", **env).stdout.strip() == "malformed\t1"
    finally:
        worker.stop()
        api.stop()


def test_prune_drops_old_month_partitions_and_expired_dedup_rows(stack: Stack) -> None:
    stack.sql(
        "CREATE TABLE IF NOT EXISTS event_log_2020_01 PARTITION OF event_log"
        " FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-02-01 00:00+00')"
    )
    stale = f"stale-{uuid.uuid4().hex[:8]}"
    stack.sql(
        "INSERT INTO event_ids (tenant_id, event_id, received_at) VALUES"
        " (%s, 'old', now() - interval '41 days'), (%s, 'recent', now() - interval '39 days')",
        (stale, stale),
    )
    done = flagmeter(stack, "prune", "--keep-days", "400")
    assert done.returncode == 0, done.stderr
    assert "event_log_2020_01" in done.stdout
    assert stack.sql("SELECT to_regclass('event_log_2020_01')") == [(None,)]
    assert stack.sql("SELECT event_id FROM event_ids WHERE tenant_id = %s", (stale,)) == [("recent",)]
    current = stack.sql("SELECT count(*) FROM pg_inherits WHERE inhparent = 'event_log'::regclass")[0][0]
    assert current >= 6  # this month's neighbours are untouched


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(child) for child in out.split()}


def _listening(api: Process) -> set[int]:
    """The pids of the API processes that have logged that they listen."""
    pids = set()
    for line in api.output().splitlines():
        if '"api listening"' in line:
            pids.add(int(orjson.loads(line)["pid"]))
    return pids


def test_the_api_supervisor_replaces_a_process_that_dies_and_keeps_serving(stack: Stack) -> None:
    tmp = stack.workdir / f"tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    api, url = stack.start_api(processes=2, TMPDIR=str(tmp))
    try:
        assert len(list(tmp.glob("flagmeter-metrics-*"))) == 1  # the processes' metric files
        # /health answered once one process listens; the other may still be importing the app.
        wait_until(
            lambda: len(_children(api.popen.pid)) == 2 and _listening(api) >= _children(api.popen.pid),
            20,
            "both API processes to listen",
        )
        victim = min(_children(api.popen.pid))
        os.kill(victim, signal.SIGKILL)
        # Connections queued at the victim's socket until its last thread exits are reset (clients
        # retry); once the supervisor has reaped it, the survivor serves alone while the replacement
        # starts.
        wait_until(lambda: not Path(f"/proc/{victim}").exists(), 20, "the killed API process to be reaped")
        for _ in range(5):
            assert stack.request("GET", "/health", base=url)[0] == 200
        wait_until(
            lambda: len(_children(api.popen.pid) - {victim}) == 2,
            20,
            "a replacement for the dead API process",
        )
        wait_until(lambda: _listening(api) >= _children(api.popen.pid), 20, "the replacement to listen")
        for _ in range(20):  # both processes answer, whichever the kernel picks
            assert stack.request("GET", "/health", base=url)[0] == 200
        status, _, _ = stack.request("GET", "/metrics", base=url)
        assert status == 200
    finally:
        assert api.stop() == 0
    assert not list(tmp.iterdir()), "the supervisor left its metric files behind"
