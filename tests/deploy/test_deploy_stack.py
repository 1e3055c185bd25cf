"""The production compose stack, run for real: only postgres/valkey images swapped for the local Debian
builds, the API published on 127.0.0.1. Events go in and usage comes out through the published port, and a
worker restart and a worker crash in the middle of the load neither lose nor double-count an accepted
event."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from deploy_support import APP_IMAGE, DEPLOYED, PRODUCTION_FILE, ComposeStack, run, running_stack, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TENANT = "deploy-e2e"
BATCH = 100
LOADERS = 3
FEATURES = ("chat", "embed", "rerank")


@pytest.fixture(scope="module")
def deployed(
    app_image: str, local_images: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeStack]:
    with running_stack((PRODUCTION_FILE,), tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@dataclass
class Ledger:
    """What the API accepted (202), by event id; events re-sent with the same id are recorded once."""

    tokens: dict[str, tuple[str, int]] = field(default_factory=dict)
    batches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, events: list[dict[str, Any]], accepted_ids: list[str]) -> None:
        by_id = {e["id"]: (e["feature"], e["tokens"]) for e in events}
        with self.lock:
            for event_id in accepted_ids:
                self.tokens[event_id] = by_id[event_id]
            self.batches += 1

    def wait_for_more(self, batches: int, errors: list[BaseException]) -> None:
        target = self.batches + batches
        wait_until(
            lambda: self.batches >= target or bool(errors), 60, f"{batches} more accepted batches", **DEPLOYED
        )

    def by_feature(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for feature, tokens in self.tokens.values():
            totals[feature] = totals.get(feature, 0) + tokens
        return totals


def post_until_accepted(stack: ComposeStack, events: list[dict[str, Any]], ledger: Ledger) -> None:
    """Retry a batch with the same ids until the API accepts it, as a client is told to."""
    for _ in range(60):
        status, body = stack.call("POST", "/v1/events", events)
        if status == 202:
            assert body["rejected"] == [], body
            ledger.record(events, body["ids"])
            return
        assert status in (429, 503), (status, body)
        time.sleep(0.5)
    raise AssertionError("a batch was never accepted")


def load(
    stack: ComposeStack, ledger: Ledger, loader: int, stop: threading.Event, errors: list[BaseException]
) -> None:
    try:
        sent = 0
        while not stop.is_set():
            events = [
                {
                    "tenant": TENANT,
                    "id": f"l{loader}-b{sent}-e{i}",
                    "feature": FEATURES[i % len(FEATURES)],
                    "tokens": 1 + (loader * 7919 + sent * 131 + i) % 997,
                }
                for i in range(BATCH)
            ]
            post_until_accepted(stack, events, ledger)
            if sent % 5 == 0:  # a client retry after a lost response: same ids again
                post_until_accepted(stack, events, ledger)
            sent += 1
    except BaseException as error:  # surfaced by the test thread
        errors.append(error)


def worker_started_at(stack: ComposeStack) -> str:
    container = stack.compose("ps", "-q", "worker").strip()
    return run("docker", "inspect", "-f", "{{.State.StartedAt}}", container).stdout.strip()


def worker_restarted(stack: ComposeStack, started: str) -> bool:
    return worker_started_at(stack) != started


def restart_worker(stack: ComposeStack) -> None:
    """A deploy or `docker compose restart`: SIGTERM, the batch in flight finishes or stays pending."""
    stack.compose("restart", "--timeout", "20", "worker")


def crash_worker(stack: ComposeStack) -> None:
    """A crash: every process in the container killed at once, a batch possibly committed but not acked.
    The restart policy brings it back; the pending entries are reclaimed after FLAGMETER_CLAIM_IDLE_MS."""
    stack.compose("exec", "-T", "worker", "sh", "-c", "kill -KILL -1", check=False)


def test_api_is_published_on_loopback_only(deployed: ComposeStack) -> None:
    published = deployed.compose("port", "api", "8080").strip()
    assert published.startswith("127.0.0.1:")


def _sign_in(stack: ComposeStack, token: str, forwarded_for: str) -> int:
    request = urllib.request.Request(
        f"{stack.base_url}/login",
        data=urllib.parse.urlencode({"token": token}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": forwarded_for},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_the_cluster_has_the_official_images_locale_and_the_counting_keys_compare_as_bytes(
    deployed: ComposeStack,
) -> None:
    # postgres:17 initialises under en_US.utf8 (its stand-in too); migrations 0007-0008 keep the keys
    # out of that collation's strcoll().
    collation = deployed.sql("SELECT datcollate FROM pg_database WHERE datname = current_database()")
    assert collation == "en_US.utf8"
    keys = deployed.sql(
        "SELECT count(*) FROM information_schema.columns WHERE table_name IN"
        " ('event_ids', 'rollups', 'daily_totals', 'period_totals')"
        " AND column_name IN ('tenant_id', 'event_id', 'feature') AND collation_name = 'C'"
    )
    assert keys == "7"


def test_sign_ins_behind_the_reverse_proxy_are_throttled_per_client(deployed: ComposeStack) -> None:
    # The test stands in for the reverse proxy in front of the published port: it appends the client's
    # address. Docker's port publishing hands the API a private gateway address, which the stack trusts.
    # The count is in Redis, one for both API processes: the 11th try is refused, whichever serves it.
    statuses = [_sign_in(deployed, "not-the-admin-token", "203.0.113.1") for _ in range(30)]
    assert statuses == [401] * 10 + [429] * 20, statuses
    # Another client is not locked out with it.
    assert [_sign_in(deployed, "not-the-admin-token", "203.0.113.2") for _ in range(8)] == [401] * 8


@pytest.mark.parametrize("service", ["api", "worker"])
def test_the_image_healthcheck_passes_in_api_and_worker(deployed: ComposeStack, service: str) -> None:
    # The compose file has its own checks; the image's (used where no compose file sets one, e.g. plain
    # `docker run`) finds the role from PID 1's command line and must hold for both roles.
    test = json.loads(
        run("docker", "image", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", APP_IMAGE).stdout
    )
    assert test[0] == "CMD"
    deployed.compose("exec", "-T", service, *test[1:])


def test_every_accepted_event_is_counted_once_across_worker_restart_and_crash(deployed: ComposeStack) -> None:
    status, body = deployed.call(
        "POST", "/v1/tenants", {"id": TENANT, "name": "Deploy test", "monthly_quota": 10**12}
    )
    assert status == 201, body

    ledger, stop = Ledger(), threading.Event()
    errors: list[BaseException] = []
    loaders = [
        threading.Thread(target=load, args=(deployed, ledger, n, stop, errors), daemon=True)
        for n in range(LOADERS)
    ]
    for thread in loaders:
        thread.start()
    for interrupt in (restart_worker, crash_worker):
        ledger.wait_for_more(10, errors)
        started = worker_started_at(deployed)
        interrupt(deployed)
        wait_until(partial(worker_restarted, deployed, started), 60, "worker restarted", **DEPLOYED)
        wait_until(
            lambda: "(healthy)" in deployed.compose("ps", "worker"), 90, "worker healthy again", **DEPLOYED
        )
    ledger.wait_for_more(10, errors)
    stop.set()
    for thread in loaders:
        thread.join(30)
    assert not errors, errors

    expected = ledger.by_feature()

    def counted() -> bool:
        used: int = deployed.call("GET", f"/v1/usage/{TENANT}")[1]["used"]
        return used >= sum(expected.values())

    def stream_drained() -> bool:
        # Entries are deleted once acked: an empty stream means nothing is left to count twice.
        length = deployed.compose("exec", "-T", "valkey", "valkey-cli", "XLEN", "flagmeter:events")
        return length.strip() == "0"

    wait_until(counted, 150, "every accepted event counted", **DEPLOYED)
    wait_until(stream_drained, 60, "the stream drained", **DEPLOYED)
    status, usage = deployed.call("GET", f"/v1/usage/{TENANT}")
    assert status == 200
    assert usage["by_feature"] == expected
    assert usage["used"] == sum(expected.values())
    rows = deployed.sql(f"SELECT count(*), count(DISTINCT event_id) FROM events WHERE tenant_id = '{TENANT}'")
    assert rows == f"{len(ledger.tokens)}|{len(ledger.tokens)}"


def test_no_container_hit_its_memory_limit_under_the_load(deployed: ComposeStack) -> None:
    # Runs after the load test above (same module-scoped stack): the limits of docs/memory-budget.md hold.
    containers = deployed.compose("ps", "-aq").split()
    states = run("docker", "inspect", "-f", "{{.Name}} {{.State.OOMKilled}}", *containers).stdout.split("\n")
    assert [line for line in states if line.endswith(" true")] == []
    assert len(containers) == 5  # api, worker, postgres, valkey and the exited migrate
