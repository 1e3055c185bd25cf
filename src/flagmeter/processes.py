"""What each long-running process is made of: an API process and the worker process.

prometheus_client is imported only inside these functions: the `api` command must set
PROMETHEUS_MULTIPROC_DIR before any process imports it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Awaitable
from typing import Any

from .config import Settings
from .listen import PortTaken

log = logging.getLogger("flagmeter")


# Ingest allocates a few containers per event (the parsed row or object, the Event). With Python's
# default first-generation threshold (700) the cyclic collector ran every few hundred events and
# doubled the worker's decoding time (0.94 -> 1.9 us per event with the service's modules loaded).
# Reference cycles are rare on these paths; they are still collected, after 10,000 allocations.
GC_THRESHOLDS = (10_000, 10, 10)

# glibc serves a block of 128 KiB or more with its own mmap, unmapped when freed, but raises that bound
# to the largest such block freed (up to 32 MiB on 64-bit). After its first big batches the worker's
# statement buffers (a transaction's joined columns and psycopg2's copies, hundreds of KiB each) came
# from the heap instead, and the heap kept what they left: fixed, they are returned as they are freed.
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD = 128 * 1024


def keep_big_blocks_out_of_the_heap() -> bool:
    """Fix glibc's mmap threshold; False where the C library is not glibc (left as it is)."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def run(coro: Awaitable[Any]) -> Any:
    """Run a process's main coroutine on uvloop, with the collector tuned for ingest and glibc's big
    blocks kept out of the heap."""
    import gc

    import uvloop

    gc.set_threshold(*GC_THRESHOLDS)
    keep_big_blocks_out_of_the_heap()
    return uvloop.run(coro)  # type: ignore[arg-type]


def preload_api() -> None:
    """Import what an API process runs before the supervisor forks its processes (as gunicorn's
    --preload does): the children then share those pages copy-on-write instead of each importing its
    own copy. Memory as a container or PSS counts it falls by about a copy of the libraries per extra
    process; summed RSS rises, since it counts the supervisor's shared pages again in each child.
    Frozen, the imported objects are never scanned by a child's collector, which would otherwise
    write to (and so copy) the pages they lie on. Needs PROMETHEUS_MULTIPROC_DIR set: the metrics are
    defined on import (prometheus_client reopens its files by pid after a fork)."""
    import gc

    import uvloop  # noqa: F401
    from aiohttp import web  # noqa: F401

    from . import api  # noqa: F401

    gc.collect()
    gc.freeze()


async def serve_api(settings: Settings, reuse_port: bool) -> None:
    """One API process: the app on the port (shared with its siblings when `reuse_port`) until SIGTERM."""
    from aiohttp import web

    from .api import create_app

    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen_host, settings.port, reuse_port=reuse_port, backlog=4096)
    try:
        await site.start()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortTaken(settings.listen_host, settings.port, "PORT") from None
        raise
    log.info("api listening", extra={"port": settings.port, "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


async def serve_worker(settings: Settings, concurrency: int) -> None:
    """The worker process: the Worker, the alert Courier it runs beside the consumers, and the small
    HTTP app with /metrics, /health and /ready; SIGTERM finishes the batch in hand."""
    from aiohttp import web

    from . import probes
    from .delivery import Courier
    from .store import Store
    from .stream import Stream
    from .worker import Worker

    store = await Store.connect(settings.database_url, size=max(4, concurrency + 2))
    stream = Stream.from_settings(settings)
    worker = Worker(settings, store, stream, Courier(settings, store), concurrency=concurrency)

    runner = None
    if settings.worker_metrics_port:
        app = web.Application()
        app["store"], app["stream"] = store, stream  # what /ready checks
        app["metrics_role"] = "worker"
        app["stopping"] = lambda: worker.stopping  # /health says so while the batch in hand finishes
        probes.add_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, settings.listen_host, settings.worker_metrics_port).start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        await stream.close()
        await store.close()
