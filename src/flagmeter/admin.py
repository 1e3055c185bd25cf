"""What the management commands do with a store: the demo tenants (`flagmeter seed`) and a tenant's
alert thresholds (`flagmeter tenant thresholds`). cli.py parses the arguments and calls these."""

from __future__ import annotations

import sys
from typing import Any

DEMO_TENANTS = (
    ("acme", "Acme Corp", 1_000_000, 1),
    ("globex", "Globex", 500_000, 15),
    ("initech", "Initech", 250_000, 31),
)


async def seed(store: Any, known: dict[str, str]) -> list[tuple[str, str]]:
    """Ensure the demo tenants, each with a working demo key: its key in `known` while that still
    works, else a fresh one (older demo keys are revoked)."""
    from .keys import hash_key, new_key
    from .store import Conflict, Tenant

    keys = []
    for tenant_id, name, quota, day in DEMO_TENANTS:
        kept = known.get(tenant_id)
        if kept and await store.tenant_for_key(hash_key(kept)) == tenant_id:
            keys.append((tenant_id, kept))
            continue
        key_id, key, key_hash = new_key()
        try:
            await store.create_tenant(Tenant(tenant_id, name, quota, day, None), key_id, key_hash, "demo")  # type: ignore[arg-type]
        except Conflict:
            await store.revoke_keys_labelled(tenant_id, "demo")
            await store.create_key(tenant_id, key_id, key_hash, "demo")
        keys.append((tenant_id, key))
    return keys


async def thresholds(store: Any, tenant_id: str, raw: str | None) -> int:
    """Show or set a tenant's alert thresholds."""
    from .alerts import validate_thresholds
    from .store import AlertSettingsChange

    if raw is not None:
        try:
            chosen = validate_thresholds([int(part) for part in raw.split(",") if part.strip()])
        except ValueError as error:
            print(f"flagmeter: --thresholds: {error}", file=sys.stderr)
            return 2
        if not await store.update_alert_settings(tenant_id, AlertSettingsChange(chosen)):
            print(f"flagmeter: unknown tenant {tenant_id!r}", file=sys.stderr)
            return 1
    current = (await store.alert_settings([tenant_id])).get(tenant_id)
    if current is None:
        print(f"flagmeter: unknown tenant {tenant_id!r}", file=sys.stderr)
        return 1
    print(f"{tenant_id}\tthresholds={','.join(map(str, current.thresholds)) or 'none'}")
    return 0
