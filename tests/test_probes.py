"""The endpoints every server answers (flagmeter.probes), served for real on 127.0.0.1 by an app built
as the worker builds its own: /health tells a stopping server from a live one, /ready names what is down."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from flagmeter import probes


class Reachable:
    def __init__(self, up: bool) -> None:
        self.up = up

    async def ping(self) -> None:
        if not self.up:
            raise ConnectionError("down")


@pytest.fixture
async def served() -> AsyncIterator[tuple[dict[str, bool], str]]:
    app = web.Application()
    app["store"], app["stream"] = Reachable(True), Reachable(False)
    app["metrics_role"] = "worker"
    state = {"stopping": False}
    app["stopping"] = lambda: state["stopping"]
    probes.add_routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield state, str(server.make_url(""))
    await server.close()


async def get(url: str) -> tuple[int, dict[str, object] | str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_health_says_stopping_once_the_server_is_told_to_stop(
    served: tuple[dict[str, bool], str],
) -> None:
    state, url = served
    assert await get(f"{url}/health") == (200, {"status": "ok"})
    state["stopping"] = True
    assert await get(f"{url}/health") == (200, {"status": "stopping"})


async def test_ready_is_503_naming_what_does_not_answer(served: tuple[dict[str, bool], str]) -> None:
    _, url = served
    status, body = await get(f"{url}/ready")
    assert status == 503 and isinstance(body, dict)
    assert body["unreachable"] == ["redis"] and body["error"]["code"] == "not_ready"  # type: ignore[index]


async def test_metrics_are_the_roles_families_in_the_text_format(served: tuple[dict[str, bool], str]) -> None:
    _, url = served
    status, text = await get(f"{url}/metrics")
    assert status == 200 and isinstance(text, str)
    assert "flagmeter_worker_batch_size" in text
