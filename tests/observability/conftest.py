"""Fixtures for the observability tests (compose/observability.yml and its configuration files)."""

from __future__ import annotations

import pytest
from observability_files import debian_binary


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's promtool (package `prometheus`)."""
    return debian_binary("promtool", "prometheus")
