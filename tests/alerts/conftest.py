"""Fixtures for alert tests: a webhook receiver and an isolated FlagMeter with fast retries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from local_env import LocalEnv, Receiver


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def alert_env(stack: Any) -> Iterator[LocalEnv]:
    """API and one worker on their own database, delivering with 0.3 s base backoff and a 1 s timeout."""
    env = LocalEnv.create(stack)
    env.start_api()
    env.start_worker()
    yield env
    env.stop()
