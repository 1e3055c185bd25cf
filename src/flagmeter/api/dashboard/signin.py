"""Who is signing in to the dashboard (the client address behind trusted proxies) and how often
they got the token wrong (counted in Redis, per address, for every API process at once)."""

from __future__ import annotations

import ipaddress
import math
import time

from ...config import Network
from ...sign_in_failures import SignInFailures
from ...stream import RedisUnavailable, Stream


def client_address(peer: str | None, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The address of whoever sent the request, looking through the proxies in `trusted`.

    Each proxy appends the address it was reached from to X-Forwarded-For, so walking the list from the
    right, the first address outside `trusted` is the client; what lies left of it was written by the
    client and is not believed. A peer outside `trusted` is the client itself.
    """
    client = peer or "unknown"
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        if not _within(client, trusted) or _address(hop) is None:
            break  # the client, or garbage: the proxy that wrote it is as far as we can see
        client = hop
    return client


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _within(text: str, networks: tuple[Network, ...]) -> bool:
    address = _address(text)
    return address is not None and any(address in network for network in networks)


class FailureThrottle:
    """Counts failed sign-ins per client address in a fixed window; past `allowed`, refuse them all.

    The count lives in Redis (sign_in_failures.py), so it is one count for every API process
    and replica. While Redis is unreachable each process counts in its own memory instead: sign-in keeps
    working in a Redis outage (the operator needs the dashboard then), and an address gets at most
    N x `allowed` guesses per window from N processes until Redis is back.
    """

    def __init__(self, allowed: int, window_s: float, stream: Stream | None = None) -> None:
        self.allowed = allowed
        self.window_s = window_s
        self.failures = SignInFailures(stream) if stream is not None else None
        self.local = LocalFailureCount(window_s)

    async def retry_after(self, address: str) -> int:
        """Seconds until `address` may try again; 0 when it may try now."""
        try:
            if self.failures is None:
                raise RedisUnavailable("no Redis")
            count, left_ms = await self.failures.current(address)
            left = left_ms / 1000
        except RedisUnavailable:
            count, left = self.local.get(address)
        return max(1, math.ceil(left)) if count >= self.allowed and left > 0 else 0

    async def failed(self, address: str) -> bool:
        """Count one failure; True when it is the one that closes the door on `address`."""
        try:
            if self.failures is None:
                raise RedisUnavailable("no Redis")
            count, _ = await self.failures.count(address, int(self.window_s * 1000))
        except RedisUnavailable:
            count = self.local.add(address)
        return count == self.allowed


class LocalFailureCount:
    """Failures per address in fixed windows, in this process's memory (FailureThrottle's fallback)."""

    def __init__(self, window_s: float, limit: int = 100_000) -> None:
        self.window_s = window_s
        self.limit = limit
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, window end)

    def get(self, address: str) -> tuple[int, float]:
        """(failures in the current window, seconds until it ends)."""
        count, ends = self._failures.get(address, (0, 0.0))
        left = ends - time.monotonic()
        return (count, left) if left > 0 else (0, 0.0)

    def add(self, address: str) -> int:
        now = time.monotonic()
        count, ends = self._failures.get(address, (0, 0.0))
        if ends <= now:
            if len(self._failures) >= self.limit:
                self._failures = {a: f for a, f in self._failures.items() if f[1] > now}
            count, ends = 0, now + self.window_s
        self._failures[address] = (count + 1, ends)
        return count + 1
