"""Every SQL statement and every PostgreSQL driver call lives in this package, one module per
aggregate; handlers and the worker get plain values back.

    base.py        the pool, errors, array literals
    tenants.py     tenants and API keys (a billing-day change regroups the period totals)
    counting.py    the counting transaction, event partitions, pruning
    usage.py       current-period totals, rollups by window, recent tokens
    outbox.py      alert settings, the decisions a batch makes, the delivery outbox and its history
    migrations.py  migrations/*.sql, applied once each
"""

from __future__ import annotations

from .base import Conflict, StoreUnavailable
from .counting import BatchResult, CountingStore
from .migrations import migrate, migration_files
from .outbox import (
    AlertRecord,
    AlertSettings,
    AlertSettingsChange,
    AttemptRecord,
    DeliveryJob,
    DeliveryRecord,
    OutboxStore,
)
from .tenants import ApiKey, Tenant, TenantStore
from .usage import WINDOWS, CurrentUsage, UsageStore


class Store(TenantStore, CountingStore, UsageStore, OutboxStore):
    """One pool, every aggregate's statements."""


__all__ = [
    "WINDOWS",
    "AlertRecord",
    "AlertSettings",
    "AlertSettingsChange",
    "ApiKey",
    "AttemptRecord",
    "BatchResult",
    "Conflict",
    "CurrentUsage",
    "DeliveryJob",
    "DeliveryRecord",
    "Store",
    "StoreUnavailable",
    "Tenant",
    "migrate",
    "migration_files",
]
