"""Who is calling: the admin (shared token) or a tenant (API key, looked up by its SHA-256)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from .. import logs
from ..keys import KEY_PREFIX, hash_key
from ..store import Store, Tenant
from .cache import ShortCache
from .errors import ApiError

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


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this endpoint needs the admin token")
