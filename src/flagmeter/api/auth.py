"""Who is calling: the admin (shared token) or a tenant (API key, looked up by its SHA-256)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

from aiohttp import web

from .. import logs
from ..config import Network
from ..store import Store, StoreUnavailable, Tenant
from ..stream import Stream, StreamUnavailable
from .errors import ApiError

KEY_PREFIX = "fm_"
KEY_TTL_S = 4.0  # revocation reaches every process within this
TENANT_TTL_S = 2.0

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str | None  # None: the admin

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def may_read(self, tenant_id: str) -> bool:
        return self.tenant is None or self.tenant == tenant_id


def new_key() -> tuple[str, str, str]:
    """(key id, the key shown once, its hash for storage)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return "key_" + secrets.token_hex(8), key, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ShortCache(Generic[K, V]):
    """Entries live `ttl` seconds, each reloaded by one request at a time (single flight).

    While a reload is in flight, other requests for the key get the expiring value instead of querying
    PostgreSQL too; with nothing cached they wait for that one reload. When reloading fails because
    PostgreSQL is down, the stale value is served.
    """

    def __init__(self, ttl: float, limit: int = 100_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._entries: dict[K, tuple[V | None, float]] = {}
        # The reload in flight per key; forget() drops it, so it is neither shared nor kept after that.
        self._loading: dict[K, asyncio.Future[V | None]] = {}

    async def get(self, key: K, load: Callable[[K], Awaitable[V | None]]) -> V | None:
        cached = self._entries.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key, load))
            self._loading[key] = loading
            loading.add_done_callback(partial(self._loaded, key))
        elif cached is not None:
            return cached[0]
        try:
            return await asyncio.shield(loading)  # a caller that goes away does not cancel the others'
        except StoreUnavailable:
            if cached is not None and cached[0] is not None:
                return cached[0]
            raise

    async def _load(self, key: K, load: Callable[[K], Awaitable[V | None]]) -> V | None:
        value = await load(key)
        if self._loading.get(key) is asyncio.current_task():  # not forgotten meanwhile
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[key] = (value, time.monotonic() + self.ttl)
        return value

    def _loaded(self, key: K, loading: asyncio.Future[V | None]) -> None:
        if self._loading.get(key) is loading:
            del self._loading[key]
        if not loading.cancelled():
            loading.exception()  # retrieved here, so a failure nobody awaited any more is not logged

    def forget(self, key: K | None = None) -> None:
        if key is None:
            self._entries.clear()
            self._loading.clear()
        else:
            self._entries.pop(key, None)
            self._loading.pop(key, None)


class Directory:
    """Who a key belongs to and what a tenant looks like, cached per process for a few seconds.

    Short lifetimes spread revocation and quota changes to every process; stale entries keep
    ingest going while PostgreSQL is down.
    """

    def __init__(self, store: Store, admin_token: str) -> None:
        self.store = store
        self._admin = admin_token.encode()
        self._keys: ShortCache[str, str] = ShortCache(KEY_TTL_S)
        self._tenants: ShortCache[str, Tenant] = ShortCache(TENANT_TTL_S)

    async def principal(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401, "unauthorized", "missing bearer token", {"WWW-Authenticate": 'Bearer realm="flagmeter"'}
            )
        if hmac.compare_digest(token.encode(), self._admin):
            return Principal(None)
        if token.startswith(KEY_PREFIX):
            tenant = await self._keys.get(hash_key(token), self.store.tenant_for_key)
            if tenant is not None:
                logs.tenant.set(tenant)
                return Principal(tenant)
        raise ApiError(
            401,
            "unauthorized",
            "invalid or revoked token",
            {"WWW-Authenticate": 'Bearer realm="flagmeter", error="invalid_token"'},
        )

    def is_admin_token(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._admin)

    async def tenant(self, tenant_id: str) -> Tenant | None:
        return await self._tenants.get(tenant_id, self.store.get_tenant)

    def forget_tenant(self, tenant_id: str) -> None:
        self._tenants.forget(tenant_id)

    def forget_keys(self) -> None:
        self._keys.forget()


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

    The count lives in Redis (`Stream.count_sign_in_failure`), so it is one count for every API process
    and replica. While Redis is unreachable each process counts in its own memory instead: sign-in keeps
    working in a Redis outage (the operator needs the dashboard then), and an address gets at most
    N x `allowed` guesses per window from N processes until Redis is back.
    """

    def __init__(self, allowed: int, window_s: float, stream: Stream | None = None) -> None:
        self.allowed = allowed
        self.window_s = window_s
        self.stream = stream
        self.local = LocalFailureCount(window_s)

    async def retry_after(self, address: str) -> int:
        """Seconds until `address` may try again; 0 when it may try now."""
        try:
            if self.stream is None:
                raise StreamUnavailable("no Redis")
            count, left_ms = await self.stream.sign_in_failures(address)
            left = left_ms / 1000
        except StreamUnavailable:
            count, left = self.local.get(address)
        return max(1, math.ceil(left)) if count >= self.allowed and left > 0 else 0

    async def failed(self, address: str) -> bool:
        """Count one failure; True when it is the one that closes the door on `address`."""
        try:
            if self.stream is None:
                raise StreamUnavailable("no Redis")
            count, _ = await self.stream.count_sign_in_failure(address, int(self.window_s * 1000))
        except StreamUnavailable:
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


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this endpoint needs the admin token")
