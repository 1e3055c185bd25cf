"""The framework floor: aiohttp on uvloop answering POST /v1/events with 202 and nothing else.

bench/run.py drives it with wrk (bench/load.lua, KIND=post) before the real steps. What this costs
per request on the machine, and how fast the generator can drive it there, is the least any aiohttp
service can cost: it sets FlagMeter's own per-request CPU in proportion, and shows whether a rate is
reachable at all when the load generator shares the cores.

    python bench/floor.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop
from aiohttp import web

ANSWER = orjson.dumps({"accepted": 1, "rejected": []})


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, status=202, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/events", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
