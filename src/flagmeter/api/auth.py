"""Who is calling: the admin (shared token) or a tenant (API key, looked up by its SHA-256)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from .. import logs
from ..store import Store, StoreUnavailable, Tenant
from .errors import ApiError

KEY_PREFIX = "fm_"
KEY_TTL_S = 4.0  # revocation reaches every process within this
TENANT_TTL_S = 2.0


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


class Directory:
    """Per-process caches of key → tenant and tenant rows, short-lived and stale-tolerant.

    Entries expire after a few seconds (so revocation and quota changes spread to every
    process); when PostgreSQL is down an expired entry is still used, so ingest goes on.
    """

    def __init__(self, store: Store, admin_token: str) -> None:
        self.store = store
        self._admin = admin_token.encode()
        self._keys: dict[str, tuple[str | None, float]] = {}
        self._tenants: dict[str, tuple[Tenant | None, float]] = {}

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
            tenant = await self._tenant_for_key(hash_key(token))
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

    async def _tenant_for_key(self, key_hash: str) -> str | None:
        cached = self._keys.get(key_hash)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            tenant = await self.store.tenant_for_key(key_hash)
        except StoreUnavailable:
            if cached is not None and cached[0] is not None:
                return cached[0]
            raise
        if len(self._keys) > 100_000:
            self._keys.clear()
        self._keys[key_hash] = (tenant, now + KEY_TTL_S)
        return tenant

    async def tenant(self, tenant_id: str) -> Tenant | None:
        cached = self._tenants.get(tenant_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            tenant = await self.store.get_tenant(tenant_id)
        except StoreUnavailable:
            if cached is not None and cached[0] is not None:
                return cached[0]
            raise
        if len(self._tenants) > 100_000:
            self._tenants.clear()
        self._tenants[tenant_id] = (tenant, now + TENANT_TTL_S)
        return tenant

    def forget_tenant(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)

    def forget_keys(self) -> None:
        self._keys.clear()


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this endpoint needs the admin token")
