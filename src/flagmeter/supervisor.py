"""The API's supervisor: forks the API processes that share the port, restarts any that dies, and
forwards SIGTERM/SIGINT. A process that dies at once because its port is taken stops them all."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

from .listen import EXIT_PORT_TAKEN, PortTaken

log = logging.getLogger("flagmeter")


def supervise(processes: int, serve: Callable[[], None]) -> int:
    """Fork `processes` children sharing the port (SO_REUSEPORT); restart any that dies."""
    children: set[int] = set()
    stopping = False
    exit_code = 0

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                serve()
            except PortTaken as error:  # taken between the supervisor's check and this bind
                print(f"flagmeter: {error}", file=sys.stderr)
                code = EXIT_PORT_TAKEN
            except BaseException:
                log.exception("api process failed")
                code = 1
            finally:
                os._exit(code)
        children.add(pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(processes):
        spawn()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        from prometheus_client import multiprocess  # only now: it would double the supervisor's size

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_PORT_TAKEN:
            forward(signal.SIGTERM, None)  # restarting cannot help
            exit_code = 1
        elif not stopping:
            log.error("api process died; restarting", extra={"pid": pid, "status": status})
            spawn()
    return exit_code
