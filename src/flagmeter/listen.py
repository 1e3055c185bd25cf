"""Where FlagMeter's servers listen, and the one-line answer when a port is already taken."""

from __future__ import annotations

import errno
import socket

EXIT_PORT_TAKEN = 3  # an API process exits with this when its port is taken; the supervisor gives up


class PortTaken(Exception):
    """Another process listens on the port: nothing will start; the message says what to change."""

    def __init__(self, host: str, port: int, variable: str) -> None:
        super().__init__(f"port {port} on {host} is already in use; set {variable} to use another")
        self.port = port


def ensure_free(host: str, port: int, variable: str) -> None:
    """Raise PortTaken unless `port` can be bound on `host` (the setting `variable` chooses it).

    SO_REUSEADDR as the servers use it: a closed connection's TIME_WAIT does not count, a
    listener does. Without SO_REUSEPORT: a second FlagMeter must not silently share the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortTaken(host, port, variable) from None
            raise
