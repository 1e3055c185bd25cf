"""Tenant API keys: made here, shown once, stored only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "fm_"


KEY_ID = r"key_[0-9a-f]{16}"  # what new_key names a key


def new_key() -> tuple[str, str, str]:
    """(key id, the key shown once, its hash for storage)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return "key_" + secrets.token_hex(8), key, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
