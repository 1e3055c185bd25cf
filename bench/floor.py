"""The framework floor: aiohttp on uvloop answering POST /v1/events with 202 and nothing else.

bench/run.py drives it with wrk (bench/load.lua, KIND=post) before the real steps. What this costs
per request on the machine, and how fast the generator can drive it there, is the least any aiohttp
service can cost: it sets FlagMeter's own per-request CPU in proportion, and shows whether a rate is
reachable at all when the load generator shares the cores. Three ways to serve it, to see what each
layer of aiohttp costs before choosing one for the hot routes:

    python bench/floor.py PORT server       # aiohttp.web.Server: the low-level server, one handler
    python bench/floor.py PORT app          # web.Application and its router, as FlagMeter's API is
    python bench/floor.py PORT middleware   # the same plus FlagMeter's error_middleware (request id,
                                            # latency histogram, error mapping)
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop
from aiohttp import web

from flagmeter.api.errors import error_middleware
from flagmeter.config import Settings

ANSWER = orjson.dumps({"accepted": 1, "rejected": []})
MODES = ("server", "app", "middleware")


async def accept(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, status=202, content_type="application/json")


async def serve(port: int, mode: str) -> None:
    runner: web.BaseRunner
    if mode == "server":
        runner = web.ServerRunner(web.Server(accept), access_log=None)
    else:
        app = web.Application(middlewares=[error_middleware] if mode == "middleware" else [])
        # What the middleware reads of the app (its access-log switch); nothing here connects to them.
        app["settings"] = Settings(database_url="", redis_url="", admin_token="")
        app.router.add_post("/v1/events", accept)
        runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    mode = sys.argv[2] if len(sys.argv) > 2 else "app"
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {', '.join(MODES)}")
    uvloop.run(serve(int(sys.argv[1]), mode))
